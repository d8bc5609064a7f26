/*
 * mirror_top: the filter a mirror job or active commit puts above its
 * source (strata/mirror-top.h), QEMU 7.2's bdrv_mirror_top.  Its one
 * child is "backing", as QEMU's, so that graphs and queries look the same.
 * It cannot be created by blockdev-add (the schema does not list it).
 */
#include <errno.h>
#include <string.h>

#include "strata/block-driver.h"
#include "strata/mirror-top.h"

typedef struct MirrorTopState {
    /*
     * The filtered child, named "backing" as QEMU's.  Not the node's
     * backing shortcut: it is no copy-on-write backing file, so queries
     * show none (QEMU's bdrv_cow_bs() is NULL for a filter).
     */
    BlockChild *child;
    bool is_commit;
    bool stop;                  /* leaving: ask nothing of the child */
    MirrorTopWriteFunc *hook;
    void *hook_opaque;
} MirrorTopState;

extern const BlockDriver bdrv_mirror_top;

static int mirror_top_open(BlockNode *bs, json_t *options, int flags,
                           GError **errp)
{
    MirrorTopState *s = bs->opaque;

    (void)flags;
    s->child = node_open_child(bs, options, "backing",
                               CHILD_ROLE_FILTERED | CHILD_ROLE_PRIMARY,
                               false, errp);
    if (!s->child) {
        return -EINVAL;
    }
    /* Attaching "backing" set the shortcut: not a COW backing file. */
    bs->backing = NULL;
    /* QEMU's: writes pass down unchanged data and no-fallback zeroes. */
    bs->supported_write_flags = REQ_WRITE_UNCHANGED;
    bs->supported_zero_flags = REQ_WRITE_UNCHANGED | REQ_NO_FALLBACK;
    return 0;
}

static void mirror_top_child_perm(BlockNode *bs, BlockChild *c,
                                  unsigned role, const ReopenState *rs,
                                  uint64_t perm, uint64_t shared,
                                  uint64_t *nperm, uint64_t *nshared)
{
    MirrorTopState *s = bs->opaque;

    if (s->stop) {
        /* The job is over: the node below is about to take our place. */
        *nperm = 0;
        *nshared = BLK_PERM_ALL;
        return;
    }
    node_default_perms(bs, c, role, rs, perm, shared, nperm, nshared);
    if (s->is_commit) {
        /*
         * Active commit writes into the base below: the nodes above it do
         * not read consistently meanwhile, and the chain must let the job
         * write under it.
         */
        *nperm &= ~(uint64_t)BLK_PERM_CONSISTENT_READ;
        *nshared |= BLK_PERM_WRITE;
    }
}

static BlockChild *mt_child(BlockNode *bs)
{
    return ((MirrorTopState *)bs->opaque)->child;
}

static int64_t mirror_top_getlength(BlockNode *bs)
{
    return mt_child(bs) ? node_getlength(mt_child(bs)->bs) : 0;
}

static int coroutine_fn mirror_top_co_preadv(BlockNode *bs, int64_t offset,
                                             int64_t bytes, IOVec *qiov,
                                             size_t qiov_offset, int flags)
{
    return child_co_preadv(mt_child(bs), offset, bytes, qiov, qiov_offset,
                           flags);
}

int coroutine_fn mirror_top_write_through(BlockNode *filter, MirrorTopOp op,
                                          int64_t offset, int64_t bytes,
                                          IOVec *qiov, size_t qiov_offset,
                                          int flags)
{
    switch (op) {
    case MIRROR_TOP_WRITE:
        return child_co_pwritev(mt_child(filter), offset, bytes, qiov,
                                qiov_offset, flags);
    case MIRROR_TOP_ZERO:
        return child_co_pwrite_zeroes(mt_child(filter), offset, bytes,
                                      flags);
    case MIRROR_TOP_DISCARD:
        return child_co_pdiscard(mt_child(filter), offset, bytes);
    }
    return -EINVAL;
}

static int coroutine_fn mirror_top_do_write(BlockNode *bs, MirrorTopOp op,
                                            int64_t offset, int64_t bytes,
                                            IOVec *qiov, size_t qiov_offset,
                                            int flags)
{
    MirrorTopState *s = bs->opaque;

    if (s->hook) {
        return s->hook(s->hook_opaque, bs, op, offset, bytes, qiov,
                       qiov_offset, flags);
    }
    return mirror_top_write_through(bs, op, offset, bytes, qiov, qiov_offset,
                                    flags);
}

