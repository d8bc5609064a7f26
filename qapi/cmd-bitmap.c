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
#include "strata/coroutine.h"
#include "strata/dirty-bitmap.h"
#include "strata/error.h"
#include "strata/hbitmap.h"
#include "qapi-commands.h"

/*
 * Threads: a node's bitmaps belong to its loop (writes mark them there),
 * so every command and action does its work in a coroutine of that loop
 * (node_co_call: directly when the node is in the main loop).  The
 * sources of a merge are read from the target's loop: a source of a node
 * in another iothread may be marked meanwhile (see docs/qmp.md).
 */
typedef struct Op {
    BlockNode *bs;
    const char *name;               /* the bitmap */
    GError **errp;
    bool ok;
    DirtyBitmap *bm;                /* found, or the one to act on */
    HBitmap **backup;               /* clear, merge in a transaction */
    bool enable;                    /* enable/disable */
    bool *was_enabled;              /* (transaction) */
    const BlockDirtyBitmapAdd *add;
    BlockDirtyBitmapOrStrList *sources;
    char *sha256;
    const XStrataBlockDirtyBitmapCopy *copy;
    BlockNode *src_bs;              /* copy: the source's node */
} Op;

/*
 * The library's messages may end in a hint line for people ("Try
 * block-dirty-bitmap-remove ..."); QEMU never sends hints in QMP errors.
 */
static void drop_hint(GError **errp)
{
    char *nl = errp && *errp ? strchr((*errp)->message, '\n') : NULL;

    if (nl) {
        *nl = '\0';
    }
}

static void run(Op *op, CoroutineEntry *fn)
{
    node_co_call(op->bs, fn, op);
    drop_hint(op->errp);
}

/* The node of block_dirty_bitmap_lookup(): "Node 'x' not found". */
static BlockNode *owner(const char *node, GError **errp)
{
    BlockNode *bs = node_find(node);

    if (!bs) {
        error_setg(errp, "Node '%s' not found", node);
    }
    return bs;
}

static DirtyBitmap *find(BlockNode *bs, const char *name, GError **errp)
{
    DirtyBitmap *bm = node_find_dirty_bitmap(bs, name);

    if (!bm) {
        error_setg(errp, "Dirty bitmap '%s' not found", name);
    }
    return bm;
}

static void coroutine_fn add_co(void *opaque)
{
    Op *op = opaque;
    const BlockDirtyBitmapAdd *a = op->add;

    op->ok = node_dirty_bitmap_add(op->bs, a->name,
                                   a->has_granularity ? a->granularity : 0,
                                   a->has_persistent && a->persistent,
                                   a->has_disabled && a->disabled, op->errp);
}

static bool bitmap_add(const BlockDirtyBitmapAdd *a, GError **errp)
{
    Op op = { .add = a, .errp = errp };

    if (!*a->name) {
        error_setg(errp, "Bitmap name cannot be empty");
        return false;
    }
    op.bs = txn_lookup_node(a->node, a->node, errp);
    if (!op.bs) {
        return false;
    }
    /* 0 asks for the default below; given, it is refused like any other. */
    if (a->has_granularity &&
        (a->granularity < 512 || (a->granularity & (a->granularity - 1)))) {
        error_setg(errp, "Granularity must be power of 2 and at least 512");
        return false;
    }
    run(&op, add_co);
    return op.ok;
}

static void coroutine_fn remove_co(void *opaque)
{
    Op *op = opaque;

    op->ok = node_dirty_bitmap_remove(op->bs, op->name, op->errp);
}

/* remove's first half (transaction): checked, out of the image, busy. */
static void coroutine_fn unstore_co(void *opaque)
{
    Op *op = opaque;

    op->bm = node_dirty_bitmap_unstore(op->bs, op->name, op->errp);
    if (op->bm) {
        dirty_bitmap_set_busy(op->bm, true);
    }
}

static void coroutine_fn release_co(void *opaque)
{
    Op *op = opaque;

    dirty_bitmap_set_busy(op->bm, false);
    dirty_bitmap_release(op->bm);
}

