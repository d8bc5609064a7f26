/*
 * Serialising writes (REQ_SERIALISING, block/io.c) and the pre-7.0
 * fleecing recipe they make safe: a backup (or copy-before-write filter)
 * whose target is a qcow2 overlay with the source as its backing file,
 * read by a backup client while the guest writes.  A client's read of the
 * target that falls through to the source must finish before the copy of
 * a guest write lets the guest change the source (QEMU 7.2:
 * block_copy_state_new marks such copies BDRV_REQ_SERIALISING), and a
 * read that comes while that copy is being written waits for it.
 *
 * blkdebug breakpoints (read_aio, write_aio, which qcow2 signals on its
 * file) park a request where the race would hurt, so that each case is
 * the same on every run.
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
#include "strata/backup.h"
#include "strata/block-ops.h"
#include "strata/copy-range.h"
#include "strata/iov.h"
#include "strata/loop.h"
#include "support.h"

#define MiB (1024 * 1024)
#define CLUSTER (64 * 1024)

/* A request run in a coroutine of its own, through an edge or a backend. */
typedef struct Req {
    BlockChild *child;          /* or */
    BlockBackend *blk;
    bool write;
    int flags;
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
    if (r->child) {
        r->ret = r->write ? child_co_pwritev(r->child, r->offset, r->bytes,
                                             &v, 0, r->flags)
                          : child_co_preadv(r->child, r->offset, r->bytes,
                                            &v, 0, r->flags);
    } else {
        r->ret = r->write ? blk_co_pwritev(r->blk, r->offset, r->bytes, &v,
                                           r->flags)
                          : blk_co_preadv(r->blk, r->offset, r->bytes, &v,
                                          r->flags);
    }
    iovec_destroy(&v);
    r->done = true;
}

static void req_start(Req *r)
{
    co_enter(co_create(req_entry, r));
}

/*
 * Long enough for anything not held back to get through: 200 ms of the
 * loop (file I/O completes from the thread pool), however busy the
 * machine is.
 */
static void spin(void)
{
    gint64 end = g_get_monotonic_time() + 200 * 1000;

    while (g_get_monotonic_time() < end) {
        loop_iterate(false);
    }
}

static void assert_bytes(const uint8_t *data, size_t len, uint8_t byte)
{
    for (size_t i = 0; i < len; i++) {
        if (data[i] != byte) {
            fail_msg("byte %zu is 0x%02x, not 0x%02x", i, data[i], byte);
        }
    }
}

/* Park the next event of dbg at tag and wait until a request is there. */
static void park(BlockNode *dbg, const char *event, const char *tag)
{
    assert_int_equal(node_debug_breakpoint(dbg, event, tag), 0);
}

static void wait_parked(BlockNode *dbg, const char *tag, Req *r)
{
    LOOP_WAIT_WHILE(!r->done && node_debug_is_suspended(dbg, tag) != 1);
    if (r->done) {
        fail_msg("the request did not stop at breakpoint %s: %d", tag,
                 r->ret);
    }
}

static void resume(BlockNode *dbg, const char *tag, Req *r)
{
    assert_int_equal(node_debug_resume(dbg, tag), 0);
    LOOP_WAIT_WHILE(!r->done);
    assert_int_equal(r->ret, 0);
}

/* ---- One node: qcow2 q over blkdebug dbg over a file, 0x11 ---- */

typedef struct One {
    char *path;
    BlockNode *file, *dbg, *q;
    BlockBackend *blk;
    BlockChild *c;
} One;

static void one_open(One *o)
{
    /* Names of their own: a failed test leaves its nodes open. */
    static int n;
    char *name = g_strdup_printf("one%d.qcow2", ++n);
    char *fname = g_strdup_printf("one-file%d", n);
    char *dname = g_strdup_printf("one-dbg%d", n);
    char *qname = g_strdup_printf("one%d", n);

    o->path = make_qcow2(name, MiB, NULL);
    o->file = open_json(json_pack("{s:s, s:s, s:s}", "driver", "file",
                                  "node-name", fname, "filename", o->path));
    o->dbg = open_json(json_pack("{s:s, s:s, s:s}", "driver", "blkdebug",
                                 "node-name", dname, "image", fname));
    o->q = open_json(json_pack("{s:s, s:s, s:s}", "driver", "qcow2",
                               "node-name", qname, "file", dname));
    o->c = edge(&o->blk, o->q, BLK_PERM_CONSISTENT_READ | BLK_PERM_WRITE);
    write_pattern(o->blk, 0, MiB, 0x11);
    g_free(name);
    g_free(fname);
    g_free(dname);
    g_free(qname);
}

