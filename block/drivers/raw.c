/*
 * raw: the image is the bytes of its file, optionally a window of them
 * (offset, size).  Without a window it behaves as a filter of its file.
 *
 * When the format was probed rather than given, writes to the first sector
 * that would make the image look like another format are refused: otherwise
 * a guest could write a qcow2 header into a raw disk and, on the next probe,
 * read any host file as its backing file.
 */
#include <errno.h>
#include <string.h>
#include "strata/block-driver.h"
#include "strata/debug-event.h"

typedef struct {
    uint64_t offset;
    uint64_t size;
    bool has_size;
} RawState;

static int raw_probe(const uint8_t *buf, int buf_size, const char *filename)
{
    return 1; /* the format of last resort */
}

/* The window must lie in the file and be whole sectors (QEMU's checks). */
static int raw_check_window(const RawState *s, int64_t real, GError **errp)
{
    if (s->offset > (uint64_t)real) {
        error_setg(errp, "Offset (%" G_GUINT64_FORMAT ") cannot be greater "
                   "than size of the containing file (%" G_GINT64_FORMAT ")",
                   s->offset, real);
        return -EINVAL;
    }
    if (s->has_size && s->size > (uint64_t)real - s->offset) {
        error_setg(errp, "The sum of offset (%" G_GUINT64_FORMAT ") and size "
                   "(%" G_GUINT64_FORMAT ") has to be smaller or equal to the "
                   " actual size of the containing file (%" G_GINT64_FORMAT ")",
                   s->offset, s->size, real);
        return -EINVAL;
    }
    /* A partial sector would be rounded up, past the end of the window. */
    if (s->has_size && s->size % 512) {
        error_setg(errp, "Specified size is not multiple of 512");
        return -EINVAL;
    }
    return 0;
}

static int raw_open(BlockNode *bs, json_t *options, int flags, GError **errp)
{
    RawState *s = bs->opaque;
    s->has_size = json_object_get(options, "size") != NULL;
    if (!opts_take_size(options, "offset", &s->offset, errp) ||
        !opts_take_size(options, "size", &s->size, errp)) {
        return -EINVAL;
    }
    bool window = s->offset || s->has_size;
    unsigned role = window ? CHILD_ROLE_DATA | CHILD_ROLE_PRIMARY
                           : CHILD_ROLE_FILTERED | CHILD_ROLE_PRIMARY;
    if (!node_open_child(bs, options, "file", role, false, errp)) {
        return -EINVAL;
    }
    /*
     * FUA only where the storage has it, as in QEMU: otherwise io.c
     * emulates it with a flush of this node, whose flush events reach a
     * blkdebug child.
     */
    BlockNode *file = bs->file->bs;
    bs->supported_write_flags =
        REQ_WRITE_UNCHANGED |
        (REQ_FUA & (file->supported_write_flags |
                    file->drv->supported_write_flags));
    bs->supported_zero_flags =
        REQ_WRITE_UNCHANGED |
        ((REQ_FUA | REQ_MAY_UNMAP | REQ_NO_FALLBACK) &
         (file->supported_zero_flags | file->drv->supported_zero_flags));
    int64_t real = node_getlength(bs->file->bs);
    if (real < 0) {
        error_setg_errno(errp, (int)-real, "Could not get image size");
        return (int)real;
    }
    return raw_check_window(s, real, errp);
}

static void raw_refresh_limits(BlockNode *bs)
{
    /*
     * A probed image is checked for format headers in sector 0 on every
     * write: the check must see the whole sector, not a few bytes of it.
     */
    if (bs->probed) {
        bs->bl.request_alignment = MAX(bs->bl.request_alignment, 512);
    }
}

static int64_t raw_getlength(BlockNode *bs)
{
    RawState *s = bs->opaque;
    if (s->has_size) {
        return (int64_t)s->size;
    }
    int64_t len = node_getlength(bs->file->bs);
    if (len < 0) {
        return len;
    }
    return MAX(0, len - (int64_t)s->offset);
}

/* Keep requests inside the window; writes past a fixed size fail. */
static int raw_adjust(BlockNode *bs, int64_t *offset, int64_t bytes,
                      bool is_write)
{
    RawState *s = bs->opaque;
    if (s->has_size && (*offset > (int64_t)s->size ||
                        bytes > (int64_t)s->size - *offset)) {
        return -ENOSPC;
    }
    *offset += (int64_t)s->offset;
    return 0;
}

static int coroutine_fn raw_co_preadv(BlockNode *bs, int64_t offset,
                                      int64_t bytes, IOVec *qiov,
                                      size_t qoff, int flags)
{
    int ret = raw_adjust(bs, &offset, bytes, false);
    if (ret < 0) {
        return ret;
    }
    child_debug_event(bs->file, BLKDBG_READ_AIO);
    return child_co_preadv(bs->file, offset, bytes, qiov, qoff, flags);
}

