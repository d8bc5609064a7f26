/*
 * Fleecing at the library level: the copy-before-write filter's snapshot
 * API through a snapshot-access node (block/drivers/snapshot-access.c).
 * What the iotests (qmp-fleecing-*) cannot time: a snapshot read that
 * reads the source holds off a guest write to its range until it has
 * its data (the write's copy goes first, the write after), and reads
 * that come after the copy go to the target.  Also block status from
 * the right child, discard, and refused writes.
 */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include <unistd.h>
#include <cmocka.h>

#include "strata/backend.h"
#include "strata/block-ops.h"
#include "strata/copy-before-write.h"
#include "strata/iov.h"
#include "strata/loop.h"
#include "support.h"

#define MiB (1024 * 1024)
#define CLUSTER (64 * 1024)

typedef struct Fix {
    char *sp, *tp;
    BlockNode *s, *dbg, *q, *t, *cbw, *acc;
    BlockBackend *guest, *reader, *peek;
} Fix;

/*
 * The source: qcow2 q over blkdebug dbg over file s (qcow2 signals the
 * read_aio/write_aio events blkdebug stops at), 0x11 throughout; the
 * target: file t (zeroes); the filter cbw over q, snapshot-access acc
 * over cbw; the guest writes through cbw, the reader reads acc, peek
 * reads q.
 */
static void fix_open(Fix *f)
{
    GError *err = NULL;
    uint8_t *buf = g_malloc(MiB);

    f->sp = test_path("s.qcow2");
    if (!image_create("qcow2", f->sp, json_pack("{s:i}", "size", MiB),
                      &err)) {
        fail_msg("create failed: %s", err->message);
    }
    f->tp = make_filled("t.img", 0x00, MiB);
    f->s = open_json(json_pack("{s:s, s:s, s:s}", "driver", "file",
                               "node-name", "s", "filename", f->sp));
    f->dbg = open_json(json_pack("{s:s, s:s, s:s}", "driver", "blkdebug",
                                 "node-name", "dbg", "image", "s"));
    f->q = open_json(json_pack("{s:s, s:s, s:s}", "driver", "qcow2",
                               "node-name", "q", "file", "dbg"));
    f->peek = backend_on(f->q, BLK_PERM_CONSISTENT_READ | BLK_PERM_WRITE);
    memset(buf, 0x11, MiB);
    assert_int_equal(blk_pwrite(f->peek, 0, MiB, buf, 0), 0);
    g_free(buf);
    blk_unref(f->peek);
    f->peek = backend_on(f->q, BLK_PERM_CONSISTENT_READ);
    f->t = open_json(json_pack("{s:s, s:s, s:s}", "driver", "file",
                               "node-name", "t", "filename", f->tp));
    f->cbw = open_json(json_pack("{s:s, s:s, s:s, s:s}", "driver",
                                 "copy-before-write", "node-name", "cbw",
                                 "file", "q", "target", "t"));
    f->guest = backend_on(f->cbw, BLK_PERM_CONSISTENT_READ | BLK_PERM_WRITE);
    f->acc = open_json(json_pack("{s:s, s:s, s:s, s:s}", "driver",
                                 "snapshot-access", "node-name", "acc",
                                 "file", "cbw", "discard", "unmap"));
    f->reader = backend_on(f->acc,
                           BLK_PERM_CONSISTENT_READ | BLK_PERM_WRITE);
}

static void fix_close(Fix *f)
{
    blk_unref(f->reader);
    node_unref(f->acc);
    blk_unref(f->guest);
    node_unref(f->cbw);
    node_unref(f->t);
    blk_unref(f->peek);
    node_unref(f->q);
    node_unref(f->dbg);
    node_unref(f->s);
    unlink(f->sp);
    unlink(f->tp);
    g_free(f->sp);
    g_free(f->tp);
}