static void one_close(One *o)
{
    blk_unref(o->blk);
    node_unref(o->q);
    node_unref(o->dbg);
    node_unref(o->file);
    unlink(o->path);
    g_free(o->path);
}

/*
 * A serialising write waits for an overlapping read that was in flight
 * before it, and its neighbour cluster is not held up; a write without
 * the flag does not wait (what the flag changes).
 */
static void test_write_waits_for_earlier_read(void **state)
{
    (void)state;
    One o;
    uint8_t *rbuf = g_malloc(CLUSTER), *wbuf = g_malloc(4096);
    uint8_t *nbuf = g_malloc(4096);
    Req rd, wr, nb;

    one_open(&o);
    memset(wbuf, 0x22, 4096);
    memset(nbuf, 0x33, 4096);

    park(o.dbg, "read_aio", "R");
    rd = (Req){ .child = o.c, .offset = 0, .bytes = CLUSTER, .buf = rbuf };
    req_start(&rd);
    wait_parked(o.dbg, "R", &rd);

    /* Another part of the read's cluster: still the cluster's owner. */
    wr = (Req){ .child = o.c, .write = true, .flags = REQ_SERIALISING,
                .offset = CLUSTER - 4096, .bytes = 4096, .buf = wbuf };
    req_start(&wr);
    nb = (Req){ .child = o.c, .write = true, .flags = REQ_SERIALISING,
                .offset = CLUSTER, .bytes = 4096, .buf = nbuf };
    req_start(&nb);
    LOOP_WAIT_WHILE(!nb.done);
    assert_int_equal(nb.ret, 0);
    spin();
    assert_false(wr.done);

    resume(o.dbg, "R", &rd);
    assert_bytes(rbuf, CLUSTER, 0x11);
    LOOP_WAIT_WHILE(!wr.done);
    assert_int_equal(wr.ret, 0);
    check_pattern(o.blk, CLUSTER - 4096, 4096, 0x22);
    check_pattern(o.blk, CLUSTER, 4096, 0x33);

    /* Without the flag the same write goes past the parked read. */
    park(o.dbg, "read_aio", "R2");
    rd = (Req){ .child = o.c, .offset = 0, .bytes = CLUSTER, .buf = rbuf };
    req_start(&rd);
    wait_parked(o.dbg, "R2", &rd);
    wr = (Req){ .child = o.c, .write = true, .offset = 8192, .bytes = 4096,
                .buf = wbuf };
    req_start(&wr);
    LOOP_WAIT_WHILE(!wr.done);
    assert_int_equal(wr.ret, 0);
    resume(o.dbg, "R2", &rd);

    one_close(&o);
    g_free(rbuf);
    g_free(wbuf);
    g_free(nbuf);
}

typedef struct ZeroReq {
    BlockChild *c;
    int64_t offset, bytes;
    int ret;
    bool done;
} ZeroReq;

static void coroutine_fn zero_entry(void *opaque)
{
    ZeroReq *z = opaque;

    z->ret = child_co_pwrite_zeroes(z->c, z->offset, z->bytes,
                                    REQ_SERIALISING);
    z->done = true;
}

/*
 * A read that comes while a serialising write is in flight waits for it
 * and reads what it wrote; zero writes serialise as well.
 */
