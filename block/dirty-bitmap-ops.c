/*
 * Managing a node's dirty bitmaps: what QEMU's block-dirty-bitmap-add,
 * -remove, -clear, -enable, -disable and -merge do, with their checks and
 * messages.  strata-img bitmap calls these; the daemon's QMP commands will
 * too, so neither reaches into a format driver.
 */
#include <errno.h>
#include <inttypes.h>
#include <string.h>

#include <glib.h>

#include "block-int.h"
#include "strata/coroutine.h"
#include "strata/dirty-bitmap.h"

bool node_supports_persistent_dirty_bitmap(BlockNode *bs)
{
    return bs->drv->supports_persistent_dirty_bitmap &&
           bs->drv->supports_persistent_dirty_bitmap(bs);
}

/* QEMU's default: the cluster size, kept within 4 KiB .. 64 KiB. */
static uint32_t default_granularity(BlockNode *bs)
{
    BlockDriverInfo bdi;

    if (node_get_info(bs, &bdi) >= 0 && bdi.cluster_size > 0) {
        return (uint32_t)MIN(MAX(bdi.cluster_size, 4096), 65536);
    }
    return 65536;
}

typedef struct DriverCo {
    BlockNode *bs;
    const char *name;
    uint32_t granularity;
    GError **errp;
    int ret;
} DriverCo;

static void coroutine_fn can_store_co(void *opaque)
{
    DriverCo *d = opaque;
    d->ret = d->bs->drv->co_can_store_new_dirty_bitmap(d->bs, d->name,
                                                       d->granularity,
                                                       d->errp) ? 0 : -1;
}

static void coroutine_fn remove_co(void *opaque)
{
    DriverCo *d = opaque;
    d->ret = d->bs->drv->co_remove_persistent_dirty_bitmap(d->bs, d->name,
                                                           d->errp);
}

static bool can_store_new(BlockNode *bs, const char *name,
                          uint32_t granularity, GError **errp)
{
    DriverCo d = { bs, name, granularity, errp, 0 };

    if (!bs->drv->co_can_store_new_dirty_bitmap) {
        error_setg_errno(errp, ENOTSUP, "Can't store persistent bitmaps to %s",
                         node_get_name(bs));
        return false;
    }
    block_co_call(bs, can_store_co, &d);
    return d.ret == 0;
}

bool node_dirty_bitmap_add(BlockNode *bs, const char *name,
                           uint32_t granularity, bool persistent,
                           bool disabled, GError **errp)
{
    DirtyBitmap *bm;

    if (!name || !*name) {
        error_setg(errp, "Bitmap name cannot be empty");
        return false;
    }
    if (granularity) {
        if (granularity < 512 || (granularity & (granularity - 1))) {
            error_setg(errp, "Granularity must be power of 2 and at least "
                       "512");
            return false;
        }
    } else {
        granularity = default_granularity(bs);
    }
    if (persistent && !can_store_new(bs, name, granularity, errp)) {
        return false;
    }
    bm = node_create_dirty_bitmap(bs, granularity, name, errp);
    if (!bm) {
        return false;
    }
    dirty_bitmap_set_enabled(bm, !disabled);
    dirty_bitmap_set_persistent(bm, persistent);
    return true;
}

static DirtyBitmap *lookup(BlockNode *bs, const char *name, GError **errp)
{
    DirtyBitmap *bm;

    if (!name) {
        error_setg(errp, "Bitmap name cannot be NULL");
        return NULL;
    }
    bm = node_find_dirty_bitmap(bs, name);
    if (!bm) {
        error_setg(errp, "Dirty bitmap '%s' not found", name);
    }
    return bm;
}

DirtyBitmap *node_dirty_bitmap_unstore(BlockNode *bs, const char *name,
                                       GError **errp)
{
    DirtyBitmap *bm = lookup(bs, name, errp);

    if (!bm ||
        dirty_bitmap_check(bm, DIRTY_BITMAP_BUSY | DIRTY_BITMAP_RO, errp)) {
        return NULL;
    }
    if (dirty_bitmap_persistent(bm) &&
        bs->drv->co_remove_persistent_dirty_bitmap) {
        DriverCo d = { bs, name, 0, errp, 0 };
        block_co_call(bs, remove_co, &d);
        if (d.ret < 0) {
            return NULL;
        }
    }
    return bm;
}

