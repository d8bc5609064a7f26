/*
 * The request path: alignment bouncing, read-modify-write with
 * serialisation, max_transfer splitting, zero writes and their fallback,
 * detect-zeroes, range checks, writethrough.  A memory-backed test driver
 * asserts every request it receives obeys the limits it advertised.
 * Block status (QEMU 7.2's rules) on a chain of "test-chain" nodes whose
 * allocation is drawn as a string, one character per 64 KiB.
 */
#include <errno.h>
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <string.h>
#include <cmocka.h>
#include "strata/backend.h"
#include "strata/block-driver.h"
#include "strata/loop.h"

#define MEM_SIZE (1024 * 1024)
#define ALIGN 4096
#define MAX_XFER (64 * 1024)

typedef struct {
    uint8_t *data;
    int reads, writes, zero_writes, flushes;
    bool zeroes_supported;
    int64_t delay_ns;
} MemState;

static MemState *last_mem;

static int mem_open(BlockNode *bs, json_t *options, int flags, GError **errp)
{
    MemState *s = bs->opaque;
    s->data = g_malloc0(MEM_SIZE);
    bool zeroes = false;
    int64_t delay = 0;
    if (!opts_take_bool(options, "zeroes", &zeroes, errp) ||
        !opts_take_int(options, "delay", &delay, errp)) {
        return -EINVAL;
    }
    s->zeroes_supported = zeroes;
    s->delay_ns = delay;
    last_mem = s;
    return 0;
}

static void mem_close(BlockNode *bs)
{
    MemState *s = bs->opaque;
    g_free(s->data);
}

static void mem_refresh_limits(BlockNode *bs)
{
    bs->bl.request_alignment = ALIGN;
    bs->bl.min_mem_alignment = 512;
    bs->bl.opt_mem_alignment = ALIGN;
    bs->bl.max_transfer = MAX_XFER;
}

static void check_request(BlockNode *bs, int64_t offset, int64_t bytes,
                          IOVec *qiov, size_t qoff)
{
    assert_int_equal(offset % ALIGN, 0);
    assert_int_equal(bytes % ALIGN, 0);
    assert_true(bytes <= MAX_XFER);
    assert_true(offset + bytes <= MEM_SIZE);
    if (qiov) {
        for (int i = 0; i < qiov->niov; i++) {
            assert_int_equal((uintptr_t)qiov->iov[i].iov_base % 512, 0);
        }
    }
}

static int coroutine_fn mem_preadv(BlockNode *bs, int64_t offset,
                                   int64_t bytes, IOVec *qiov, size_t qoff,
                                   int flags)
{
    MemState *s = bs->opaque;
    check_request(bs, offset, bytes, qiov, qoff);
    if (s->delay_ns) {
        co_sleep_ns(s->delay_ns);
    }
    iov_from_buf(qiov->iov, qiov->niov, qoff, s->data + offset, (size_t)bytes);
    s->reads++;
    return 0;
}

static int coroutine_fn mem_pwritev(BlockNode *bs, int64_t offset,
                                    int64_t bytes, IOVec *qiov, size_t qoff,
                                    int flags)
{
    MemState *s = bs->opaque;
    check_request(bs, offset, bytes, qiov, qoff);
    uint8_t *tmp = g_malloc((size_t)bytes);
    iov_to_buf(qiov->iov, qiov->niov, qoff, tmp, (size_t)bytes);
    if (s->delay_ns) {
        co_sleep_ns(s->delay_ns); /* widen the window for overlapping RMW */
    }
    memcpy(s->data + offset, tmp, (size_t)bytes);
    g_free(tmp);
    s->writes++;
    return 0;
}

static int coroutine_fn mem_pwrite_zeroes(BlockNode *bs, int64_t offset,
                                          int64_t bytes, int flags)
{
    MemState *s = bs->opaque;
    if (!s->zeroes_supported) {
        return -ENOTSUP;
    }
    assert_int_equal(offset % ALIGN, 0);
    assert_int_equal(bytes % ALIGN, 0);
    memset(s->data + offset, 0, (size_t)bytes);
    s->zero_writes++;
    return 0;
}

static int coroutine_fn mem_flush(BlockNode *bs)
{
    ((MemState *)bs->opaque)->flushes++;
    return 0;
}