static void test_later_read_waits_for_write(void **state)
{
    (void)state;
    One o;
    uint8_t *rbuf = g_malloc(4096), *wbuf = g_malloc(CLUSTER);
    Req rd, wr;

    one_open(&o);
    memset(wbuf, 0x44, CLUSTER);
    park(o.dbg, "write_aio", "W");
    wr = (Req){ .child = o.c, .write = true, .flags = REQ_SERIALISING,
                .offset = 2 * CLUSTER, .bytes = CLUSTER, .buf = wbuf };
    req_start(&wr);
    wait_parked(o.dbg, "W", &wr);

    rd = (Req){ .child = o.c, .offset = 2 * CLUSTER + 512, .bytes = 4096,
                .buf = rbuf };
    req_start(&rd);
    spin();
    assert_false(rd.done);
    resume(o.dbg, "W", &wr);
    LOOP_WAIT_WHILE(!rd.done);
    assert_int_equal(rd.ret, 0);
    assert_bytes(rbuf, 4096, 0x44);

    /* A serialising zero write waits for a read in flight. */
    park(o.dbg, "read_aio", "R");
    rd = (Req){ .child = o.c, .offset = 0, .bytes = 4096, .buf = rbuf };
    req_start(&rd);
    wait_parked(o.dbg, "R", &rd);
    ZeroReq z = { .c = o.c, .offset = 0, .bytes = 4096 };
    co_enter(co_create(zero_entry, &z));
    spin();
    assert_false(z.done);
    resume(o.dbg, "R", &rd);
    assert_bytes(rbuf, 4096, 0x11);
    LOOP_WAIT_WHILE(!z.done);
    assert_int_equal(z.ret, 0);
    check_pattern(o.blk, 0, 4096, 0x00);

    one_close(&o);
    g_free(rbuf);
    g_free(wbuf);
}

typedef struct CopyReq {
    BlockChild *src, *dst;
    int flags;
    int ret;
    bool done;
} CopyReq;

static void coroutine_fn copy_entry(void *opaque)
{
    CopyReq *r = opaque;

    r->ret = child_co_copy_range(r->src, 0, r->dst, 0, 4096, 0, r->flags);
    r->done = true;
}

/*
 * A copy offload into the node with REQ_SERIALISING waits for a read in
 * flight there too, before its driver is asked (here it then answers
 * ENOTSUP: blkdebug cannot offload, the caller would read and write);
 * without the flag it does not wait.
 */
static void test_copy_range_waits_for_read(void **state)
{
    (void)state;
    One o;
    char *path = make_filled("copy-src.img", 0x55, 4096);
    BlockNode *file = open_file(path);
    BlockBackend *sblk;
    BlockChild *sc = edge(&sblk, file, BLK_PERM_CONSISTENT_READ);
    uint8_t *rbuf = g_malloc(4096);
    CopyReq cp;
    Req rd;

    one_open(&o);
    for (int flags = REQ_SERIALISING; flags >= 0; flags -= REQ_SERIALISING) {
        park(o.dbg, "read_aio", flags ? "R" : "R0");
        rd = (Req){ .child = o.c, .offset = 0, .bytes = 4096, .buf = rbuf };
        req_start(&rd);
        wait_parked(o.dbg, flags ? "R" : "R0", &rd);
        cp = (CopyReq){ .src = sc, .dst = o.c, .flags = flags };
        co_enter(co_create(copy_entry, &cp));
        if (flags) {
            spin();
            assert_false(cp.done);
            resume(o.dbg, "R", &rd);
            LOOP_WAIT_WHILE(!cp.done);
        } else {
            LOOP_WAIT_WHILE(!cp.done);
            resume(o.dbg, "R0", &rd);
        }
        assert_int_equal(cp.ret, -ENOTSUP);
        assert_bytes(rbuf, 4096, 0x11);
    }
    one_close(&o);
    blk_unref(sblk);
    node_unref(file);
    unlink(path);
    g_free(path);
    g_free(rbuf);
}

/* ---- The pre-7.0 fleecing recipe ---- */

/*
 * The disk: qcow2 src over blkdebug sdbg over a file, 0x11 throughout;
 * the fleecing target: qcow2 tgt over blkdebug tdbg over a file, with src
 * as its backing file and nothing allocated.  The guest writes through
 * gblk (on src: a backup job's filter takes its place; or on cbw, a
 * copy-before-write filter with tgt as target), the backup client reads
 * tgt through rblk, peek reads src.
 */
typedef struct Fleece {
    char *sp, *tp;
    BlockNode *sfile, *sdbg, *src, *tfile, *tdbg, *tgt, *cbw;
    BlockBackend *gblk, *rblk, *peek;
    BlockJob *job;
    int id, nnames;
    char *names[16];
} Fleece;

