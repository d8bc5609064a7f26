/*
 * The block-dirty-bitmap-* commands, x-debug-block-dirty-bitmap-sha256
 * and the bitmap actions of `transaction`, with QEMU 7.2's checks, their
 * order and messages (block/monitor/bitmap-qmp-cmds.c and blockdev.c).
 * The bitmaps themselves are block/dirty-bitmap.c's; the checks every
 * user shares (strata-img bitmap too) are in block/dirty-bitmap-ops.c.
 *
 * Two ways to find a node, as in QEMU: add looks it up as a device or
 * node ("Cannot find device='x' nor node-name='x'"), the others as a
 * bitmap's owner ("Node 'x' not found").
 */
#include <string.h>

#include "transaction.h"
#include "strata/dirty-bitmap.h"
#include "strata/error.h"
#include "strata/hbitmap.h"
#include "qapi-commands.h"

/* QEMU's block_dirty_bitmap_lookup(). */
static DirtyBitmap *bitmap_lookup(const char *node, const char *name,
                                  BlockNode **pbs, GError **errp)
{
    BlockNode *bs = node_find(node);
    DirtyBitmap *bm;

    if (!bs) {
        error_setg(errp, "Node '%s' not found", node);
        return NULL;
    }
    bm = node_find_dirty_bitmap(bs, name);
    if (!bm) {
        error_setg(errp, "Dirty bitmap '%s' not found", name);
        return NULL;
    }
    if (pbs) {
        *pbs = bs;
    }
    return bm;
}

static bool bitmap_add(const BlockDirtyBitmapAdd *a, GError **errp)
{
    BlockNode *bs;

    if (!*a->name) {
        error_setg(errp, "Bitmap name cannot be empty");
        return false;
    }
    bs = txn_lookup_node(a->node, a->node, errp);
    if (!bs) {
        return false;
    }
    /* 0 asks for the default below; given, it is refused like any other. */
    if (a->has_granularity &&
        (a->granularity < 512 || (a->granularity & (a->granularity - 1)))) {
        error_setg(errp, "Granularity must be power of 2 and at least 512");
        return false;
    }
    return node_dirty_bitmap_add(bs, a->name,
                                 a->has_granularity ? a->granularity : 0,
                                 a->has_persistent && a->persistent,
                                 a->has_disabled && a->disabled, errp);
}

/*
 * QEMU's block_dirty_bitmap_merge(): the sources are ORed into a bitmap
 * of the target's granularity first, so that a missing or unusable
 * source leaves the target untouched; the target's own checks come last.
 * *backup (if backup is not NULL) holds the target's bits before.
 */
static DirtyBitmap *bitmap_merge(const char *node, const char *target,
                                 BlockDirtyBitmapOrStrList *bitmaps,
                                 HBitmap **backup, GError **errp)
{
    BlockNode *bs;
    DirtyBitmap *dst = bitmap_lookup(node, target, &bs, errp);
    DirtyBitmap *anon;

    if (!dst) {
        return NULL;
    }
    anon = node_create_dirty_bitmap(bs, dirty_bitmap_granularity(dst), NULL,
                                    errp);
    if (!anon) {
        return NULL;
    }
    /* Only what the sources hold: writes meanwhile are the target's. */
    dirty_bitmap_set_enabled(anon, false);
    for (BlockDirtyBitmapOrStrList *l = bitmaps; l; l = l->next) {
        const BlockDirtyBitmapOrStr *s = l->value;
        DirtyBitmap *src;

        if (s->type == QTYPE_QSTRING) {
            src = node_find_dirty_bitmap(bs, s->u.local);
            if (!src) {
                error_setg(errp, "Dirty bitmap '%s' not found", s->u.local);
                dst = NULL;
                goto out;
            }
        } else {
            src = bitmap_lookup(s->u.external.node, s->u.external.name, NULL,
                                errp);
            if (!src) {
                dst = NULL;
                goto out;
            }
        }
        if (!dirty_bitmap_merge(anon, src, errp)) {
            dst = NULL;
            goto out;
        }
    }
    if (dirty_bitmap_check(dst, DIRTY_BITMAP_DEFAULT, errp)) {
        dst = NULL;
        goto out;
    }
    if (backup) {
        *backup = dirty_bitmap_backup(dst);
        if (!*backup) {
            error_setg(errp, "Could not allocate dirty bitmap");
            dst = NULL;
            goto out;
        }
    }
    if (!dirty_bitmap_merge(dst, anon, errp)) {
        /* Cannot happen after the checks above; keep dst as it was. */
        if (backup) {
            hbitmap_free(*backup);
            *backup = NULL;
        }
        dst = NULL;
    }
out:
    dirty_bitmap_release(anon);
    return dst;
}

/* ---- The commands ---- */

