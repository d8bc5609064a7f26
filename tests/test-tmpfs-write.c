/*
 * Writes to a file on tmpfs (block/drivers/file.c): up to 64 KiB they
 * are done in the calling thread, at most four between two polls of its
 * loop; past that budget, and above 64 KiB, they go through the engine
 * and the coroutine yields.  Seen from the coroutine: how many of its
 * writes had completed when it first gave the thread back.  While a block
 * job is busy (copying) every write keeps the engine; a job that waits
 * (a fleecing checkpoint's sync=none backup) changes nothing.  (The guest's
 * writes during fleecing, docs/performance.md, issue 13.)
 */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/vfs.h>
#include <unistd.h>
#include <linux/magic.h>
#include <cmocka.h>

#include "strata/backend.h"
#include "strata/iov.h"
#include "strata/job.h"
#include "strata/loop.h"
#include "support.h"

#define KiB 1024

typedef struct Writes {
    BlockBackend *blk;
    int n;              /* writes to make, one after the other */
    int64_t size;       /* bytes each, at n * size apart */
    uint8_t byte;
    int done;           /* completed so far */
    int ret;
    bool finished;
} Writes;

static void coroutine_fn writes_entry(void *opaque)
{
    Writes *w = opaque;
    uint8_t *buf = g_malloc(w->size);

    memset(buf, w->byte, w->size);
    for (int i = 0; i < w->n && w->ret == 0; i++) {
        IOVec v;
        iovec_init_buf(&v, buf, (size_t)w->size);
        w->ret = blk_co_pwritev(w->blk, i * w->size, w->size, &v, 0);
        iovec_destroy(&v);
        w->done++;
    }
    g_free(buf);
    w->finished = true;
}

/* Start the writes; returns how many were done when the coroutine first
 * yielded (or ended), then lets them finish. */
static int writes_before_yield(Writes *w)
{
    int before;

    co_enter(co_create(writes_entry, w));
    before = w->done;
    LOOP_WAIT_WHILE(!w->finished);
    assert_int_equal(w->ret, 0);
    assert_int_equal(w->done, w->n);
    return before;
}

/* Until the loop has polled: a budget of its own for what follows. */
static void next_poll(void)
{
    uint64_t p = loop_poll_count();

    while (loop_poll_count() == p) {
        loop_iterate(false);
    }
}

static char *shm_file(size_t size)
{
    struct statfs sf;
    char *path = g_strdup("/dev/shm/strata-test-tmpfs-write-XXXXXX");
    int fd;

    if (statfs("/dev/shm", &sf) != 0 || sf.f_type != TMPFS_MAGIC) {
        g_free(path);
        return NULL;
    }
    fd = mkstemp(path);
    assert_true(fd >= 0);
    assert_int_equal(ftruncate(fd, (off_t)size), 0);
    close(fd);
    return path;
}

static void test_tmpfs_writes_inline(void **state)
{
    (void)state;
    char *path = shm_file(4 * 1024 * KiB);
    if (!path) {
        skip();
    }
    BlockNode *bs = open_json(json_pack("{s:s, s:s, s:s}", "driver", "file",
                                        "node-name", "f", "filename", path));
    BlockBackend *blk = backend_on(bs, BLK_PERM_CONSISTENT_READ |
                                       BLK_PERM_WRITE);
    uint8_t *buf = g_malloc(384 * KiB);

    /* Six 64 KiB writes: four in this thread, then the engine's. */
    next_poll();
    Writes w = { .blk = blk, .n = 6, .size = 64 * KiB, .byte = 0x5a };
    assert_int_equal(writes_before_yield(&w), 4);
    assert_int_equal(blk_pread(blk, 0, 384 * KiB, buf, 0), 0);
    for (int i = 0; i < 384 * KiB; i++) {
        assert_int_equal(buf[i], 0x5a);
    }

    /* Each poll gives a new budget: 4 KiB guest-sized writes too. */
    next_poll();
    w = (Writes){ .blk = blk, .n = 3, .size = 4 * KiB, .byte = 0x5b };
    assert_int_equal(writes_before_yield(&w), 3);

    /* Above 64 KiB: the engine, the coroutine yields at once. */
    next_poll();
    w = (Writes){ .blk = blk, .n = 1, .size = 128 * KiB, .byte = 0x5c };
    assert_int_equal(writes_before_yield(&w), 0);
    assert_int_equal(blk_pread(blk, 0, 128 * KiB, buf, 0), 0);
    for (int i = 0; i < 128 * KiB; i++) {
        assert_int_equal(buf[i], 0x5c);
    }

    g_free(buf);
    blk_unref(blk);
    node_unref(bs);
    unlink(path);
    g_free(path);
}