static int64_t mem_getlength(BlockNode *bs)
{
    return MEM_SIZE;
}

static const BlockDriver bdrv_test_mem = {
    .format_name = "test-mem",
    .protocol_name = "test-mem",
    .instance_size = sizeof(MemState),
    .open = mem_open,
    .close = mem_close,
    .refresh_limits = mem_refresh_limits,
    .co_preadv = mem_preadv,
    .co_pwritev = mem_pwritev,
    .co_pwrite_zeroes = mem_pwrite_zeroes,
    .co_flush_to_disk = mem_flush,
    .getlength = mem_getlength,
};

static BlockBackend *open_mem(const char *extra_key, const char *extra_val)
{
    GError *err = NULL;
    json_t *o = json_pack("{s:s}", "driver", "test-mem");
    if (extra_key) {
        json_object_set_new(o, extra_key, json_string(extra_val));
    }
    BlockBackend *blk = blk_new_open(NULL, o, NODE_O_RDWR, &err);
    if (!blk) {
        fail_msg("%s", err->message);
    }
    return blk;
}

static void fill(uint8_t *buf, size_t len, uint8_t seed)
{
    for (size_t i = 0; i < len; i++) {
        buf[i] = (uint8_t)(seed + i * 7);
    }
}

static void test_unaligned_roundtrip(void **state)
{
    BlockBackend *blk = open_mem(NULL, NULL);
    MemState *s = last_mem;
    static const struct { int64_t off, len; } cases[] = {
        { 1, 1 }, { 511, 2 }, { 4095, 2 }, { 100, 10000 }, { 4096, 100 },
        { 8000, 200000 }, { 0, 4096 }, { 12345, 65536 * 3 + 17 },
    };
    for (size_t i = 0; i < G_N_ELEMENTS(cases); i++) {
        int64_t off = cases[i].off, len = cases[i].len;
        uint8_t *w = g_malloc((size_t)len + 1), *r = g_malloc((size_t)len + 1);
        /* +1: an odd buffer address forces the memory bounce too */
        fill(w + 1, (size_t)len, (uint8_t)i);
        uint8_t before = s->data[off > 0 ? off - 1 : 0];
        uint8_t after = s->data[off + len];
        assert_int_equal(blk_pwrite(blk, off, len, w + 1, 0), 0);
        assert_memory_equal(s->data + off, w + 1, (size_t)len);
        /* Neighbouring bytes survive the read-modify-write. */
        if (off > 0) {
            assert_int_equal(s->data[off - 1], before);
        }
        assert_int_equal(s->data[off + len], after);
        assert_int_equal(blk_pread(blk, off, len, r + 1, 0), 0);
        assert_memory_equal(r + 1, w + 1, (size_t)len);
        g_free(w);
        g_free(r);
    }
    blk_unref(blk);
}

static void test_split_max_transfer(void **state)
{
    BlockBackend *blk = open_mem(NULL, NULL);
    MemState *s = last_mem;
    uint8_t *buf = aligned_alloc_buf(ALIGN, 256 * 1024);
    fill(buf, 256 * 1024, 3);
    s->writes = 0;
    assert_int_equal(blk_pwrite(blk, 0, 256 * 1024, buf, 0), 0);
    assert_int_equal(s->writes, 4);
    aligned_free(buf);
    blk_unref(blk);
}

typedef struct {
    BlockBackend *blk;
    int64_t off;
    int64_t len;
    uint8_t val;
    int ret;
    int *done;
} WriteArg;

static void overlap_cb(void *opaque, int ret)
{
    WriteArg *a = opaque;
    a->ret = ret;
    (*a->done)++;
}

