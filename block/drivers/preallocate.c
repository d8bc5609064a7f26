/*
 * preallocate: a filter that grows its file ahead of writes past the end,
 * in steps of prealloc-size (default 128M) rounded up to prealloc-align
 * (default 1M), so that a growing image is extended seldom and in large,
 * contiguous pieces.  The node's length stays the length of the data
 * written; the file is cut back to it when the node is closed or loses
 * its write/resize permissions (reopen read-only).  QEMU 7.2's
 * "preallocate" filter, with its options, checks and messages.
 *
 * The state is valid only while the node holds WRITE and RESIZE on the
 * file and shares neither: then nobody else can change the file's length
 * behind its back.  Otherwise all three ends are unknown (< 0).
 */
#include <errno.h>

#include "strata/block-driver.h"

typedef struct {
    uint64_t prealloc_size;
    uint64_t prealloc_align;
} PreallocOpts;

typedef struct {
    PreallocOpts opts;
    /* End of the data: the file's length at open and every write's end. */
    int64_t data_end;
    /* Start of the preallocated tail known to read as zeroes. */
    int64_t zero_start;
    /* The file's real length (a cache of node_getlength(file)). */
    int64_t file_end;
    /*
     * A preallocation (a zero write from pa_start on) is under way: writes
     * reaching into it wait, or they could land before the zeroes and be
     * overwritten by them (QEMU makes the zero write serialising).
     */
    bool preallocating;
    int64_t pa_start;
    CoQueue pa_wait;
} PreallocState;

static bool absorb_opts(PreallocOpts *o, json_t *options, BlockNode *file,
                        GError **errp)
{
    o->prealloc_align = 1 * MiB;
    o->prealloc_size = 128 * MiB;
    if (!opts_take_size(options, "prealloc-align", &o->prealloc_align,
                        errp) ||
        !opts_take_size(options, "prealloc-size", &o->prealloc_size, errp)) {
        return false;
    }
    if (o->prealloc_align % 512) {
        error_setg(errp, "prealloc-align parameter of preallocate filter "
                   "is not aligned to 512");
        return false;
    }
    if (o->prealloc_align % file->bl.request_alignment) {
        error_setg(errp, "prealloc-align parameter of preallocate filter "
                   "is not aligned to underlying node request alignment "
                   "(%u)", file->bl.request_alignment);
        return false;
    }
    return true;
}

static int prealloc_open(BlockNode *bs, json_t *options, int flags,
                         GError **errp)
{
    PreallocState *s = bs->opaque;
    (void)flags;

    /* set when the permissions come (set_perm) */
    s->file_end = s->zero_start = s->data_end = -EINVAL;
    co_queue_init(&s->pa_wait);

    bs->file = node_open_child(bs, options, "file",
                               CHILD_ROLE_FILTERED | CHILD_ROLE_PRIMARY,
                               false, errp);
    if (!bs->file) {
        return -EINVAL;
    }
    BlockNode *file = bs->file->bs;
    if (!absorb_opts(&s->opts, options, file, errp)) {
        return -EINVAL;
    }
    bs->supported_write_flags = REQ_WRITE_UNCHANGED |
        (REQ_FUA & (file->supported_write_flags |
                    file->drv->supported_write_flags));
    bs->supported_zero_flags = REQ_WRITE_UNCHANGED |
        ((REQ_FUA | REQ_MAY_UNMAP | REQ_NO_FALLBACK) &
         (file->supported_zero_flags | file->drv->supported_zero_flags));
    return 0;
}

/* ---- Truncating outside coroutines (close, losing permissions) ---- */

typedef struct {
    BlockChild *c;
    int64_t offset;
    int ret;
} TruncCo;

static void coroutine_fn trunc_co(void *opaque)
{
    TruncCo *t = opaque;
    t->ret = child_co_truncate(t->c, t->offset, true, PREALLOC_MODE_OFF,
                               NULL);
}

static int truncate_file(BlockNode *bs, int64_t offset)
{
    TruncCo t = { bs->file, offset, 0 };
    node_co_call(bs->file->bs, trunc_co, &t);
    return t.ret;
}

static void prealloc_close(BlockNode *bs)
{
    PreallocState *s = bs->opaque;

    if (s->data_end < 0) {
        return;
    }
    if (s->file_end < 0) {
        s->file_end = node_getlength(bs->file->bs);
        if (s->file_end < 0) {
            return;
        }
    }
    if (s->data_end < s->file_end) {
        int ret = truncate_file(bs, s->data_end);
        s->file_end = ret < 0 ? ret : s->data_end;
    }
}

static int drop_preallocation(BlockNode *bs, GError **errp);