static int coroutine_fn mirror_top_co_pwritev(BlockNode *bs, int64_t offset,
                                              int64_t bytes, IOVec *qiov,
                                              size_t qiov_offset, int flags)
{
    return mirror_top_do_write(bs, MIRROR_TOP_WRITE, offset, bytes, qiov,
                               qiov_offset, flags);
}

static int coroutine_fn mirror_top_co_pwrite_zeroes(BlockNode *bs,
                                                    int64_t offset,
                                                    int64_t bytes, int flags)
{
    return mirror_top_do_write(bs, MIRROR_TOP_ZERO, offset, bytes, NULL, 0,
                               flags);
}

static int coroutine_fn mirror_top_co_pdiscard(BlockNode *bs, int64_t offset,
                                               int64_t bytes)
{
    return mirror_top_do_write(bs, MIRROR_TOP_DISCARD, offset, bytes, NULL, 0,
                               0);
}

static int coroutine_fn mirror_top_co_flush(BlockNode *bs)
{
    return mt_child(bs) ? node_co_flush(mt_child(bs)->bs) : 0;
}

static void mirror_top_refresh_filename(BlockNode *bs)
{
    /* QEMU shows the filtered node's filename. */
    if (mt_child(bs)) {
        g_strlcpy(bs->filename, mt_child(bs)->bs->filename,
                  sizeof(bs->filename));
    }
}

const BlockDriver bdrv_mirror_top = {
    .format_name = "mirror_top",
    .instance_size = sizeof(MirrorTopState),
    .is_filter = true,
    .never_freeze = true,
    .open = mirror_top_open,
    .child_perm = mirror_top_child_perm,
    .getlength = mirror_top_getlength,
    .has_variable_length = true,
    .co_preadv = mirror_top_co_preadv,
    .co_pwritev = mirror_top_co_pwritev,
    .co_pwrite_zeroes = mirror_top_co_pwrite_zeroes,
    .co_pdiscard = mirror_top_co_pdiscard,
    .co_flush = mirror_top_co_flush,
    .refresh_filename = mirror_top_refresh_filename,
};

bool node_is_mirror_top(const BlockNode *bs)
{
    return bs && bs->drv == &bdrv_mirror_top;
}

BlockNode *mirror_top_insert(BlockNode *source, const char *node_name,
                             bool is_commit, GError **errp)
{
    json_t *opts = json_object();

    json_object_set_new(opts, "driver", json_string("mirror_top"));
    if (node_name) {
        json_object_set_new(opts, "node-name", json_string(node_name));
    }
    json_object_set_new(opts, "backing",
                        json_string(node_get_name(source)));
    BlockNode *filter = node_open(NULL, opts, NODE_O_RDWR, errp);
    if (!filter) {
        return NULL;
    }
    if (!node_name) {
        node_set_implicit(filter);
    }
    /* Before the filter has parents: its permissions are its own yet. */
    ((MirrorTopState *)filter->opaque)->is_commit = is_commit;
    node_drain_begin(source);
    bool ok = node_replace(source, filter, errp);
    node_drain_end(source);
    if (!ok) {
        node_unref(filter);
        return NULL;
    }
    return filter;
}

void mirror_top_set_write_hook(BlockNode *filter, MirrorTopWriteFunc *fn,
                               void *opaque)
{
    MirrorTopState *s = filter->opaque;

    s->hook = fn;
    s->hook_opaque = opaque;
}

void mirror_top_remove(BlockNode *filter)
{
    MirrorTopState *s = filter->opaque;
    BlockNode *below = s->child ? s->child->bs : NULL;

    s->hook = NULL;
    if (!below) {
        return;
    }
    node_ref(below);
    node_drain_begin(filter);
    s->stop = true;
    node_refresh_perms(filter, NULL);
    GError *err = NULL;
    if (node_replace(filter, below, &err)) {
        /*
         * Out of the graph now, even if a reference keeps the node a
         * moment longer: the node below must not keep it as a parent.
         */
        BlockChild *c = s->child;
        s->child = NULL;
        child_detach(c, NULL);
    } else {
        /* Only a frozen parent edge can refuse; leave the filter then. */
        warn_print("%s", err->message);
        g_error_free(err);
        s->stop = false;
        node_refresh_perms(filter, NULL);
    }
    node_drain_end(filter);
    node_unref(below);
}