static void test_rmw_serialised(void **state)
{
    /* Two sub-block writes to the same 4k block, in flight together: without
     * serialisation the second RMW would read stale data and undo the first. */
    BlockBackend *blk = open_mem("delay", "2000000");
    MemState *s = last_mem;
    int done = 0;
    uint8_t a[512], b[512];
    memset(a, 0xaa, sizeof(a));
    memset(b, 0xbb, sizeof(b));
    IOVec qa, qb;
    iovec_init_buf(&qa, a, sizeof(a));
    iovec_init_buf(&qb, b, sizeof(b));
    WriteArg wa = { blk, 0, 512, 0xaa, -1, &done };
    WriteArg wb = { blk, 1024, 512, 0xbb, -1, &done };
    blk_aio_pwritev(blk, 0, &qa, 0, overlap_cb, &wa);
    blk_aio_pwritev(blk, 1024, &qb, 0, overlap_cb, &wb);
    LOOP_WAIT_WHILE(done < 2);
    assert_int_equal(wa.ret, 0);
    assert_int_equal(wb.ret, 0);
    for (int i = 0; i < 512; i++) {
        assert_int_equal(s->data[i], 0xaa);
        assert_int_equal(s->data[1024 + i], 0xbb);
    }
    iovec_destroy(&qa);
    iovec_destroy(&qb);
    blk_unref(blk);
}

static void test_rmw_waits_for_aligned_write(void **state)
{
    /* An aligned write in flight, then a sub-block write into the same
     * block: the RMW must wait, or it writes back stale bytes over it. */
    BlockBackend *blk = open_mem("delay", "2000000");
    MemState *s = last_mem;
    int done = 0;
    uint8_t *a = aligned_alloc_buf(ALIGN, ALIGN);
    uint8_t b[10];
    memset(a, 0xaa, ALIGN);
    memset(b, 0xbb, sizeof(b));
    IOVec qa, qb;
    iovec_init_buf(&qa, a, ALIGN);
    iovec_init_buf(&qb, b, sizeof(b));
    WriteArg wa = { blk, 0, ALIGN, 0xaa, -1, &done };
    WriteArg wb = { blk, 100, 10, 0xbb, -1, &done };
    blk_aio_pwritev(blk, 0, &qa, 0, overlap_cb, &wa);
    blk_aio_pwritev(blk, 100, &qb, 0, overlap_cb, &wb);
    LOOP_WAIT_WHILE(done < 2);
    assert_int_equal(s->data[0], 0xaa);
    assert_int_equal(s->data[99], 0xaa);
    assert_int_equal(s->data[100], 0xbb);
    assert_int_equal(s->data[110], 0xaa);
    iovec_destroy(&qa);
    iovec_destroy(&qb);
    aligned_free(a);
    blk_unref(blk);
}

static void test_zeroes(void **state)
{
    /* Without driver support: zero buffers are written instead. */
    BlockBackend *blk = open_mem(NULL, NULL);
    MemState *s = last_mem;
    memset(s->data, 0x55, MEM_SIZE);
    assert_int_equal(blk_pwrite_zeroes(blk, 100, 20000, 0), 0);
    for (int i = 0; i < 20000; i++) {
        assert_int_equal(s->data[100 + i], 0);
    }
    assert_int_equal(s->data[99], 0x55);
    assert_int_equal(s->data[20100], 0x55);
    assert_int_equal(s->zero_writes, 0);
    /* NO_FALLBACK refuses instead. */
    assert_int_equal(blk_pwrite_zeroes(blk, 0, 8192, REQ_NO_FALLBACK), -ENOTSUP);
    blk_unref(blk);

    /* With support: the aligned middle goes to the driver. */
    blk = open_mem("zeroes", "on");
    s = last_mem;
    memset(s->data, 0x55, MEM_SIZE);
    assert_int_equal(blk_pwrite_zeroes(blk, 100, 20000, 0), 0);
    assert_int_equal(s->zero_writes, 1);
    for (int i = 0; i < 20000; i++) {
        assert_int_equal(s->data[100 + i], 0);
    }
    assert_int_equal(s->data[20100], 0x55);
    blk_unref(blk);
}

