/*
 * Bitmaps merged into the node that survives a commit or mirror pivot
 * (strata/bitmap-pivot.h: the rules and why they are safe).
 */
#include "strata/bitmap-pivot.h"
#include "strata/block-ops.h"
#include "strata/dirty-bitmap.h"
#include "strata/error.h"

/* dst |= src, by byte runs: any granularities, any sizes. */
static void or_runs(DirtyBitmap *dst, const DirtyBitmap *src)
{
    int64_t size = dirty_bitmap_size(src);

    for (int64_t o = dirty_bitmap_next_dirty(src, 0, size); o >= 0;) {
        int64_t end = dirty_bitmap_next_clean(src, o, size - o);
        if (end < 0) {
            end = size;
        }
        dirty_bitmap_set(dst, o, end - o);
        o = end < size ? dirty_bitmap_next_dirty(src, end, size - end) : -1;
    }
}

/* A bitmap and, while a job owns it, the writes its successor holds. */
static void or_bitmap(DirtyBitmap *dst, const DirtyBitmap *src)
{
    DirtyBitmap *ds = dirty_bitmap_successor(dst);
    const DirtyBitmap *ss = dirty_bitmap_successor(src);

    or_runs(dst, src);
    if (ss) {
        or_runs(dst, ss);
    }
    if (ds) {
        or_runs(ds, src);
        if (ss) {
            or_runs(ds, ss);
        }
    }
}

static DirtyBitmap *make_like(BlockNode *dst, const DirtyBitmap *src)
{
    const char *name = dirty_bitmap_name(src);
    bool persistent = dirty_bitmap_persistent(src);
    GError *err = NULL;

    if (persistent && !node_dirty_bitmap_add(dst, name,
                                             dirty_bitmap_granularity(src),
                                             true, false, &err)) {
        warn_print("x-strata-merge-bitmaps: bitmap '%s' is kept on node "
                   "'%s' but not stored in its image: %s", name,
                   node_get_name(dst), err->message);
        g_clear_error(&err);
        persistent = false;
    }
    if (!persistent &&
        !node_dirty_bitmap_add(dst, name, dirty_bitmap_granularity(src),
                               false, false, &err)) {
        warn_print("x-strata-merge-bitmaps: bitmap '%s' not merged into "
                   "node '%s': %s", name, node_get_name(dst), err->message);
        g_error_free(err);
        return NULL;
    }
    DirtyBitmap *bm = node_find_dirty_bitmap(dst, name);
    /* The successor of a busy source records for it. */
    dirty_bitmap_set_enabled(bm, dirty_bitmap_recording(src));
    return bm;
}

void bitmaps_merge_into(BlockNode *dst, BlockNode *from)
{
    if (dst == from) {
        return;
    }
    /* Oldest first, so that made bitmaps keep the source's order. */
    GList *srcs = g_list_reverse(g_list_copy(node_dirty_bitmaps(from)));

    for (GList *l = srcs; l; l = l->next) {
        DirtyBitmap *src = l->data;
        const char *name = dirty_bitmap_name(src);
        if (!name) {
            continue;            /* a job's own */
        }
        DirtyBitmap *bm = node_find_dirty_bitmap(dst, name);
        if (dirty_bitmap_inconsistent(src)) {
            if (bm) {
                dirty_bitmap_set(bm, 0, dirty_bitmap_size(bm));
                if (dirty_bitmap_successor(bm)) {
                    dirty_bitmap_set(dirty_bitmap_successor(bm), 0,
                                     dirty_bitmap_size(bm));
                }
            }
            continue;
        }
        if (!bm) {
            bm = make_like(dst, src);
        }
        if (bm) {
            or_bitmap(bm, src);
        }
    }
    g_list_free(srcs);
}