static void coroutine_fn clear_co(void *opaque)
{
    Op *op = opaque;
    DirtyBitmap *bm = find(op->bs, op->name, op->errp);

    if (!bm || dirty_bitmap_check(bm, DIRTY_BITMAP_DEFAULT, op->errp)) {
        return;
    }
    if (op->backup) {
        *op->backup = dirty_bitmap_backup(bm);
        if (!*op->backup) {
            error_setg(op->errp, "Could not allocate dirty bitmap");
            return;
        }
    }
    dirty_bitmap_clear(bm);
    op->bm = bm;
    op->ok = true;
}

static void coroutine_fn set_enabled_co(void *opaque)
{
    Op *op = opaque;
    DirtyBitmap *bm = find(op->bs, op->name, op->errp);

    if (!bm || dirty_bitmap_check(bm, DIRTY_BITMAP_ALLOW_RO, op->errp)) {
        return;
    }
    if (op->was_enabled) {
        *op->was_enabled = dirty_bitmap_enabled(bm);
    }
    dirty_bitmap_set_enabled(bm, op->enable);
    op->bm = bm;
    op->ok = true;
}

/* Undo (transaction): op->bm gets op->enable back. */
static void coroutine_fn reset_enabled_co(void *opaque)
{
    Op *op = opaque;

    dirty_bitmap_set_enabled(op->bm, op->enable);
}

/* Undo (transaction): op->bm gets the bits of *op->backup back. */
static void coroutine_fn restore_co(void *opaque)
{
    Op *op = opaque;

    dirty_bitmap_restore(op->bm, *op->backup);
    *op->backup = NULL;
}

/*
 * QEMU's block_dirty_bitmap_merge(): the sources are ORed into a bitmap
 * of the target's granularity first, so that a missing or unusable
 * source leaves the target untouched.  qsd 7.2 checks, source by source:
 * that it exists, that the target may change, that the source may be
 * read (so a busy target is reported only once a source was found).
 * *op->backup (if op->backup is set) holds the target's bits before.
 */
static void coroutine_fn merge_co(void *opaque)
{
    Op *op = opaque;
    BlockNode *bs = op->bs;
    GError **errp = op->errp;
    DirtyBitmap *dst = find(bs, op->name, errp);
    DirtyBitmap *anon;

    if (!dst) {
        return;
    }
    anon = node_create_dirty_bitmap(bs, dirty_bitmap_granularity(dst), NULL,
                                    errp);
    if (!anon) {
        return;
    }
    /* Only what the sources hold: writes meanwhile are the target's. */
    dirty_bitmap_set_enabled(anon, false);
    for (BlockDirtyBitmapOrStrList *l = op->sources; l; l = l->next) {
        const BlockDirtyBitmapOrStr *s = l->value;
        DirtyBitmap *src;

        if (s->type == QTYPE_QSTRING) {
            src = find(bs, s->u.local, errp);
        } else {
            BlockNode *other = owner(s->u.external.node, errp);
            src = other ? find(other, s->u.external.name, errp) : NULL;
        }
        if (!src || dirty_bitmap_check(dst, DIRTY_BITMAP_DEFAULT, errp) ||
            !dirty_bitmap_merge(anon, src, errp)) {
            goto out;
        }
    }
    /* No source at all: the target is still checked. */
    if (dirty_bitmap_check(dst, DIRTY_BITMAP_DEFAULT, errp)) {
        goto out;
    }
    if (op->backup) {
        *op->backup = dirty_bitmap_backup(dst);
        if (!*op->backup) {
            error_setg(errp, "Could not allocate dirty bitmap");
            goto out;
        }
    }
    if (!dirty_bitmap_merge(dst, anon, errp)) {
        /* Cannot happen after the checks above; dst is as it was. */
        if (op->backup) {
            hbitmap_free(*op->backup);
            *op->backup = NULL;
        }
        goto out;
    }
    op->bm = dst;
    op->ok = true;
out:
    dirty_bitmap_release(anon);
}

static void coroutine_fn sha256_co(void *opaque)
{
    Op *op = opaque;
    DirtyBitmap *bm = find(op->bs, op->name, op->errp);

    if (bm) {
        op->sha256 = dirty_bitmap_sha256(bm);
    }
}

/* x-strata-block-dirty-bitmap-recover (strata/dirty-bitmap.h). */
static void coroutine_fn recover_co(void *opaque)
{
    Op *op = opaque;

    op->bm = node_dirty_bitmap_recover(op->bs, op->name, op->backup,
                                       op->errp);
    op->ok = op->bm != NULL;
}