/* ---- Jobs ---- */

typedef struct CopyJob {
    Job common;
    BlockBackend *blk;
    bool wait;          /* yield until cancelled, write nothing */
    int done;           /* writes completed */
} CopyJob;

static int coroutine_fn copy_run(Job *job, GError **errp)
{
    CopyJob *s = (CopyJob *)job;
    uint8_t buf[4096];

    (void)errp;
    while (s->wait && !job_is_cancelled(job)) {
        job_yield(job);
    }
    memset(buf, 0x5e, sizeof(buf));
    for (int i = 0; i < 3 && !s->wait; i++) {
        IOVec v;
        iovec_init_buf(&v, buf, sizeof(buf));
        assert_int_equal(blk_co_pwritev(s->blk, i * 4096, 4096, &v, 0), 0);
        iovec_destroy(&v);
        s->done++;
    }
    return 0;
}

static const JobDriver copy_driver = {
    .instance_size = sizeof(CopyJob),
    .job_type = JOB_TYPE_BACKUP,
    .run = copy_run,
};

static CopyJob *start_job(BlockBackend *blk, bool wait)
{
    GError *err = NULL;
    CopyJob *s = job_create(wait ? "waits" : "copies", &copy_driver, NULL,
                            JOB_MANUAL_DISMISS, NULL, NULL, &err);
    assert_non_null(s);
    s->blk = blk;
    s->wait = wait;
    job_ref(&s->common);
    job_start(&s->common);
    return s;
}

static void end_job(CopyJob *s)
{
    GError *err = NULL;

    LOOP_WAIT_WHILE(!job_is_completed(&s->common));
    run_ready();
    assert_true(job_dismiss(&s->common, &err));
    job_unref(&s->common);
}

static void test_tmpfs_writes_jobs(void **state)
{
    (void)state;
    char *path = shm_file(1024 * KiB);
    if (!path) {
        skip();
    }
    BlockNode *bs = open_json(json_pack("{s:s, s:s, s:s}", "driver", "file",
                                        "node-name", "f", "filename", path));
    BlockBackend *blk = backend_on(bs, BLK_PERM_CONSISTENT_READ |
                                       BLK_PERM_WRITE);

    /*
     * A busy job's writes keep the engine: job_start() runs the job up
     * to its first wait, which is its first write.
     */
    next_poll();
    CopyJob *c = start_job(blk, false);
    assert_int_equal(c->done, 0);
    end_job(c);

    /* A job that waits leaves the others' writes inline. */
    CopyJob *w = start_job(blk, true);
    run_ready();
    assert_false(w->common.busy);
    next_poll();
    Writes wr = { .blk = blk, .n = 2, .size = 4 * KiB, .byte = 0x5f };
    assert_int_equal(writes_before_yield(&wr), 2);
    GError *err = NULL;
    assert_true(job_user_cancel(&w->common, true, &err));
    end_job(w);

    blk_unref(blk);
    node_unref(bs);
    unlink(path);
    g_free(path);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_tmpfs_writes_inline),
        cmocka_unit_test(test_tmpfs_writes_jobs),
    };
    return cmocka_run_group_tests(tests, test_tmpdir_setup,
                                  test_tmpdir_teardown);
}
