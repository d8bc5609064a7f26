/*
 * The dirty bitmaps an NBD export offers as qemu:dirty-bitmap:NAME
 * contexts (block-export-add's `bitmaps`), found and checked in QEMU
 * 7.2's order and words (nbd_export_create).
 *
 * The export keeps pointers to the bitmaps for its whole life, so it
 * makes them busy (no command may change or remove them) and holds a
 * reference on their nodes: a {node, name} bitmap's node may be deleted
 * by blockdev-del meanwhile, and must not take the bitmap with it.
 */
#include "nbd-int.h"
#include "strata/block-ops.h"
#include "strata/error.h"

/* A bare name: the exported node, then down its filters and backings. */
static DirtyBitmap *find_local(BlockNode *bs, const char *name,
                               BlockNode **owner)
{
    while (bs) {
        DirtyBitmap *bm = node_find_dirty_bitmap(bs, name);
        if (bm) {
            *owner = bs;
            return bm;
        }
        BlockNode *f = node_filtered_child(bs);
        bs = f ? f : node_backing(bs);
    }
    return NULL;
}

DirtyBitmap **nbd_export_bitmaps_take(BlockNode *bs, bool readonly,
                                      const NbdExportBitmap *want, size_t n,
                                      GError **errp)
{
    DirtyBitmap **bms = g_new0(DirtyBitmap *, n);

    for (size_t i = 0; i < n; i++) {
        /* QEMU judges writability by the exported node for {node, name}. */
        BlockNode *owner = bs;
        DirtyBitmap *bm;

        if (!want[i].node) {
            bm = find_local(bs, want[i].name, &owner);
            if (!bm) {
                error_setg(errp, "Bitmap '%s' is not found", want[i].name);
                goto fail;
            }
        } else {
            BlockNode *other = node_find(want[i].node);
            if (!other) {
                error_setg(errp, "Node '%s' not found", want[i].node);
                goto fail;
            }
            bm = node_find_dirty_bitmap(other, want[i].name);
            if (!bm) {
                error_setg(errp, "Dirty bitmap '%s' not found", want[i].name);
                goto fail;
            }
        }
        if (dirty_bitmap_check(bm, DIRTY_BITMAP_ALLOW_RO, errp)) {
            goto fail;
        }
        /* Its contents would change under a reader who cannot write. */
        if (readonly && !node_is_read_only(owner) &&
            dirty_bitmap_enabled(bm)) {
            error_setg(errp, "Enabled bitmap '%s' incompatible with readonly "
                       "export", dirty_bitmap_name(bm));
            goto fail;
        }
        bms[i] = bm;
    }
    /* Nothing is changed before every bitmap passed. */
    for (size_t i = 0; i < n; i++) {
        dirty_bitmap_set_busy(bms[i], true);
        node_ref(dirty_bitmap_node(bms[i]));
    }
    return bms;

fail:
    g_free(bms);
    return NULL;
}

void nbd_export_bitmaps_release(DirtyBitmap **bms, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        BlockNode *bs = dirty_bitmap_node(bms[i]);
        dirty_bitmap_set_busy(bms[i], false);
        node_unref(bs);
    }
    g_free(bms);
}