typedef struct Req {
    BlockBackend *blk;
    bool write;
    int64_t offset, bytes;
    uint8_t *buf;
    int ret;
    bool done;
} Req;

static void coroutine_fn req_entry(void *opaque)
{
    Req *r = opaque;
    IOVec v;

    iovec_init_buf(&v, r->buf, (size_t)r->bytes);
    r->ret = r->write ? blk_co_pwritev(r->blk, r->offset, r->bytes, &v, 0)
                      : blk_co_preadv(r->blk, r->offset, r->bytes, &v, 0);
    iovec_destroy(&v);
    r->done = true;
}

static void assert_bytes(const uint8_t *data, size_t len, uint8_t byte)
{
    for (size_t i = 0; i < len; i++) {
        if (data[i] != byte) {
            fail_msg("byte %zu is 0x%02x, not 0x%02x", i, data[i], byte);
        }
    }
}

static uint8_t target_byte(Fix *f, int64_t off)
{
    uint8_t b = 0;
    FILE *fp = fopen(f->tp, "rb");
    assert_non_null(fp);
    assert_int_equal(fseek(fp, (long)off, SEEK_SET), 0);
    assert_int_equal(fread(&b, 1, 1, fp), 1);
    fclose(fp);
    return b;
}

static void source_byte_is(Fix *f, int64_t off, uint8_t byte)
{
    uint8_t b = 0;
    assert_int_equal(blk_pread(f->peek, off, 1, &b, 0), 0);
    assert_int_equal(b, byte);
}

/* A snapshot read of the source holds a guest write to its range back. */
static void test_frozen_read_holds_write(void **state)
{
    (void)state;
    Fix f;
    uint8_t *rbuf = g_malloc(CLUSTER), *wbuf = g_malloc(4096);
    Req rd = { 0 }, wr = { 0 };

    fix_open(&f);
    assert_int_equal(node_debug_breakpoint(f.dbg, "read_aio", "A"), 0);
    rd = (Req){ .blk = f.reader, .offset = 0, .bytes = CLUSTER,
                .buf = rbuf };
    co_enter(co_create(req_entry, &rd));
    LOOP_WAIT_WHILE(!rd.done && node_debug_is_suspended(f.dbg, "A") != 1);
    if (rd.done) {
        fail_msg("the snapshot read did not stop at the breakpoint: %d", rd.ret);
    }
    assert_false(rd.done);

    memset(wbuf, 0x22, 4096);
    assert_int_equal(node_debug_breakpoint(f.dbg, "write_aio", "W"), 0);
    wr = (Req){ .blk = f.guest, .write = true, .offset = 4096,
                .bytes = 4096, .buf = wbuf };
    co_enter(co_create(req_entry, &wr));
    /*
     * Its copy (a read of the source, a write to the target) goes on;
     * once it is in the target, the write itself would reach dbg next
     * (and stop at W) unless it waits for the frozen read.
     */
    LOOP_WAIT_WHILE(target_byte(&f, 0) != 0x11);
    for (int i = 0; i < 1000; i++) {
        loop_iterate(false);
    }
    assert_int_equal(node_debug_is_suspended(f.dbg, "W"), 0);
    assert_false(wr.done);
    source_byte_is(&f, 4096, 0x11);

    assert_int_equal(node_debug_resume(f.dbg, "A"), 0);
    LOOP_WAIT_WHILE(!rd.done);
    assert_int_equal(rd.ret, 0);
    assert_bytes(rbuf, CLUSTER, 0x11);
    LOOP_WAIT_WHILE(node_debug_is_suspended(f.dbg, "W") != 1);
    assert_int_equal(node_debug_resume(f.dbg, "W"), 0);
    LOOP_WAIT_WHILE(!wr.done);
    assert_int_equal(wr.ret, 0);
    source_byte_is(&f, 4096, 0x22);

    /* Now from the target: the old data still. */
    memset(rbuf, 0, CLUSTER);
    assert_int_equal(blk_pread(f.reader, 0, CLUSTER, rbuf, 0), 0);
    assert_bytes(rbuf, CLUSTER, 0x11);

    /*
     * A read across copied and uncopied runs takes each from its place
     * (qsd 7.2 reads a run that starts copied and ends inside the
     * request from the source: docs/qmp.md, Fleecing).
     */
    uint8_t *big = g_malloc(6 * CLUSTER), zero[4096] = { 0 };
    assert_int_equal(blk_pwrite(f.guest, 2 * CLUSTER, 4096, zero, 0), 0);
    assert_int_equal(blk_pwrite_zeroes(f.guest, 3 * CLUSTER, CLUSTER, 0),
                     0);
    assert_int_equal(blk_pread(f.reader, 0, 6 * CLUSTER, big, 0), 0);
    assert_bytes(big, 6 * CLUSTER, 0x11);
    assert_int_equal(blk_pread(f.reader, 2 * CLUSTER, 3 * CLUSTER, big, 0),
                     0);
    assert_bytes(big, 3 * CLUSTER, 0x11);
    g_free(big);
    fix_close(&f);
    g_free(rbuf);
    g_free(wbuf);
}