static int prealloc_reopen_prepare(ReopenState *rs, GError **errp)
{
    PreallocOpts *o = g_new0(PreallocOpts, 1);

    if (!absorb_opts(o, rs->options, rs->bs->file->bs, errp)) {
        g_free(o);
        return -EINVAL;
    }
    /*
     * QEMU cuts the file back when the new permissions are checked,
     * before the commit; here the check of a reopen still sees the old
     * ones, and the file is read-only by the time the final ones come.
     */
    if (rs->read_only) {
        int ret = drop_preallocation(rs->bs, errp);
        if (ret < 0) {
            g_free(o);
            return ret;
        }
    }
    rs->opaque = o;
    return 0;
}

static void prealloc_reopen_commit(ReopenState *rs)
{
    PreallocState *s = rs->bs->opaque;
    s->opts = *(PreallocOpts *)rs->opaque;
    g_free(rs->opaque);
    rs->opaque = NULL;
}

static void prealloc_reopen_abort(ReopenState *rs)
{
    g_free(rs->opaque);
    rs->opaque = NULL;
}

static bool can_write_resize(uint64_t perm)
{
    return (perm & BLK_PERM_WRITE) && (perm & BLK_PERM_RESIZE);
}

static bool has_prealloc_perms(BlockNode *bs)
{
    return can_write_resize(bs->file->perm);
}

/*
 * Every write comes here first.  Returns true when want_merge_zero and
 * [offset, offset + bytes) already reads as zeroes (preallocated now or
 * before), so that a zero write needs nothing more.
 */
static bool coroutine_fn handle_write(BlockNode *bs, int64_t offset,
                                      int64_t bytes, bool want_merge_zero)
{
    PreallocState *s = bs->opaque;
    int64_t end = offset + bytes;
    uint32_t file_align = bs->file->bs->bl.request_alignment;
    int64_t prealloc_align = MAX((int64_t)s->opts.prealloc_align,
                                 (int64_t)file_align);

    while (s->preallocating && end > s->pa_start) {
        co_queue_wait(&s->pa_wait);
    }
    if (!has_prealloc_perms(bs)) {
        return false;
    }
    if (s->data_end < 0) {
        s->data_end = node_getlength(bs->file->bs);
        if (s->data_end < 0) {
            return false;
        }
        if (s->file_end < 0) {
            s->file_end = s->data_end;
        }
    }
    if (end <= s->data_end) {
        return false;
    }

    /* the write goes past the data's end */
    s->data_end = end;
    if (s->zero_start < 0 || !want_merge_zero) {
        s->zero_start = end;
    }
    if (s->file_end < 0) {
        s->file_end = node_getlength(bs->file->bs);
        if (s->file_end < 0) {
            return false;
        }
    }
    if (end <= s->file_end) {
        return want_merge_zero && offset >= s->zero_start;
    }

    /* past the file's end too: preallocate, a zero write along with it */
    int64_t start = want_merge_zero ? MIN(offset, s->file_end) : s->file_end;
    int64_t prealloc_end = (int64_t)ROUND_UP(
        (uint64_t)end + s->opts.prealloc_size, (uint64_t)prealloc_align);
    s->preallocating = true;
    s->pa_start = start;
    int ret = child_co_pwrite_zeroes(bs->file, start, prealloc_end - start,
                                     REQ_NO_FALLBACK);
    s->preallocating = false;
    co_queue_restart_all(&s->pa_wait);
    if (ret < 0) {
        s->file_end = ret;
        return false;
    }
    s->file_end = prealloc_end;
    /* the file is longer now (QEMU's write path notes that by itself) */
    node_invalidate_length(bs->file->bs);
    return want_merge_zero;
}

static int coroutine_fn prealloc_co_pwrite_zeroes(BlockNode *bs,
                                                  int64_t offset,
                                                  int64_t bytes, int flags)
{
    bool want_merge_zero = !(flags & ~REQ_NO_FALLBACK);

    if (handle_write(bs, offset, bytes, want_merge_zero)) {
        return 0;
    }
    return child_co_pwrite_zeroes(bs->file, offset, bytes, flags);
}

static int coroutine_fn prealloc_co_pwritev(BlockNode *bs, int64_t offset,
                                            int64_t bytes, IOVec *qiov,
                                            size_t qiov_offset, int flags)
{
    handle_write(bs, offset, bytes, false);
    return child_co_pwritev(bs->file, offset, bytes, qiov, qiov_offset,
                            flags);
}

static int coroutine_fn prealloc_co_preadv(BlockNode *bs, int64_t offset,
                                           int64_t bytes, IOVec *qiov,
                                           size_t qiov_offset, int flags)
{
    return child_co_preadv(bs->file, offset, bytes, qiov, qiov_offset, flags);
}

static int coroutine_fn prealloc_co_pdiscard(BlockNode *bs, int64_t offset,
                                             int64_t bytes)
{
    return child_co_pdiscard(bs->file, offset, bytes);
}