static void test_detect_zeroes(void **state)
{
    BlockBackend *blk = open_mem("zeroes", "on");
    MemState *s = last_mem;
    blk_unref(blk);
    GError *err = NULL;
    json_t *o = json_pack("{s:s, s:s, s:s}", "driver", "test-mem", "zeroes",
                          "on", "detect-zeroes", "on");
    blk = blk_new_open(NULL, o, NODE_O_RDWR, &err);
    assert_non_null(blk);
    s = last_mem;
    uint8_t *zero = aligned_alloc_buf(ALIGN, 8192);
    memset(zero, 0, 8192);
    s->writes = 0;
    assert_int_equal(blk_pwrite(blk, 0, 8192, zero, 0), 0);
    assert_int_equal(s->writes, 0);
    assert_int_equal(s->zero_writes, 1);
    aligned_free(zero);
    blk_unref(blk);

    /* detect-zeroes=unmap needs discard=unmap. */
    o = json_pack("{s:s, s:s}", "driver", "test-mem", "detect-zeroes", "unmap");
    assert_null(blk_new_open(NULL, o, NODE_O_RDWR, &err));
    assert_non_null(strstr(err->message, "discard operation to unmap"));
    g_clear_error(&err);
}

static void test_range_and_readonly(void **state)
{
    BlockBackend *blk = open_mem(NULL, NULL);
    uint8_t buf[512];
    assert_int_equal(blk_pread(blk, MEM_SIZE - 256, 512, buf, 0), -EIO);
    assert_int_equal(blk_pread(blk, MEM_SIZE, 0, buf, 0), 0);
    assert_int_equal(blk_pread(blk, -1, 1, buf, 0), -EIO);
    assert_int_equal(blk_pwrite(blk, MEM_SIZE + 1, 1, buf, 0), -EIO);
    blk_unref(blk);

    GError *err = NULL;
    blk = blk_new_open(NULL, json_pack("{s:s}", "driver", "test-mem"), 0, &err);
    assert_non_null(blk);
    /* A read-only backend has no write permission on its edge. */
    assert_int_equal(blk_pwrite(blk, 0, 512, buf, 0), -EPERM);
    blk_unref(blk);
}

static void test_writethrough(void **state)
{
    BlockBackend *blk = open_mem(NULL, NULL);
    MemState *s = last_mem;
    uint8_t *buf = aligned_alloc_buf(ALIGN, ALIGN);
    memset(buf, 1, ALIGN);
    assert_int_equal(blk_pwrite(blk, 0, ALIGN, buf, 0), 0);
    assert_int_equal(s->flushes, 0);
    blk_set_enable_write_cache(blk, false);
    assert_int_equal(blk_pwrite(blk, 0, ALIGN, buf, 0), 0);
    assert_int_equal(s->flushes, 1);
    assert_int_equal(blk_flush(blk), 0);
    assert_int_equal(s->flushes, 2);
    /* Zero writes in writethrough mode reach the disk too. */
    assert_int_equal(blk_pwrite_zeroes(blk, 0, 2 * ALIGN, 0), 0);
    assert_int_equal(s->flushes, 3);
    aligned_free(buf);
    blk_unref(blk);
}

/* ---- Block status ---- */

#define UNIT 65536

/*
 * A format with backing files whose allocation is a string, one character
 * per UNIT: 'D' data, 'Z' zeroes, '.' unallocated, 'R' data that the file
 * child may know to be zeroes (BLOCK_RECURSE).  "size" may cut the last
 * unit short; "align" is the request alignment.
 */
typedef struct {
    char *map;
    int64_t size;
    int64_t align;
    int64_t last_offset, last_bytes;   /* the last question asked */
} ChainState;

static int chain_open(BlockNode *bs, json_t *options, int flags,
                      GError **errp)
{
    ChainState *s = bs->opaque;
    s->size = -1;
    s->align = 1;
    if (!opts_take_str(options, "map", &s->map, errp) ||
        !opts_take_int(options, "size", &s->size, errp) ||
        !opts_take_int(options, "align", &s->align, errp)) {
        return -EINVAL;
    }
    if (!s->map) {
        s->map = g_strdup("");
    }
    if (s->size < 0) {
        s->size = (int64_t)strlen(s->map) * UNIT;
    }
    if (!node_open_child(bs, options, "file",
                         CHILD_ROLE_DATA | CHILD_ROLE_PRIMARY, true, errp) &&
        json_object_get(options, "file")) {
        return -EINVAL;
    }
    return 0;
}

static void chain_close(BlockNode *bs)
{
    g_free(((ChainState *)bs->opaque)->map);
}

static void chain_refresh_limits(BlockNode *bs)
{
    bs->bl.request_alignment = (uint32_t)((ChainState *)bs->opaque)->align;
}

