/*
 * The copy-before-write filter and the backup job at the library level
 * (block/drivers/copy-before-write.c, jobs/backup.c): the filter goes
 * into the source's place for its parents and back out, a write through
 * it copies the old data of its clusters first and only once, a full
 * backup copies the source as it was while a user keeps writing, and a
 * refused backup leaves the graph as it was.  The QMP side and QEMU's
 * event order are the iotests' (qmp-backup-*, qmp-cbw-filter).
 */
#include <errno.h>
#include <fcntl.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include <unistd.h>
#include <cmocka.h>

#include "strata/backend.h"
#include "strata/backup.h"
#include "strata/copy-before-write.h"
#include "strata/loop.h"
#include "support.h"

#define MiB (1024 * 1024)
#define CLUSTER (64 * 1024)
/* What the user of the source (a guest) takes. */
#define USER_PERM (BLK_PERM_CONSISTENT_READ | BLK_PERM_WRITE)

static BlockNode *open_named(const char *name, const char *p)
{
    return open_json(json_pack("{s:s, s:s, s:s}", "driver", "file",
                               "node-name", name, "filename", p));
}

static void assert_bytes(const uint8_t *data, size_t off, size_t len,
                         uint8_t byte)
{
    for (size_t i = off; i < off + len; i++) {
        if (data[i] != byte) {
            fail_msg("byte %zu is 0x%02x, not 0x%02x", i, data[i], byte);
        }
    }
}

/* The filter takes the backend, copies old data once, and gives it back. */
static void test_filter_append_drop(void **state)
{
    (void)state;
    char *sp = make_filled("s1.img", 0x11, MiB);
    char *tp = make_filled("t1.img", 0x00, MiB);
    BlockNode *s = open_named("s1", sp), *t = open_named("t1", tp);
    BlockBackend *blk = backend_on(s, USER_PERM);
    BlockCopyState *bcs = NULL;
    GError *err = NULL;

    BlockNode *cbw = cbw_append(s, t, "f1", NULL, &bcs, &err);
    assert_non_null(cbw);
    assert_non_null(bcs);
    assert_ptr_equal(blk_node(blk), cbw);
    assert_ptr_equal(node_find("f1"), cbw);

    write_pattern(blk, CLUSTER + 4096, 4096, 0x22);   /* copies cluster 1 */
    write_pattern(blk, CLUSTER, 4096, 0x33);          /* copied already */
    write_pattern(blk, 5 * CLUSTER, 512, 0x44);       /* copies cluster 5 */
    assert_int_equal(block_copy_remaining(bcs), MiB - 2 * CLUSTER);

    cbw_drop(cbw);
    assert_ptr_equal(blk_node(blk), s);
    assert_null(node_find("f1"));
    blk_unref(blk);
    node_unref(s);
    node_unref(t);

    uint8_t *td = read_file(tp, MiB), *sd = read_file(sp, MiB);
    assert_bytes(td, 0, CLUSTER, 0);
    assert_bytes(td, CLUSTER, CLUSTER, 0x11);
    assert_bytes(td, 2 * CLUSTER, 3 * CLUSTER, 0);
    assert_bytes(td, 5 * CLUSTER, CLUSTER, 0x11);
    assert_bytes(td, 6 * CLUSTER, MiB - 6 * CLUSTER, 0);
    assert_bytes(sd, CLUSTER, 4096, 0x33);
    assert_bytes(sd, CLUSTER + 4096, 4096, 0x22);
    assert_bytes(sd, 5 * CLUSTER, 512, 0x44);
    g_free(td);
    g_free(sd);
    g_free(sp);
    g_free(tp);
}

static BackupOptions full_options(void)
{
    return (BackupOptions){
        .sync = BACKUP_SYNC_FULL,
        .perf = { .max_workers = 64 },
        .on_source_error = BLOCKDEV_ON_ERROR_REPORT,
        .on_target_error = BLOCKDEV_ON_ERROR_REPORT,
    };
}

/* A refused backup leaves no filter and no job behind. */
static void test_refused(void **state)
{
    (void)state;
    char *sp = make_filled("s2.img", 0x11, MiB);
    char *tp = make_filled("t2.img", 0x00, MiB);
    char *xp = make_filled("x2.img", 0x00, MiB / 2);
    BlockNode *s = open_named("s2", sp), *t = open_named("t2", tp);
    BlockNode *x = open_named("x2", xp);
    BlockBackend *blk = backend_on(s, USER_PERM);
    BackupOptions o = full_options();
    GError *err = NULL;

    o.filter_node_name = "f2";
    assert_null(backup_job_create("j2", s, s, &o, NULL, &err));
    assert_string_equal(err->message, "Source and target cannot be the same");
    g_clear_error(&err);
    assert_null(backup_job_create("j2", s, x, &o, NULL, &err));
    assert_string_equal(err->message,
                        "Source and target image have different sizes");
    g_clear_error(&err);
    o.perf.max_chunk = 4096;
    assert_null(backup_job_create("j2", s, t, &o, NULL, &err));
    assert_string_equal(err->message, "Required max-chunk (4096) is less "
                        "than backup cluster size (65536)");
    g_clear_error(&err);
    o.perf.max_chunk = 0;
    assert_null(backup_job_create("9", s, t, &o, NULL, &err));
    assert_string_equal(err->message, "Invalid job ID '9'");
    g_clear_error(&err);

    /* Nothing half done: no filter, the backend on the source, no job. */
    assert_null(node_find("f2"));
    assert_ptr_equal(blk_node(blk), s);
    assert_null(job_find("j2"));
    assert_null(job_find("9"));
    blk_unref(blk);
    node_unref(s);
    node_unref(t);
    node_unref(x);
    g_free(sp);
    g_free(tp);
    g_free(xp);
}

/*
 * A full backup held back by its speed while a user writes: the target
 * is the source as it was at the start.
 */
static void test_full_point_in_time(void **state)
{
    (void)state;
    char *sp = make_filled("s3.img", 0x11, 4 * MiB);
    char *tp = make_filled("t3.img", 0x00, 4 * MiB);
    BlockNode *s = open_named("s3", sp), *t = open_named("t3", tp);
    BlockBackend *blk = backend_on(s, USER_PERM);
    BackupOptions o = full_options();
    GError *err = NULL;

    o.speed = 1;
    BlockJob *job = backup_job_create("j3", s, t, &o, NULL, &err);
    assert_non_null(job);
    job_start(&job->job);
    write_pattern(blk, 0, MiB, 0x22);
    write_pattern(blk, 3 * MiB, 4096, 0x23);
    assert_true(job->job.progress_current < 4 * MiB);
    assert_true(job_set_speed(&job->job, 0, &err));
    LOOP_WAIT_WHILE(job_find("j3"));
    assert_ptr_equal(blk_node(blk), s);
    blk_unref(blk);
    node_unref(s);
    node_unref(t);

    uint8_t *td = read_file(tp, 4 * MiB), *sd = read_file(sp, 4 * MiB);
    assert_bytes(td, 0, 4 * MiB, 0x11);
    assert_bytes(sd, 0, MiB, 0x22);
    assert_bytes(sd, 3 * MiB, 4096, 0x23);
    g_free(td);
    g_free(sd);
    g_free(sp);
    g_free(tp);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_filter_append_drop),
        cmocka_unit_test(test_refused),
        cmocka_unit_test(test_full_point_in_time),
    };
    return cmocka_run_group_tests(tests, test_tmpdir_setup,
                                  test_tmpdir_teardown);
}