/* A probed raw image may not turn itself into another format. */
static int coroutine_fn raw_check_first_sector(BlockNode *bs, int64_t offset,
                                               IOVec *qiov, size_t qoff,
                                               int64_t bytes)
{
    if (!bs->probed || offset >= 512) {
        return 0;
    }
    uint8_t buf[512];
    memset(buf, 0, sizeof(buf));
    /* Whatever the write leaves of the old sector is irrelevant to probing
     * headers, which all start at byte 0. */
    size_t n = MIN((size_t)bytes, sizeof(buf) - (size_t)offset);
    iov_to_buf(qiov->iov, qiov->niov, qoff, buf + offset, n);
    const char **names = driver_list();
    int ret = 0;
    for (const char **p = names; *p; p++) {
        const BlockDriver *drv = driver_find(*p);
        if (drv->probe && strcmp(drv->format_name, "raw") &&
            drv->probe(buf, sizeof(buf), NULL) > 0) {
            ret = -EPERM;
        }
    }
    g_free(names);
    return ret;
}

static int coroutine_fn raw_co_pwritev(BlockNode *bs, int64_t offset,
                                       int64_t bytes, IOVec *qiov,
                                       size_t qoff, int flags)
{
    int ret = raw_check_first_sector(bs, offset, qiov, qoff, bytes);
    if (ret < 0) {
        return ret;
    }
    ret = raw_adjust(bs, &offset, bytes, true);
    if (ret < 0) {
        return ret;
    }
    child_debug_event(bs->file, BLKDBG_WRITE_AIO);
    return child_co_pwritev(bs->file, offset, bytes, qiov, qoff, flags);
}

static int coroutine_fn raw_co_pwrite_zeroes(BlockNode *bs, int64_t offset,
                                             int64_t bytes, int flags)
{
    int ret = raw_adjust(bs, &offset, bytes, true);
    if (ret < 0) {
        return ret;
    }
    return child_co_pwrite_zeroes(bs->file, offset, bytes, flags);
}

static int coroutine_fn raw_co_pdiscard(BlockNode *bs, int64_t offset,
                                        int64_t bytes)
{
    int ret = raw_adjust(bs, &offset, bytes, true);
    if (ret < 0) {
        return ret;
    }
    return child_co_pdiscard(bs->file, offset, bytes);
}

/* Copy offload passes through, inside the window. */
static int coroutine_fn raw_co_copy_range_from(BlockNode *bs, BlockChild *src,
                                               int64_t src_off,
                                               BlockChild *dst,
                                               int64_t dst_off, int64_t bytes,
                                               int read_flags, int write_flags)
{
    int ret = raw_adjust(bs, &src_off, bytes, false);
    if (ret < 0) {
        return ret;
    }
    return child_co_copy_range_from(bs->file, src_off, dst, dst_off, bytes,
                                    read_flags, write_flags);
}

static int coroutine_fn raw_co_copy_range_to(BlockNode *bs, BlockChild *src,
                                             int64_t src_off, BlockChild *dst,
                                             int64_t dst_off, int64_t bytes,
                                             int read_flags, int write_flags)
{
    /* A probed image's first sector is checked on write: that needs data. */
    if (bs->probed && dst_off < 512) {
        return -ENOTSUP;
    }
    int ret = raw_adjust(bs, &dst_off, bytes, true);
    if (ret < 0) {
        return ret;
    }
    return child_co_copy_range_to(src, src_off, bs->file, dst_off, bytes,
                                  read_flags, write_flags);
}

static int coroutine_fn raw_co_block_status(BlockNode *bs, bool want_zero,
                                            int64_t offset, int64_t bytes,
                                            int64_t *pnum, int64_t *map,
                                            BlockNode **file)
{
    RawState *s = bs->opaque;
    *pnum = bytes;
    *file = bs->file->bs;
    *map = offset + (int64_t)s->offset;
    return BLOCK_RAW | BLOCK_OFFSET_VALID;
}

static int coroutine_fn raw_co_truncate(BlockNode *bs, int64_t offset,
                                        bool exact, PreallocMode prealloc,
                                        GError **errp)
{
    RawState *s = bs->opaque;
    if (s->has_size) {
        error_setg(errp, "Cannot resize fixed-size raw disks");
        return -ENOTSUP;
    }
    return child_co_truncate(bs->file, offset + (int64_t)s->offset, exact,
                             prealloc, errp);
}

/* As QEMU: what the storage says (a cluster size, when it is an image). */
static int raw_get_info(BlockNode *bs, BlockDriverInfo *bdi)
{
    return node_get_info(bs->file->bs, bdi);
}