static int64_t chain_getlength(BlockNode *bs)
{
    return ((ChainState *)bs->opaque)->size;
}

static int coroutine_fn chain_block_status(BlockNode *bs, bool want_zero,
                                           int64_t offset, int64_t bytes,
                                           int64_t *pnum, int64_t *map,
                                           BlockNode **file)
{
    ChainState *s = bs->opaque;
    int64_t unit = offset / UNIT, end = unit;
    char c = s->map[unit];

    s->last_offset = offset;
    s->last_bytes = bytes;
    while (s->map[end] == c) {
        end++;
    }
    *pnum = MIN(end * UNIT - offset, bytes);
    *map = offset;
    *file = bs->file ? child_node(bs->file) : bs;
    switch (c) {
    case 'D':
        return BLOCK_DATA | BLOCK_OFFSET_VALID;
    case 'Z':
        return BLOCK_ZERO | BLOCK_OFFSET_VALID;
    case 'R':
        return BLOCK_DATA | BLOCK_OFFSET_VALID | BLOCK_RECURSE;
    default:
        return 0;
    }
}

static const BlockDriver bdrv_test_chain = {
    .format_name = "test-chain",
    .instance_size = sizeof(ChainState),
    .supports_backing = true,
    .open = chain_open,
    .close = chain_close,
    .refresh_limits = chain_refresh_limits,
    .getlength = chain_getlength,
    .co_block_status = chain_block_status,
};

typedef struct {
    BlockNode *bs, *base;
    bool above, include_base, want_zero;
    int64_t offset, bytes, pnum, map;
    BlockNode *file;
    int depth, ret;
} StatusCall;

static void coroutine_fn status_co(void *opaque)
{
    StatusCall *c = opaque;
    if (c->above) {
        c->ret = node_co_block_status_above(c->bs, c->base, c->include_base,
                                            c->want_zero, c->offset,
                                            c->bytes, &c->pnum, &c->map,
                                            &c->file, &c->depth);
    } else {
        c->ret = node_co_block_status(c->bs, c->want_zero, c->offset,
                                      c->bytes, &c->pnum, &c->map, &c->file);
    }
}

/* One node's status; *pnum, *map and *file as the core returns them. */
static int status(BlockNode *bs, bool want_zero, int64_t offset,
                  int64_t bytes, int64_t *pnum)
{
    StatusCall c = { .bs = bs, .want_zero = want_zero, .offset = offset,
                     .bytes = bytes };
    co_run_sync(status_co, &c);
    *pnum = c.pnum;
    return c.ret;
}

static StatusCall status_above(BlockNode *bs, BlockNode *base,
                               bool include_base, bool want_zero,
                               int64_t offset, int64_t bytes)
{
    StatusCall c = { .bs = bs, .base = base, .above = true,
                     .include_base = include_base, .want_zero = want_zero,
                     .offset = offset, .bytes = bytes };
    co_run_sync(status_co, &c);
    return c;
}

static BlockBackend *open_json(const char *text)
{
    GError *err = NULL;
    json_error_t jerr;
    json_t *o = json_loads(text, 0, &jerr);
    BlockBackend *blk;

    if (!o) {
        fail_msg("bad test JSON: %s", jerr.text);
    }
    blk = blk_new_open(NULL, o, 0, &err);
    if (!blk) {
        fail_msg("%s", err->message);
    }
    return blk;
}

#define ZA (BLOCK_ZERO | BLOCK_ALLOCATED)
#define DA (BLOCK_DATA | BLOCK_ALLOCATED)
#define OV BLOCK_OFFSET_VALID

static void test_status_no_backing(void **state)
{
    /* Unallocated ranges of a node without backing file read as zeroes,
     * but the node does not allocate them. */
    BlockBackend *blk = open_json("{\"driver\": \"test-chain\", "
                                  "\"map\": \"DD..Z\"}");
    BlockNode *bs = blk_node(blk);
    int64_t pnum;

    assert_int_equal(status(bs, true, 0, 5 * UNIT, &pnum), DA | OV);
    assert_int_equal(pnum, 2 * UNIT);
    assert_int_equal(status(bs, false, 2 * UNIT, 3 * UNIT, &pnum),
                     BLOCK_ZERO);
    assert_int_equal(pnum, 2 * UNIT);
    assert_int_equal(status(bs, true, 4 * UNIT, UNIT, &pnum),
                     ZA | OV | BLOCK_EOF);
    assert_int_equal(pnum, UNIT);
    /* At and past the end: nothing, EOF. */
    assert_int_equal(status(bs, true, 5 * UNIT, UNIT, &pnum), BLOCK_EOF);
    assert_int_equal(pnum, 0);
    assert_int_equal(status(bs, true, 0, 0, &pnum), 0);
    assert_int_equal(status(bs, true, -1, 1, &pnum), -EINVAL);
    blk_unref(blk);
}