/* Undo (transaction): the bits of *op->backup back, inconsistent again. */
static void coroutine_fn unrecover_co(void *opaque)
{
    Op *op = opaque;

    dirty_bitmap_unrecover(op->bm, *op->backup);
    *op->backup = NULL;
}

/*
 * x-strata-block-dirty-bitmap-copy, in the target's loop (op->bs): the
 * source is read from there, as merge's sources are.  The source is
 * looked up first, then the new bitmap is checked and made.
 */
static void coroutine_fn copy_co(void *opaque)
{
    Op *op = opaque;
    const XStrataBlockDirtyBitmapCopy *a = op->copy;
    DirtyBitmap *src = find(op->src_bs, a->name, op->errp);

    if (!src) {
        return;
    }
    if (!*a->target_name) {
        error_setg(op->errp, "Bitmap name cannot be empty");
        return;
    }
    if (a->has_granularity &&
        (a->granularity < 512 || (a->granularity & (a->granularity - 1)))) {
        error_setg(op->errp, "Granularity must be power of 2 and at least "
                   "512");
        return;
    }
    op->bm = node_dirty_bitmap_copy(src, op->bs, a->target_name,
                                    a->has_granularity ? a->granularity : 0,
                                    a->has_persistent && a->persistent,
                                    a->has_disabled && a->disabled,
                                    op->errp);
    op->ok = op->bm != NULL;
}

