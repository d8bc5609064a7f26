/*
 * null-co: a node of a given size that discards writes and, with
 * read-zeroes=on, reads zeroes (otherwise reads leave the buffer alone,
 * which is what makes it useful for measuring the block layer itself).
 */
#include <errno.h>
#include <string.h>
#include "strata/block-driver.h"

typedef struct {
    uint64_t size;
    bool read_zeroes;
    int64_t latency_ns;
} NullState;

/* The one filename each variant accepts: "null-co://" or "null-aio://". */
static const char *null_filename(BlockNode *bs)
{
    return bs->drv->protocol_name[5] == 'c' ? "null-co://" : "null-aio://";
}

static bool null_parse_filename(const char *filename, json_t *options,
                                GError **errp)
{
    const char *want = g_str_has_prefix(filename, "null-co") ? "null-co://"
                                                             : "null-aio://";
    if (strcmp(filename, want) != 0) {
        error_setg(errp, "The only allowed filename for this driver is '%s'",
                   want);
        return false;
    }
    return true;
}

static int null_open(BlockNode *bs, json_t *options, int flags, GError **errp)
{
    NullState *s = bs->opaque;
    s->size = 1ULL << 30;
    char *fname = NULL;
    if (!opts_take_size(options, "size", &s->size, errp) ||
        !opts_take_bool(options, "read-zeroes", &s->read_zeroes, errp) ||
        !opts_take_int(options, "latency-ns", &s->latency_ns, errp) ||
        !opts_take_str(options, "filename", &fname, errp)) {
        g_free(fname);
        return -EINVAL;
    }
    if (fname && strcmp(fname, null_filename(bs))) {
        error_setg(errp, "The only allowed filename for this driver is '%s'",
                   null_filename(bs));
        g_free(fname);
        return -EINVAL;
    }
    g_free(fname);
    if (s->latency_ns < 0) {
        error_setg(errp, "latency-ns is invalid");
        return -EINVAL;
    }
    g_strlcpy(bs->filename, null_filename(bs), sizeof(bs->filename));
    return 0;
}

static int coroutine_fn null_delay(NullState *s)
{
    if (s->latency_ns) {
        co_sleep_ns(s->latency_ns);
    }
    return 0;
}

static int coroutine_fn null_co_preadv(BlockNode *bs, int64_t offset,
                                       int64_t bytes, IOVec *qiov, size_t qoff,
                                       int flags)
{
    NullState *s = bs->opaque;
    if (s->read_zeroes) {
        iov_memset(qiov->iov, qiov->niov, qoff, 0, (size_t)bytes);
    }
    return null_delay(s);
}

static int coroutine_fn null_co_pwritev(BlockNode *bs, int64_t offset,
                                        int64_t bytes, IOVec *qiov,
                                        size_t qoff, int flags)
{
    return null_delay(bs->opaque);
}

static int coroutine_fn null_co_pwrite_zeroes(BlockNode *bs, int64_t offset,
                                              int64_t bytes, int flags)
{
    return null_delay(bs->opaque);
}

static int coroutine_fn null_co_flush(BlockNode *bs)
{
    return null_delay(bs->opaque);
}

static int coroutine_fn null_co_block_status(BlockNode *bs, bool want_zero,
                                             int64_t offset, int64_t bytes,
                                             int64_t *pnum, int64_t *map,
                                             BlockNode **file)
{
    NullState *s = bs->opaque;
    *pnum = bytes;
    *map = offset;
    *file = bs;
    return BLOCK_OFFSET_VALID | (s->read_zeroes ? BLOCK_ZERO : 0);
}

static int64_t null_getlength(BlockNode *bs)
{
    return (int64_t)((NullState *)bs->opaque)->size;
}

/* Nothing is stored anywhere: QEMU reports a disk size of 0 B. */
static int64_t null_get_allocated_file_size(BlockNode *bs)
{
    (void)bs;
    return 0;
}

/*
 * Nothing of the node's own can change; the generic code refuses options
 * that differ from the node's, so accepting is all there is to do.
 */
static int null_reopen_prepare(ReopenState *rs, GError **errp)
{
    (void)rs;
    (void)errp;
    return 0;
}

#define NULL_DRIVER_CALLBACKS                                                 \
    .instance_size = sizeof(NullState),                                       \
    .parse_filename = null_parse_filename,                                    \
    .open = null_open,                                                        \
    .reopen_prepare = null_reopen_prepare,                                    \
    .co_preadv = null_co_preadv,                                              \
    .co_pwritev = null_co_pwritev,                                            \
    .co_pwrite_zeroes = null_co_pwrite_zeroes,                                \
    .co_flush_to_disk = null_co_flush,                                        \
    .co_block_status = null_co_block_status,                                  \
    .getlength = null_getlength,                                              \
    .get_allocated_file_size = null_get_allocated_file_size,                  \
    .supported_write_flags = REQ_FUA,                                         \
    .supported_zero_flags = REQ_FUA | REQ_MAY_UNMAP

/*
 * QEMU has two null drivers that differ only in how they complete requests
 * internally; with coroutines there is nothing to tell apart, but scripts
 * name both.
 */
const BlockDriver bdrv_null_co = {
    .format_name = "null-co",
    .protocol_name = "null-co",
    NULL_DRIVER_CALLBACKS,
};

const BlockDriver bdrv_null_aio = {
    .format_name = "null-aio",
    .protocol_name = "null-aio",
    NULL_DRIVER_CALLBACKS,
};