static void test_status_short_backing(void **state)
{
    /* Overlay of 4 units over a backing file of 2: unallocated ranges past
     * the backing file's end read as zeroes when zeroes are wanted. */
    BlockBackend *blk = open_json(
        "{\"driver\": \"test-chain\", \"map\": \"D...\", "
        " \"backing\": {\"driver\": \"test-chain\", \"map\": \"DD\"}}");
    BlockNode *bs = blk_node(blk);
    int64_t pnum;

    assert_int_equal(status(bs, true, UNIT, UNIT, &pnum), 0);
    assert_int_equal(pnum, UNIT);
    assert_int_equal(status(bs, true, 2 * UNIT, 2 * UNIT, &pnum),
                     BLOCK_ZERO | BLOCK_EOF);
    assert_int_equal(pnum, 2 * UNIT);
    /* Allocation questions do not look at the backing file's length. */
    assert_int_equal(status(bs, false, 2 * UNIT, 2 * UNIT, &pnum), BLOCK_EOF);
    assert_int_equal(pnum, 2 * UNIT);
    blk_unref(blk);
}

static void test_status_above(void **state)
{
    /* top (6 units) -> mid (3 units) -> base (5 units). */
    BlockBackend *blk = open_json(
        "{\"driver\": \"test-chain\", \"map\": \"D.....\", "
        " \"backing\": {\"driver\": \"test-chain\", \"map\": \".D.\", "
        "  \"backing\": {\"driver\": \"test-chain\", \"map\": \"ZZZZD\"}}}");
    BlockNode *top = blk_node(blk);
    BlockNode *mid = child_node(top->backing);
    BlockNode *base = child_node(mid->backing);
    StatusCall c;

    /* Allocated in the top: depth 1. */
    c = status_above(top, NULL, false, true, 0, 6 * UNIT);
    assert_int_equal(c.ret, DA | OV);
    assert_int_equal(c.pnum, UNIT);
    assert_int_equal(c.depth, 1);
    assert_ptr_equal(c.file, top);
    /* Unallocated in top and mid, zeroes in base: pnum never grows past
     * what the upper layers said (mid's unit 1 is data). */
    c = status_above(top, NULL, false, true, UNIT, 5 * UNIT);
    assert_int_equal(c.ret, DA | OV);
    assert_int_equal(c.depth, 2);
    assert_ptr_equal(c.file, mid);
    assert_int_equal(c.pnum, UNIT);
    c = status_above(top, NULL, false, true, 2 * UNIT, 4 * UNIT);
    assert_int_equal(c.ret, ZA | OV);
    assert_int_equal(c.depth, 3);
    assert_int_equal(c.pnum, UNIT);
    assert_ptr_equal(c.file, base);
    /* Past mid's end: zeroes "allocated" at mid, for the whole range the
     * top left open, and EOF because that is the top's end. */
    c = status_above(top, NULL, false, false, 3 * UNIT, 3 * UNIT);
    assert_int_equal(c.ret, ZA | BLOCK_EOF);
    assert_int_equal(c.pnum, 3 * UNIT);
    assert_int_equal(c.depth, 2);
    assert_ptr_equal(c.file, mid);
    /* The base's EOF is not the top's. */
    c = status_above(mid, NULL, false, true, 2 * UNIT, UNIT);
    assert_int_equal(c.ret, ZA | OV | BLOCK_EOF);
    c = status_above(top, NULL, false, true, 2 * UNIT, UNIT);
    assert_int_equal(c.ret, ZA | OV);
    /* Down to mid, excluding it: the top's own answer. */
    c = status_above(top, mid, false, true, UNIT, 5 * UNIT);
    assert_int_equal(c.ret, BLOCK_EOF);
    assert_int_equal(c.pnum, 5 * UNIT);
    assert_int_equal(c.depth, 1);
    /* Including mid: mid's unit 1. */
    c = status_above(top, mid, true, true, UNIT, 5 * UNIT);
    assert_int_equal(c.ret, DA | OV);
    assert_int_equal(c.depth, 2);
    /* Including mid, at mid's unallocated last unit: mid's answer (it has
     * a backing file, so not zeroes), not the base's; as in QEMU, the EOF
     * of an unallocated base stays in the answer. */
    c = status_above(top, mid, true, false, 2 * UNIT, UNIT);
    assert_int_equal(c.ret, BLOCK_EOF);
    assert_int_equal(c.depth, 2);
    /* bs == base and not included: nothing asked. */
    c = status_above(top, top, false, true, 0, UNIT);
    assert_int_equal(c.ret, 0);
    assert_int_equal(c.depth, 0);
    assert_int_equal(c.pnum, UNIT);
    blk_unref(blk);
}

