/*
 * The request path: alignment bouncing, read-modify-write with
 * serialisation, max_transfer splitting, zero writes and their fallback,
 * detect-zeroes, range checks, writethrough.  A memory-backed test driver
 * asserts every request it receives obeys the limits it advertised.
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

static int setup(void **state)
{
    driver_register(&bdrv_test_mem);
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
    };
    return cmocka_run_group_tests(tests, setup, NULL);
}