static bool bitmap_copy(const XStrataBlockDirtyBitmapCopy *a, Op *op,
                        GError **errp)
{
    op->copy = a;
    op->errp = errp;
    op->src_bs = owner(a->node, errp);
    if (!op->src_bs) {
        return false;
    }
    op->bs = a->target_node ? owner(a->target_node, errp) : op->src_bs;
    if (!op->bs) {
        return false;
    }
    run(op, copy_co);
    return op->ok;
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

/* The node, then fn in its loop: the commands on one named bitmap. */
static bool on_bitmap(const char *node, const char *name, Op *op,
                      CoroutineEntry *fn, GError **errp)
{
    op->bs = owner(node, errp);
    if (!op->bs) {
        return false;
    }
    op->name = name;
    op->errp = errp;
    run(op, fn);
    return op->ok;
}

void qmp_block_dirty_bitmap_remove(const char *node, const char *name,
                                   GError **errp)
{
    Op op = { 0 };

    on_bitmap(node, name, &op, remove_co, errp);
}

void qmp_block_dirty_bitmap_clear(const char *node, const char *name,
                                  GError **errp)
{
    Op op = { 0 };

    on_bitmap(node, name, &op, clear_co, errp);
}

void qmp_block_dirty_bitmap_enable(const char *node, const char *name,
                                   GError **errp)
{
    Op op = { .enable = true };

    on_bitmap(node, name, &op, set_enabled_co, errp);
}

void qmp_block_dirty_bitmap_disable(const char *node, const char *name,
                                    GError **errp)
{
    Op op = { .enable = false };

    on_bitmap(node, name, &op, set_enabled_co, errp);
}

void qmp_block_dirty_bitmap_merge(const char *node, const char *target,
                                  BlockDirtyBitmapOrStrList *bitmaps,
                                  GError **errp)
{
    Op op = { .sources = bitmaps };

    on_bitmap(node, target, &op, merge_co, errp);
}

BlockDirtyBitmapSha256 *qmp_x_debug_block_dirty_bitmap_sha256(
    const char *node, const char *name, GError **errp)
{
    Op op = { 0 };
    BlockDirtyBitmapSha256 *ret;

    on_bitmap(node, name, &op, sha256_co, errp);
    if (!op.sha256) {
        return NULL;
    }
    ret = g_new0(BlockDirtyBitmapSha256, 1);
    ret->sha256 = op.sha256;
    return ret;
}

void qmp_x_strata_block_dirty_bitmap_recover(const char *node,
                                             const char *name, GError **errp)
{
    Op op = { 0 };

    on_bitmap(node, name, &op, recover_co, errp);
}

void qmp_x_strata_block_dirty_bitmap_copy(const char *node, const char *name,
                                          const char *target_node,
                                          const char *target_name,
                                          bool has_granularity,
                                          uint32_t granularity,
                                          bool has_persistent,
                                          bool persistent,
                                          bool has_disabled, bool disabled,
                                          GError **errp)
{
    XStrataBlockDirtyBitmapCopy a = {
        .node = (char *)node, .name = (char *)name,
        .target_node = (char *)target_node,
        .target_name = (char *)target_name,
        .has_granularity = has_granularity, .granularity = granularity,
        .has_persistent = has_persistent, .persistent = persistent,
        .has_disabled = has_disabled, .disabled = disabled,
    };
    Op op = { 0 };

    bitmap_copy(&a, &op, errp);
}

/* ---- The transaction actions (blockdev.c's block_dirty_bitmap_*) ---- */

typedef struct BitmapAction {
    BlockNode *bs;
    DirtyBitmap *bm;
    HBitmap *backup;            /* clear, merge: the bits before */
    bool prepared;              /* add: the bitmap was made */
    bool was_enabled;           /* enable, disable */
    BlockNode *drained;         /* copy: the source's node until clean */
} BitmapAction;

/*
 * The node and bitmap an action changed at prepare, as they are now.
 * Commit and abort run after the later actions' drains, which run the
 * loop: another client may have removed the bitmap or deleted its node
 * there, and the pointers kept since prepare would be freed memory.  So
 * they are looked up again by name and compared, never followed; NULL
 * when either is gone (the action then has nothing left to undo).
 */
static const BlockDirtyBitmap *plain_args(TxnState *s);

static DirtyBitmap *action_bitmap(TxnState *s)
{
    BitmapAction *st = s->opaque;
    const char *node, *name;

    switch (s->action->type) {
    case TRANSACTION_ACTION_KIND_BLOCK_DIRTY_BITMAP_MERGE:
        node = s->action->u.block_dirty_bitmap_merge.data->node;
        name = s->action->u.block_dirty_bitmap_merge.data->target;
        break;
    case TRANSACTION_ACTION_KIND_X_STRATA_BLOCK_DIRTY_BITMAP_COPY: {
        const XStrataBlockDirtyBitmapCopy *a =
            s->action->u.x_strata_block_dirty_bitmap_copy.data;
        node = a->target_node ? a->target_node : a->node;
        name = a->target_name;
        break;
    }
    default:
        node = plain_args(s)->node;
        name = plain_args(s)->name;
        break;
    }
    BlockNode *bs = st->bs ? node_find(node) : NULL;
    if (!bs || bs != st->bs) {
        return NULL;
    }
    DirtyBitmap *bm = node_find_dirty_bitmap(bs, name);
    return bm == st->bm ? bm : NULL;
}

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
        Op op = { .bs = node_find(a->node) };
        /* Another client may have removed it meanwhile. */
        op.bm = op.bs ? node_find_dirty_bitmap(op.bs, a->name) : NULL;
        if (op.bm) {
            run(&op, release_co);
        }
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
    case TRANSACTION_ACTION_KIND_X_STRATA_BLOCK_DIRTY_BITMAP_RECOVER:
        return s->action->u.x_strata_block_dirty_bitmap_recover.data;
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
    Op op = { 0 };

    if (!txn_check_completion_mode(s, errp)) {
        return false;
    }
    /* As QEMU: the bitmap is looked up before the checks of removal. */
    on_bitmap(a->node, a->name, &op, unstore_co, errp);
    st->bs = op.bs;
    st->bm = op.bm;
    return st->bm != NULL;
}

static void remove_commit(TxnState *s)
{
    BitmapAction *st = s->opaque;
    Op op = { .bs = st->bs, .bm = action_bitmap(s) };

    if (op.bm) {
        run(&op, release_co);
    }
}

static void remove_abort(TxnState *s)
{
    DirtyBitmap *bm = action_bitmap(s);

    if (bm) {
        dirty_bitmap_set_busy(bm, false);
    }
}

static bool clear_prepare(TxnState *s, GError **errp)
{
    BitmapAction *st = s->opaque;
    const BlockDirtyBitmap *a = plain_args(s);
    Op op = { .backup = &st->backup };

    if (!txn_check_completion_mode(s, errp) ||
        !on_bitmap(a->node, a->name, &op, clear_co, errp)) {
        return false;
    }
    st->bs = op.bs;
    st->bm = op.bm;
    return true;
}

static void backup_free(TxnState *s);