/* Node names of this fixture's own: a failed test leaves its nodes open. */
static const char *nm(Fleece *f, const char *base)
{
    g_free(f->names[f->nnames]);
    f->names[f->nnames] = g_strdup_printf("%s%d", base, f->id);
    return f->names[f->nnames++];
}

static void fleece_open(Fleece *f, bool use_job)
{
    static int n;
    GError *err = NULL;
    const char *name;

    memset(f, 0, sizeof(*f));
    f->id = ++n;
    f->sp = make_qcow2(nm(f, "src.qcow2."), MiB, NULL);
    f->tp = make_qcow2(nm(f, "tgt.qcow2."), MiB, NULL);
    name = nm(f, "sfile");
    f->sfile = open_json(json_pack("{s:s, s:s, s:s}", "driver", "file",
                                   "node-name", name, "filename", f->sp));
    f->sdbg = open_json(json_pack("{s:s, s:s, s:s}", "driver", "blkdebug",
                                  "node-name", nm(f, "sdbg"),
                                  "image", name));
    f->src = open_json(json_pack("{s:s, s:s, s:s}", "driver", "qcow2",
                                 "node-name", nm(f, "src"),
                                 "file", node_get_name(f->sdbg)));
    f->peek = backend_on(f->src, BLK_PERM_CONSISTENT_READ | BLK_PERM_WRITE);
    write_pattern(f->peek, 0, MiB, 0x11);
    blk_unref(f->peek);
    f->peek = backend_on(f->src, BLK_PERM_CONSISTENT_READ);
    name = nm(f, "tfile");
    f->tfile = open_json(json_pack("{s:s, s:s, s:s}", "driver", "file",
                                   "node-name", name, "filename", f->tp));
    f->tdbg = open_json(json_pack("{s:s, s:s, s:s}", "driver", "blkdebug",
                                  "node-name", nm(f, "tdbg"),
                                  "image", name));
    f->tgt = open_json(json_pack("{s:s, s:s, s:s, s:s}", "driver", "qcow2",
                                 "node-name", nm(f, "tgt"),
                                 "file", node_get_name(f->tdbg),
                                 "backing", node_get_name(f->src)));
    f->rblk = backend_on(f->tgt, BLK_PERM_CONSISTENT_READ);
    if (use_job) {
        BackupOptions o = {
            .sync = BACKUP_SYNC_NONE,
            .perf = { .max_workers = 64 },
            .on_source_error = BLOCKDEV_ON_ERROR_REPORT,
            .on_target_error = BLOCKDEV_ON_ERROR_REPORT,
        };

        f->gblk = backend_on(f->src,
                             BLK_PERM_CONSISTENT_READ | BLK_PERM_WRITE);
        f->job = backup_job_create(nm(f, "fleece"), f->src, f->tgt, &o,
                                   NULL, &err);
        if (!f->job) {
            fail_msg("backup: %s", err->message);
        }
        job_start(&f->job->job);
    } else {
        f->cbw = open_json(json_pack("{s:s, s:s, s:s, s:s}", "driver",
                                     "copy-before-write", "node-name",
                                     nm(f, "cbw"),
                                     "file", node_get_name(f->src),
                                     "target", node_get_name(f->tgt)));
        f->gblk = backend_on(f->cbw,
                             BLK_PERM_CONSISTENT_READ | BLK_PERM_WRITE);
    }
}

static void fleece_close(Fleece *f)
{
    if (f->job) {
        job_cancel_sync(&f->job->job, true);
    }
    blk_unref(f->gblk);
    if (f->cbw) {
        node_unref(f->cbw);
    }
    blk_unref(f->rblk);
    node_unref(f->tgt);
    node_unref(f->tdbg);
    node_unref(f->tfile);
    blk_unref(f->peek);
    node_unref(f->src);
    node_unref(f->sdbg);
    node_unref(f->sfile);
    unlink(f->sp);
    unlink(f->tp);
    g_free(f->sp);
    g_free(f->tp);
    for (int i = 0; i < f->nnames; i++) {
        g_free(f->names[i]);
    }
}

static uint8_t src_byte(Fleece *f, int64_t off)
{
    uint8_t b = 0;
    assert_int_equal(blk_pread(f->peek, off, 1, &b, 0), 0);
    return b;
}