bool node_dirty_bitmap_remove(BlockNode *bs, const char *name, GError **errp)
{
    DirtyBitmap *bm = node_dirty_bitmap_unstore(bs, name, errp);

    if (!bm) {
        return false;
    }
    dirty_bitmap_release(bm);
    return true;
}

bool node_dirty_bitmap_clear(BlockNode *bs, const char *name, GError **errp)
{
    DirtyBitmap *bm = lookup(bs, name, errp);

    if (!bm || dirty_bitmap_check(bm, DIRTY_BITMAP_DEFAULT, errp)) {
        return false;
    }
    dirty_bitmap_clear(bm);
    return true;
}

static bool set_enabled(BlockNode *bs, const char *name, bool on,
                        GError **errp)
{
    DirtyBitmap *bm = lookup(bs, name, errp);

    if (!bm || dirty_bitmap_check(bm, DIRTY_BITMAP_ALLOW_RO, errp)) {
        return false;
    }
    dirty_bitmap_set_enabled(bm, on);
    return true;
}

bool node_dirty_bitmap_enable(BlockNode *bs, const char *name, GError **errp)
{
    return set_enabled(bs, name, true, errp);
}

bool node_dirty_bitmap_disable(BlockNode *bs, const char *name,
                               GError **errp)
{
    return set_enabled(bs, name, false, errp);
}

bool node_dirty_bitmap_merge(BlockNode *bs, const char *target,
                             BlockNode *src_bs, const char *src_name,
                             GError **errp)
{
    DirtyBitmap *dst = lookup(bs, target, errp);
    DirtyBitmap *src;

    if (!dst) {
        return false;
    }
    src = lookup(src_bs, src_name, errp);
    return src && dirty_bitmap_merge(dst, src, errp);
}

/*
 * strata's extensions (x-strata-block-dirty-bitmap-recover and -copy,
 * docs/qmp.md).
 */

DirtyBitmap *node_dirty_bitmap_recover(BlockNode *bs, const char *name,
                                       HBitmap **backup, GError **errp)
{
    DirtyBitmap *bm = lookup(bs, name, errp);

    /* Only inconsistency is wanted here: the other refusals as usual. */
    if (!bm ||
        dirty_bitmap_check(bm, DIRTY_BITMAP_BUSY | DIRTY_BITMAP_RO, errp)) {
        return NULL;
    }
    if (!dirty_bitmap_inconsistent(bm)) {
        error_setg(errp, "Bitmap '%s' is not inconsistent: there is "
                   "nothing to recover", name);
        return NULL;
    }
    if (backup) {
        *backup = dirty_bitmap_backup(bm);
        if (!*backup) {
            error_setg(errp, "Could not allocate dirty bitmap");
            return NULL;
        }
    }
    dirty_bitmap_recover(bm);
    return bm;
}

void dirty_bitmap_unrecover(DirtyBitmap *bm, HBitmap *backup)
{
    dirty_bitmap_restore(bm, backup);
    dirty_bitmap_set_inconsistent(bm);
}

DirtyBitmap *node_dirty_bitmap_copy(const DirtyBitmap *src,
                                    BlockNode *target_bs,
                                    const char *target_name,
                                    uint32_t granularity, bool persistent,
                                    bool disabled, GError **errp)
{
    DirtyBitmap *bm;

    if (dirty_bitmap_check(src, DIRTY_BITMAP_ALLOW_RO, errp)) {
        return NULL;
    }
    /* Checked before anything is made, so a failed copy leaves nothing. */
    if (dirty_bitmap_size(src) != node_getlength(target_bs)) {
        error_setg(errp, "Bitmaps are of different sizes (destination size "
                   "is %" PRId64 ", source size is %" PRId64 ") and can't be "
                   "merged", node_getlength(target_bs),
                   dirty_bitmap_size(src));
        return NULL;
    }
    if (!node_dirty_bitmap_add(target_bs, target_name,
                               granularity ? granularity
                                           : dirty_bitmap_granularity(src),
                               persistent, true, errp)) {
        return NULL;
    }
    bm = node_find_dirty_bitmap(target_bs, target_name);
    if (!dirty_bitmap_merge(bm, src, errp)) {
        dirty_bitmap_release(bm);
        return NULL;
    }
    dirty_bitmap_set_enabled(bm, !disabled);
    return bm;
}