/* Block status from the target where copied, discard, refused writes. */
static void test_status_discard_writes(void **state)
{
    (void)state;
    Fix f;
    uint8_t *buf = g_malloc(CLUSTER);
    int64_t pnum = 0, map = 0;
    BlockNode *file = NULL;
    int ret;

    fix_open(&f);
    memset(buf, 0x33, 4096);
    assert_int_equal(blk_pwrite(f.guest, 2 * CLUSTER, 4096, buf, 0), 0);

    ret = node_block_status(f.acc, true, 0, 4 * CLUSTER, &pnum, &map,
                            &file);
    assert_true(ret >= 0 && (ret & BLOCK_DATA));
    assert_int_equal(pnum, 2 * CLUSTER);
    assert_ptr_not_equal(file, f.t);
    ret = node_block_status(f.acc, true, 2 * CLUSTER, 2 * CLUSTER, &pnum,
                            &map, &file);
    assert_true(ret >= 0 && (ret & BLOCK_DATA) && (ret & BLOCK_ALLOCATED));
    assert_int_equal(pnum, CLUSTER);
    assert_ptr_equal(file, f.t);

    /* Partial clusters are kept; whole ones go. */
    assert_int_equal(blk_pdiscard(f.reader, 4096, 4096), 0);
    assert_int_equal(blk_pread(f.reader, 0, CLUSTER, buf, 0), 0);
    assert_int_equal(blk_pdiscard(f.reader, 0, 3 * CLUSTER), 0);
    assert_int_equal(blk_pread(f.reader, 0, 512, buf, 0), -EACCES);
    assert_int_equal(blk_pread(f.reader, 2 * CLUSTER, 512, buf, 0),
                     -EACCES);
    assert_int_equal(node_block_status(f.acc, true, 0, CLUSTER, &pnum, NULL,
                                       NULL), -EACCES);
    assert_int_equal(blk_pread(f.reader, 3 * CLUSTER, CLUSTER, buf, 0), 0);
    assert_bytes(buf, CLUSTER, 0x11);

    /* A discarded cluster is not copied any more. */
    memset(buf, 0x44, 4096);
    assert_int_equal(blk_pwrite(f.guest, 0, 4096, buf, 0), 0);
    assert_int_equal(target_byte(&f, 0), 0);

    assert_int_equal(blk_pwrite(f.reader, 3 * CLUSTER, 4096, buf, 0),
                     -ENOTSUP);
    fix_close(&f);
    g_free(buf);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_frozen_read_holds_write),
        cmocka_unit_test(test_status_discard_writes),
    };
    return cmocka_run_group_tests(tests, test_tmpdir_setup,
                                  test_tmpdir_teardown);
}