void qmp_block_dirty_bitmap_add(const char *node, const char *name,
                                bool has_granularity, uint32_t granularity,
                                bool has_persistent, bool persistent,
                                bool has_disabled, bool disabled,
                                GError **errp)
{
    BlockDirtyBitmapAdd a = {
        .node = (char *)node, .name = (char *)name,
        .has_granularity = has_granularity, .granularity = granularity,
        .has_persistent = has_persistent, .persistent = persistent,
        .has_disabled = has_disabled, .disabled = disabled,
    };

    bitmap_add(&a, errp);
}

void qmp_block_dirty_bitmap_remove(const char *node, const char *name,
                                   GError **errp)
{
    BlockNode *bs;

    if (bitmap_lookup(node, name, &bs, errp)) {
        node_dirty_bitmap_remove(bs, name, errp);
    }
}

void qmp_block_dirty_bitmap_clear(const char *node, const char *name,
                                  GError **errp)
{
    DirtyBitmap *bm = bitmap_lookup(node, name, NULL, errp);

    if (bm && !dirty_bitmap_check(bm, DIRTY_BITMAP_DEFAULT, errp)) {
        dirty_bitmap_clear(bm);
    }
}

static void set_enabled(const char *node, const char *name, bool on,
                        GError **errp)
{
    DirtyBitmap *bm = bitmap_lookup(node, name, NULL, errp);

    if (bm && !dirty_bitmap_check(bm, DIRTY_BITMAP_ALLOW_RO, errp)) {
        dirty_bitmap_set_enabled(bm, on);
    }
}

void qmp_block_dirty_bitmap_enable(const char *node, const char *name,
                                   GError **errp)
{
    set_enabled(node, name, true, errp);
}

void qmp_block_dirty_bitmap_disable(const char *node, const char *name,
                                    GError **errp)
{
    set_enabled(node, name, false, errp);
}

void qmp_block_dirty_bitmap_merge(const char *node, const char *target,
                                  BlockDirtyBitmapOrStrList *bitmaps,
                                  GError **errp)
{
    bitmap_merge(node, target, bitmaps, NULL, errp);
}

BlockDirtyBitmapSha256 *qmp_x_debug_block_dirty_bitmap_sha256(
    const char *node, const char *name, GError **errp)
{
    DirtyBitmap *bm = bitmap_lookup(node, name, NULL, errp);
    BlockDirtyBitmapSha256 *ret;

    if (!bm) {
        return NULL;
    }
    ret = g_new0(BlockDirtyBitmapSha256, 1);
    ret->sha256 = dirty_bitmap_sha256(bm);
    return ret;
}

/* ---- The transaction actions (blockdev.c's block_dirty_bitmap_*) ---- */

typedef struct BitmapAction {
    DirtyBitmap *bm;
    HBitmap *backup;            /* clear, merge: the bits before */
    bool prepared;              /* add: the bitmap was made */
    bool was_enabled;           /* enable, disable */
} BitmapAction;

static bool add_prepare(TxnState *s, GError **errp)
{
    BitmapAction *st = s->opaque;

    if (!txn_check_completion_mode(s, errp)) {
        return false;
    }
    st->prepared = bitmap_add(s->action->u.block_dirty_bitmap_add.data,
                              errp);
    return st->prepared;
}

static void add_abort(TxnState *s)
{
    BitmapAction *st = s->opaque;
    const BlockDirtyBitmapAdd *a = s->action->u.block_dirty_bitmap_add.data;

    /* Never stored: dropping it from memory undoes it all. */
    if (st->prepared) {
        DirtyBitmap *bm = node_find_dirty_bitmap(node_find(a->node),
                                                 a->name);
        g_assert(bm);
        dirty_bitmap_release(bm);
    }
}

static const BlockDirtyBitmap *plain_args(TxnState *s)
{
    switch (s->action->type) {
    case TRANSACTION_ACTION_KIND_BLOCK_DIRTY_BITMAP_REMOVE:
        return s->action->u.block_dirty_bitmap_remove.data;
    case TRANSACTION_ACTION_KIND_BLOCK_DIRTY_BITMAP_CLEAR:
        return s->action->u.block_dirty_bitmap_clear.data;
    case TRANSACTION_ACTION_KIND_BLOCK_DIRTY_BITMAP_ENABLE:
        return s->action->u.block_dirty_bitmap_enable.data;
    case TRANSACTION_ACTION_KIND_BLOCK_DIRTY_BITMAP_DISABLE:
        return s->action->u.block_dirty_bitmap_disable.data;
    default:
        g_assert_not_reached();
    }
}

/*
 * remove: deleted from the image at prepare (as QEMU does), kept in
 * memory and busy until commit releases it; abort makes it usable again
 * (still persistent, so stored again at close).
 */