static void raw_child_perm(BlockNode *bs, BlockChild *c, unsigned role,
                           const ReopenState *rs, uint64_t perm,
                           uint64_t shared, uint64_t *nperm, uint64_t *nshared)
{
    /* Raw has no metadata of its own: it needs exactly what its users need. */
    node_filter_perms(bs, c, role, rs, perm, shared, nperm, nshared);
    RawState *s = bs->opaque;
    if (s->offset || s->has_size) {
        /* Resizing the file under a fixed window would move or cut it. */
        *nshared &= ~BLK_PERM_RESIZE;
    }
}

static int raw_reopen_prepare(ReopenState *rs, GError **errp)
{
    RawState *s = rs->bs->opaque;
    RawState *n = g_new(RawState, 1);
    *n = *s;
    n->has_size = s->has_size || json_object_get(rs->options, "size");
    if (!rs->keep_old) {
        /* A whole new option set: the window is what it says. */
        n->offset = 0;
        n->size = 0;
        n->has_size = json_object_get(rs->options, "size") != NULL;
    }
    if (!opts_take_size(rs->options, "offset", &n->offset, errp) ||
        !opts_take_size(rs->options, "size", &n->size, errp)) {
        g_free(n);
        return -EINVAL;
    }
    int64_t real = node_getlength(rs->bs->file->bs);
    if (real < 0) {
        error_setg_errno(errp, (int)-real, "Could not get image size");
        g_free(n);
        return (int)real;
    }
    int ret = raw_check_window(n, real, errp);
    if (ret < 0) {
        g_free(n);
        return ret;
    }
    rs->opaque = n;
    return 0;
}

static void raw_reopen_commit(ReopenState *rs)
{
    RawState *s = rs->bs->opaque;
    *s = *(RawState *)rs->opaque;
    g_free(rs->opaque);
    rs->opaque = NULL;
    node_invalidate_length(rs->bs);
}

static void raw_reopen_abort(ReopenState *rs)
{
    g_free(rs->opaque);
    rs->opaque = NULL;
}

static int raw_create(const char *filename, json_t *options, GError **errp)
{
    /* The file holds the image: creating raw is creating the file. */
    json_incref(options);
    return image_create("file", filename, options, errp) ? 0 : -EIO;
}

static const char *const raw_create_opts[] = { "size", NULL };

/* The "size" creation option (as text past INT64_MAX: see node_amend). */
static uint64_t size_option(json_t *opts)
{
    json_t *v = json_object_get(opts, "size");

    if (json_is_integer(v)) {
        return (uint64_t)json_integer_value(v);
    }
    return json_is_string(v) ? g_ascii_strtoull(json_string_value(v), NULL, 10)
                             : 0;
}

/* Unallocated sectors still take room in a raw file: everything counts. */
static bool raw_measure(json_t *opts, BlockNode *in_bs, BlockMeasureInfo *info,
                        GError **errp)
{
    uint64_t required;

    if (in_bs) {
        int64_t len = node_getlength(in_bs);
        if (len < 0) {
            error_setg_errno(errp, (int)-len, "Unable to get image size");
            return false;
        }
        required = (uint64_t)len;
    } else {
        required = (size_option(opts) + 511) / 512 * 512;
    }
    info->required = info->fully_allocated = required;
    return true;
}

/* QEMU's raw_cancel_in_flight: the file waits, not raw. */
static void raw_cancel_in_flight(BlockNode *bs)
{
    node_cancel_in_flight(node_primary_child(bs));
}

const BlockDriver bdrv_raw = {
    .format_name = "raw",
    .instance_size = sizeof(RawState),
    .is_format = true,
    .probe = raw_probe,
    .open = raw_open,
    .refresh_limits = raw_refresh_limits,
    .create = raw_create,
    .create_opts = raw_create_opts,
    .measure = raw_measure,
    .child_perm = raw_child_perm,
    .reopen_prepare = raw_reopen_prepare,
    /* The window moves on reopen; a new option set may reset it. */
    .mutable_opts = (const char *const[]) { "offset", "size", NULL },
    .reopen_commit = raw_reopen_commit,
    .reopen_abort = raw_reopen_abort,
    .co_preadv = raw_co_preadv,
    .co_pwritev = raw_co_pwritev,
    .co_pwrite_zeroes = raw_co_pwrite_zeroes,
    .co_pdiscard = raw_co_pdiscard,
    .co_copy_range_from = raw_co_copy_range_from,
    .co_copy_range_to = raw_co_copy_range_to,
    .co_block_status = raw_co_block_status,
    .co_truncate = raw_co_truncate,
    .getlength = raw_getlength,
    .get_info = raw_get_info,
    .cancel_in_flight = raw_cancel_in_flight,
};