typedef struct {
    BlockNode *top, *base;
    bool include_base;
    int64_t offset, bytes, pnum;
    int ret;
} AllocCall;

static void coroutine_fn alloc_co(void *opaque)
{
    AllocCall *a = opaque;
    if (a->base || a->include_base) {
        a->ret = node_co_is_allocated_above(a->top, a->base, a->include_base,
                                            a->offset, a->bytes, &a->pnum);
    } else {
        a->ret = node_co_is_allocated(a->top, a->offset, a->bytes, &a->pnum);
    }
}

static void test_is_allocated(void **state)
{
    BlockBackend *blk = open_json(
        "{\"driver\": \"test-chain\", \"map\": \"D...\", "
        " \"backing\": {\"driver\": \"test-chain\", \"map\": \".D\"}}");
    BlockNode *top = blk_node(blk);
    BlockNode *base = child_node(top->backing);
    AllocCall a = { .top = top, .offset = UNIT, .bytes = 3 * UNIT };

    co_run_sync(alloc_co, &a);
    assert_int_equal(a.ret, 0);
    assert_int_equal(a.pnum, 3 * UNIT);
    a = (AllocCall) { .top = top, .base = base, .include_base = true,
                      .offset = UNIT, .bytes = 3 * UNIT };
    co_run_sync(alloc_co, &a);
    assert_int_equal(a.ret, 1);
    assert_int_equal(a.pnum, UNIT);
    a.base = base;
    a.include_base = false;
    co_run_sync(alloc_co, &a);
    assert_int_equal(a.ret, 0);
    assert_int_equal(a.pnum, 3 * UNIT);
    /* Past the base's end, the whole chain reads zeroes held there. */
    a = (AllocCall) { .top = top, .base = NULL, .include_base = true,
                      .offset = 2 * UNIT, .bytes = 2 * UNIT };
    co_run_sync(alloc_co, &a);
    assert_int_equal(a.ret, 1);
    assert_int_equal(a.pnum, 2 * UNIT);
    blk_unref(blk);
}

static void test_status_alignment(void **state)
{
    /* The driver is asked for whole aligned blocks; the answer is cut back
     * to the question, the mapping moved along. */
    BlockBackend *blk = open_json("{\"driver\": \"test-chain\", "
                                  "\"map\": \"DZ\", \"align\": 4096}");
    BlockNode *bs = blk_node(blk);
    ChainState *s = bs->opaque;
    StatusCall c = { .bs = bs, .want_zero = true, .offset = 1000,
                     .bytes = 5000 };

    co_run_sync(status_co, &c);
    assert_int_equal(s->last_offset, 0);
    assert_int_equal(s->last_bytes, 8192);
    assert_int_equal(c.ret, DA | OV);
    assert_int_equal(c.pnum, 5000);
    assert_int_equal(c.map, 1000);
    c = (StatusCall) { .bs = bs, .want_zero = true, .offset = UNIT - 100,
                       .bytes = UNIT + 100 };
    co_run_sync(status_co, &c);
    assert_int_equal(c.ret, DA | OV);
    assert_int_equal(c.pnum, 100);
    blk_unref(blk);
}