/* clear and merge: abort puts the bits back, commit forgets them. */
static void backup_restore(TxnState *s)
{
    BitmapAction *st = s->opaque;

    if (st->backup) {
        Op op = { .bs = st->bs, .bm = action_bitmap(s),
                  .backup = &st->backup };
        if (op.bm) {
            run(&op, restore_co);
        }
        backup_free(s);     /* the bitmap is gone: nothing to restore */
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
    Op op = { .enable = on, .was_enabled = &st->was_enabled };

    if (!txn_check_completion_mode(s, errp) ||
        !on_bitmap(a->node, a->name, &op, set_enabled_co, errp)) {
        return false;
    }
    st->bs = op.bs;
    st->bm = op.bm;
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
        Op op = { .bs = st->bs, .bm = action_bitmap(s),
                  .enable = st->was_enabled };
        if (op.bm) {
            run(&op, reset_enabled_co);
        }
    }
}

static bool merge_prepare(TxnState *s, GError **errp)
{
    BitmapAction *st = s->opaque;
    const BlockDirtyBitmapMerge *a =
        s->action->u.block_dirty_bitmap_merge.data;
    Op op = { .sources = a->bitmaps, .backup = &st->backup };

    if (!txn_check_completion_mode(s, errp) ||
        !on_bitmap(a->node, a->target, &op, merge_co, errp)) {
        return false;
    }
    st->bs = op.bs;
    st->bm = op.bm;
    return true;
}

/*
 * x-strata-block-dirty-bitmap-recover: recovered at prepare (so later
 * actions see a usable bitmap), abort puts the bits back and makes it
 * inconsistent again.
 */
static bool recover_prepare(TxnState *s, GError **errp)
{
    BitmapAction *st = s->opaque;
    const BlockDirtyBitmap *a = plain_args(s);
    Op op = { .backup = &st->backup };

    if (!txn_check_completion_mode(s, errp) ||
        !on_bitmap(a->node, a->name, &op, recover_co, errp)) {
        return false;
    }
    st->bs = op.bs;
    st->bm = op.bm;
    return true;
}

static void recover_abort(TxnState *s)
{
    BitmapAction *st = s->opaque;

    if (st->backup) {
        Op op = { .bs = st->bs, .bm = action_bitmap(s),
                  .backup = &st->backup };
        if (op.bm) {
            run(&op, unrecover_co);
        }
        backup_free(s);
    }
}

/*
 * x-strata-block-dirty-bitmap-copy: made at prepare, released on abort.
 * The source's node stays drained from prepare until the transaction is
 * cleaned, so that no write lands between the copy and the actions after
 * it (a clear of the source: the checkpoint recipe), even when the node
 * runs in an iothread.
 */
static bool copy_prepare(TxnState *s, GError **errp)
{
    BitmapAction *st = s->opaque;
    const XStrataBlockDirtyBitmapCopy *a =
        s->action->u.x_strata_block_dirty_bitmap_copy.data;
    Op op = { 0 };

    if (!txn_check_completion_mode(s, errp)) {
        return false;
    }
    st->drained = node_find(a->node);
    if (st->drained) {
        node_ref(st->drained);
        node_drain_begin(st->drained);
    }
    if (!bitmap_copy(a, &op, errp)) {
        return false;
    }
    st->bs = op.bs;
    st->bm = op.bm;
    return true;
}

static void copy_clean(TxnState *s)
{
    BitmapAction *st = s->opaque;

    if (st->drained) {
        node_drain_end(st->drained);
        node_unref(st->drained);
    }
}

static void copy_abort(TxnState *s)
{
    BitmapAction *st = s->opaque;

    /* Never stored (only a clean close stores): releasing undoes it. */
    if (st->bm) {
        Op op = { .bs = st->bs, .bm = action_bitmap(s) };
        if (op.bm) {
            run(&op, release_co);
        }
    }
}

const TxnActionOps txn_bitmap_recover = {
    .state_size = sizeof(BitmapAction),
    .prepare = recover_prepare,
    .commit = backup_free,
    .abort = recover_abort,
};

const TxnActionOps txn_bitmap_copy = {
    .state_size = sizeof(BitmapAction),
    .prepare = copy_prepare,
    .abort = copy_abort,
    .clean = copy_clean,
};

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