/*
 * The race: the client's read of an uncopied cluster of tgt falls
 * through to src and is parked just before it reads src's file; the
 * guest writes into that cluster.  The write's copy reads src (the
 * breakpoint is spent) and must then wait for the client's read before
 * it writes tgt, so the guest's write cannot reach src before the
 * client has its data: the client reads the old data.  Without the wait
 * it read the guest's.
 */
static void fleece_early_read(bool use_job)
{
    Fleece f;
    uint8_t *rbuf = g_malloc(CLUSTER), *wbuf = g_malloc(4096);
    Req rd, wr;

    fleece_open(&f, use_job);
    memset(wbuf, 0x22, 4096);
    park(f.sdbg, "read_aio", "R");
    rd = (Req){ .blk = f.rblk, .offset = 0, .bytes = CLUSTER, .buf = rbuf };
    req_start(&rd);
    wait_parked(f.sdbg, "R", &rd);

    wr = (Req){ .blk = f.gblk, .write = true, .offset = 4096, .bytes = 4096,
                .buf = wbuf };
    req_start(&wr);
    spin();
    assert_false(wr.done);
    assert_int_equal(src_byte(&f, 4096), 0x11);

    resume(f.sdbg, "R", &rd);
    assert_bytes(rbuf, CLUSTER, 0x11);
    LOOP_WAIT_WHILE(!wr.done);
    assert_int_equal(wr.ret, 0);
    assert_int_equal(src_byte(&f, 4096), 0x22);
    /* The cluster is in tgt now, as it was. */
    memset(rbuf, 0, CLUSTER);
    assert_int_equal(blk_pread(f.rblk, 0, CLUSTER, rbuf, 0), 0);
    assert_bytes(rbuf, CLUSTER, 0x11);
    fleece_close(&f);
    g_free(rbuf);
    g_free(wbuf);
}

/*
 * The other order: the copy is being written to tgt (parked on tdbg)
 * when the client reads the cluster; the client waits for the copy and
 * reads the old data from tgt.
 */
static void fleece_late_read(bool use_job)
{
    Fleece f;
    uint8_t *rbuf = g_malloc(CLUSTER), *wbuf = g_malloc(4096);
    Req rd, wr;

    fleece_open(&f, use_job);
    memset(wbuf, 0x33, 4096);
    park(f.tdbg, "write_aio", "W");
    wr = (Req){ .blk = f.gblk, .write = true, .offset = 3 * CLUSTER + 512,
                .bytes = 4096, .buf = wbuf };
    req_start(&wr);
    wait_parked(f.tdbg, "W", &wr);

    rd = (Req){ .blk = f.rblk, .offset = 3 * CLUSTER, .bytes = CLUSTER,
                .buf = rbuf };
    req_start(&rd);
    spin();
    assert_false(rd.done);
    assert_int_equal(node_debug_resume(f.tdbg, "W"), 0);
    LOOP_WAIT_WHILE(!rd.done || !wr.done);
    assert_int_equal(rd.ret, 0);
    assert_int_equal(wr.ret, 0);
    assert_bytes(rbuf, CLUSTER, 0x11);
    assert_int_equal(src_byte(&f, 3 * CLUSTER + 512), 0x33);
    fleece_close(&f);
    g_free(rbuf);
    g_free(wbuf);
}

static void test_backup_early_read(void **state)
{
    (void)state;
    fleece_early_read(true);
}

static void test_backup_late_read(void **state)
{
    (void)state;
    fleece_late_read(true);
}

static void test_cbw_early_read(void **state)
{
    (void)state;
    fleece_early_read(false);
}

static void test_cbw_late_read(void **state)
{
    (void)state;
    fleece_late_read(false);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_write_waits_for_earlier_read),
        cmocka_unit_test(test_later_read_waits_for_write),
        cmocka_unit_test(test_copy_range_waits_for_read),
        cmocka_unit_test(test_backup_early_read),
        cmocka_unit_test(test_backup_late_read),
        cmocka_unit_test(test_cbw_early_read),
        cmocka_unit_test(test_cbw_late_read),
    };
    return cmocka_run_group_tests(tests, test_tmpdir_setup,
                                  test_tmpdir_teardown);
}