static void test_status_recurse(void **state)
{
    /* Data the file child knows to be zeroes is zeroes.  A zero range that
     * reaches the file's end covers everything past it too; a file with
     * data or zeroes before its end limits the answer to that extent. */
    BlockBackend *blk = open_json(
        "{\"driver\": \"test-chain\", \"map\": \"RRRR\", "
        " \"file\": {\"driver\": \"null-co\", \"size\": 131072, "
        "            \"read-zeroes\": true}}");
    BlockNode *bs = blk_node(blk);
    int64_t pnum;

    assert_int_equal(status(bs, true, 0, 4 * UNIT, &pnum),
                     DA | OV | BLOCK_ZERO | BLOCK_EOF);
    assert_int_equal(pnum, 4 * UNIT);
    assert_int_equal(status(bs, true, 2 * UNIT, UNIT, &pnum),
                     DA | OV | BLOCK_ZERO);
    assert_int_equal(pnum, UNIT);
    /* Without want_zero nobody asks the file. */
    assert_int_equal(status(bs, false, 0, 4 * UNIT, &pnum),
                     DA | OV | BLOCK_EOF);
    blk_unref(blk);

    blk = open_json(
        "{\"driver\": \"test-chain\", \"map\": \"RRRR\", "
        " \"file\": {\"driver\": \"test-chain\", \"map\": \"ZDDDD\"}}");
    bs = blk_node(blk);
    assert_int_equal(status(bs, true, 0, 4 * UNIT, &pnum),
                     DA | OV | BLOCK_ZERO);
    assert_int_equal(pnum, UNIT);
    assert_int_equal(status(bs, true, UNIT, 3 * UNIT, &pnum),
                     DA | OV | BLOCK_EOF);
    assert_int_equal(pnum, 3 * UNIT);
    blk_unref(blk);

    /* A raw window ends before the data: its end is not the file's. */
    blk = open_json(
        "{\"driver\": \"test-chain\", \"map\": \"RR\", "
        " \"file\": {\"driver\": \"raw\", \"size\": 65536, \"file\": "
        "   {\"driver\": \"null-co\", \"size\": 131072}}}");
    bs = blk_node(blk);
    assert_int_equal(status(bs, true, 0, 2 * UNIT, &pnum), DA | OV);
    assert_int_equal(pnum, UNIT);
    blk_unref(blk);
}

static void test_status_raw_delegation(void **state)
{
    /* raw hands the question to its file, at the file's offset; the end of
     * the file is not the end of a raw window. */
    BlockBackend *blk = open_json(
        "{\"driver\": \"raw\", \"offset\": 4096, \"size\": 8192, \"file\": "
        " {\"driver\": \"null-co\", \"size\": 16384, \"read-zeroes\": true}}");
    BlockNode *bs = blk_node(blk);
    StatusCall c = { .bs = bs, .want_zero = true, .offset = 0,
                     .bytes = 8192 };

    co_run_sync(status_co, &c);
    assert_int_equal(c.ret, ZA | OV | BLOCK_EOF);
    assert_int_equal(c.pnum, 8192);
    assert_int_equal(c.map, 4096);
    assert_ptr_equal(c.file, child_node(bs->file));
    blk_unref(blk);
}

static int setup(void **state)
{
    driver_register(&bdrv_test_mem);
    driver_register(&bdrv_test_chain);
    return 0;
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_unaligned_roundtrip),
        cmocka_unit_test(test_split_max_transfer),
        cmocka_unit_test(test_rmw_serialised),
        cmocka_unit_test(test_rmw_waits_for_aligned_write),
        cmocka_unit_test(test_zeroes),
        cmocka_unit_test(test_detect_zeroes),
        cmocka_unit_test(test_range_and_readonly),
        cmocka_unit_test(test_writethrough),
        cmocka_unit_test(test_status_no_backing),
        cmocka_unit_test(test_status_short_backing),
        cmocka_unit_test(test_status_above),
        cmocka_unit_test(test_is_allocated),
        cmocka_unit_test(test_status_alignment),
        cmocka_unit_test(test_status_recurse),
        cmocka_unit_test(test_status_raw_delegation),
    };
    return cmocka_run_group_tests(tests, setup, NULL);
}