static bool remove_prepare(TxnState *s, GError **errp)
{
    BitmapAction *st = s->opaque;
    const BlockDirtyBitmap *a = plain_args(s);
    BlockNode *bs;

    if (!txn_check_completion_mode(s, errp) ||
        !bitmap_lookup(a->node, a->name, &bs, errp)) {
        return false;
    }
    st->bm = node_dirty_bitmap_unstore(bs, a->name, errp);
    if (!st->bm) {
        return false;
    }
    dirty_bitmap_set_busy(st->bm, true);
    return true;
}

static void remove_commit(TxnState *s)
{
    BitmapAction *st = s->opaque;

    dirty_bitmap_set_busy(st->bm, false);
    dirty_bitmap_release(st->bm);
}

static void remove_abort(TxnState *s)
{
    BitmapAction *st = s->opaque;

    if (st->bm) {
        dirty_bitmap_set_busy(st->bm, false);
    }
}

static bool clear_prepare(TxnState *s, GError **errp)
{
    BitmapAction *st = s->opaque;
    const BlockDirtyBitmap *a = plain_args(s);
    DirtyBitmap *bm;

    if (!txn_check_completion_mode(s, errp)) {
        return false;
    }
    bm = bitmap_lookup(a->node, a->name, NULL, errp);
    if (!bm || dirty_bitmap_check(bm, DIRTY_BITMAP_DEFAULT, errp)) {
        return false;
    }
    st->backup = dirty_bitmap_backup(bm);
    if (!st->backup) {
        error_setg(errp, "Could not allocate dirty bitmap");
        return false;
    }
    st->bm = bm;
    dirty_bitmap_clear(bm);
    return true;
}

/* clear and merge: abort puts the bits back, commit forgets them. */
static void backup_restore(TxnState *s)
{
    BitmapAction *st = s->opaque;

    if (st->backup) {
        dirty_bitmap_restore(st->bm, st->backup);
        st->backup = NULL;
    }
}

static void backup_free(TxnState *s)
{
    BitmapAction *st = s->opaque;

    hbitmap_free(st->backup);
    st->backup = NULL;
}

static bool set_enabled_prepare(TxnState *s, bool on, GError **errp)
{
    BitmapAction *st = s->opaque;
    const BlockDirtyBitmap *a = plain_args(s);
    DirtyBitmap *bm;

    if (!txn_check_completion_mode(s, errp)) {
        return false;
    }
    bm = bitmap_lookup(a->node, a->name, NULL, errp);
    if (!bm || dirty_bitmap_check(bm, DIRTY_BITMAP_ALLOW_RO, errp)) {
        return false;
    }
    st->bm = bm;
    st->was_enabled = dirty_bitmap_enabled(bm);
    dirty_bitmap_set_enabled(bm, on);
    return true;
}

static bool enable_prepare(TxnState *s, GError **errp)
{
    return set_enabled_prepare(s, true, errp);
}

static bool disable_prepare(TxnState *s, GError **errp)
{
    return set_enabled_prepare(s, false, errp);
}

static void set_enabled_abort(TxnState *s)
{
    BitmapAction *st = s->opaque;

    if (st->bm) {
        dirty_bitmap_set_enabled(st->bm, st->was_enabled);
    }
}

static bool merge_prepare(TxnState *s, GError **errp)
{
    BitmapAction *st = s->opaque;
    const BlockDirtyBitmapMerge *a =
        s->action->u.block_dirty_bitmap_merge.data;

    if (!txn_check_completion_mode(s, errp)) {
        return false;
    }
    st->bm = bitmap_merge(a->node, a->target, a->bitmaps, &st->backup, errp);
    return st->bm != NULL;
}

const TxnActionOps txn_bitmap_add = {
    .state_size = sizeof(BitmapAction),
    .prepare = add_prepare,
    .abort = add_abort,
};

const TxnActionOps txn_bitmap_remove = {
    .state_size = sizeof(BitmapAction),
    .prepare = remove_prepare,
    .commit = remove_commit,
    .abort = remove_abort,
};

const TxnActionOps txn_bitmap_clear = {
    .state_size = sizeof(BitmapAction),
    .prepare = clear_prepare,
    .commit = backup_free,
    .abort = backup_restore,
};

const TxnActionOps txn_bitmap_enable = {
    .state_size = sizeof(BitmapAction),
    .prepare = enable_prepare,
    .abort = set_enabled_abort,
};

const TxnActionOps txn_bitmap_disable = {
    .state_size = sizeof(BitmapAction),
    .prepare = disable_prepare,
    .abort = set_enabled_abort,
};

const TxnActionOps txn_bitmap_merge = {
    .state_size = sizeof(BitmapAction),
    .prepare = merge_prepare,
    .commit = backup_free,
    .abort = backup_restore,
};