static int coroutine_fn prealloc_co_truncate(BlockNode *bs, int64_t offset,
                                             bool exact, PreallocMode prealloc,
                                             GError **errp)
{
    PreallocState *s = bs->opaque;
    int ret;

    if (s->data_end >= 0 && offset > s->data_end) {
        if (s->file_end < 0) {
            s->file_end = node_getlength(bs->file->bs);
            if (s->file_end < 0) {
                error_setg(errp, "failed to get file length");
                return (int)s->file_end;
            }
        }
        if (prealloc == PREALLOC_MODE_FALLOC) {
            /* what we preallocated becomes what the user asked for */
            if (offset <= s->file_end) {
                s->data_end = offset;
                return 0;
            }
        } else if (s->file_end > s->data_end) {
            /*
             * Drop our preallocation first: a shrink with preallocation
             * would be refused, off should stay small, full should write
             * the whole range.
             */
            ret = child_co_truncate(bs->file, s->data_end, true,
                                    PREALLOC_MODE_OFF, errp);
            if (ret < 0) {
                s->file_end = ret;
                error_prefix(errp, "preallocate-filter: failed to drop "
                             "write-zero preallocation: ");
                return ret;
            }
            s->file_end = s->data_end;
        }
        s->data_end = offset;
    }

    ret = child_co_truncate(bs->file, offset, exact, prealloc, errp);
    if (ret < 0) {
        s->file_end = s->zero_start = s->data_end = ret;
        return ret;
    }
    if (has_prealloc_perms(bs)) {
        s->file_end = s->zero_start = s->data_end = offset;
    }
    return 0;
}

static int64_t prealloc_getlength(BlockNode *bs)
{
    PreallocState *s = bs->opaque;

    if (s->data_end >= 0) {
        return s->data_end;
    }
    int64_t ret = node_getlength(bs->file->bs);
    if (has_prealloc_perms(bs)) {
        s->file_end = s->zero_start = s->data_end = ret;
    }
    return ret;
}

static int prealloc_check_perm(BlockNode *bs, uint64_t perm, uint64_t shared,
                               GError **errp)
{
    PreallocState *s = bs->opaque;
    (void)shared;

    if (s->data_end >= 0 && !can_write_resize(perm)) {
        /*
         * Losing the permissions: cut the file back now, while the edge
         * still holds them (set_perm comes after the edge changed).
         */
        return drop_preallocation(bs, errp);
    }
    return 0;
}

static int drop_preallocation(BlockNode *bs, GError **errp)
{
    PreallocState *s = bs->opaque;

    if (s->data_end >= 0) {
        if (s->file_end < 0) {
            s->file_end = node_getlength(bs->file->bs);
            if (s->file_end < 0) {
                error_setg(errp, "Failed to get file length");
                return (int)s->file_end;
            }
        }
        if (s->data_end < s->file_end) {
            int ret = truncate_file(bs, s->data_end);
            if (ret < 0) {
                error_setg(errp, "Failed to drop preallocation");
                s->file_end = ret;
                return ret;
            }
            s->file_end = s->data_end;
        }
    }
    return 0;
}

static void prealloc_set_perm(BlockNode *bs, uint64_t perm, uint64_t shared)
{
    PreallocState *s = bs->opaque;
    (void)shared;

    if (can_write_resize(perm)) {
        if (s->data_end < 0) {
            s->data_end = s->file_end = s->zero_start =
                node_getlength(bs->file->bs);
        }
    } else {
        /* others may change the file now: forget what we knew */
        s->data_end = s->file_end = s->zero_start = -EINVAL;
    }
}

static void prealloc_child_perm(BlockNode *bs, BlockChild *c, unsigned role,
                                const ReopenState *rs, uint64_t perm,
                                uint64_t shared, uint64_t *nperm,
                                uint64_t *nshared)
{
    node_default_perms(bs, c, role, rs, perm, shared, nperm, nshared);
    if (can_write_resize(perm) && (*nperm & BLK_PERM_WRITE)) {
        *nperm |= BLK_PERM_WRITE | BLK_PERM_RESIZE;
        /* keep data_end, file_end and zero_start ours alone */
        *nshared &= ~(uint64_t)(BLK_PERM_WRITE | BLK_PERM_RESIZE);
    }
}

const BlockDriver bdrv_preallocate = {
    .format_name = "preallocate",
    .instance_size = sizeof(PreallocState),
    .is_filter = true,
    .open = prealloc_open,
    .close = prealloc_close,
    .getlength = prealloc_getlength,
    .has_variable_length = true,
    .reopen_prepare = prealloc_reopen_prepare,
    .reopen_commit = prealloc_reopen_commit,
    .reopen_abort = prealloc_reopen_abort,
    .co_preadv = prealloc_co_preadv,
    .co_pwritev = prealloc_co_pwritev,
    .co_pwrite_zeroes = prealloc_co_pwrite_zeroes,
    .co_pdiscard = prealloc_co_pdiscard,
    .co_truncate = prealloc_co_truncate,
    .check_perm = prealloc_check_perm,
    .set_perm = prealloc_set_perm,
    .child_perm = prealloc_child_perm,
};
