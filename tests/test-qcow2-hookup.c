/*
 * A new qcow2 refcount block costs no sync while the image's lock is
 * held (block/qcow2/qcow2-refcount.c, "Hookups"), counted, not timed:
 *
 *   allocating writes that make the file outgrow several refcount blocks
 *   flush the file not once (a stream's top outgrowing its first block
 *   used to hold every guest write for the 1-2 s fdatasync of all the
 *   data written so far), two of them in flight at once both finish;
 *   the table in the file learns of the blocks at the next flush;
 *
 *   crash consistency: the file as it stands before that flush (what a
 *   crash leaves if every write issued reached the disk) and after it
 *   have no error for qemu-img check (leaked clusters, as after any
 *   crash mid-allocation); closed, the image is clean and the data reads
 *   back.
 */
#include <endian.h>
#include <errno.h>
#include <fcntl.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>
#include <cmocka.h>
#include <glib.h>

#include "strata/backend.h"
#include "strata/block-driver.h"
#include "strata/coroutine.h"
#include "strata/loop.h"
#include "strata/units.h"

#define SIZE ((int64_t)(32 * MiB))
#define CLUSTER 4096
/* 16-bit refcounts: a block counts CLUSTER / 2 clusters, 8 MiB of file. */
#define BLOCK_SPAN ((int64_t)CLUSTER / 2 * CLUSTER)
/* One L2 table maps CLUSTER / 8 clusters, 2 MiB of the disk. */
#define L2_SPAN ((int64_t)CLUSTER / 8 * CLUSTER)
#define STEP ((int64_t)(64 * KiB))

static char *tmpdir;

static BlockBackend *open_img(const char *p)
{
    GError *err = NULL;
    BlockBackend *blk = blk_new_open(NULL, json_pack("{s:s, s:{s:s, s:s}}",
                                                     "driver", "qcow2",
                                                     "file", "driver", "file",
                                                     "filename", p),
                                     NODE_O_RDWR, &err);
    if (!blk) {
        fail_msg("open: %s", err->message);
    }
    return blk;
}

static BlockNode *file_of(BlockBackend *blk)
{
    return blk_node(blk)->file->bs;
}

typedef struct Req {
    BlockBackend *blk;
    int64_t offset, bytes;
    int ret;
    bool done;
} Req;

static int pattern_at(int64_t offset)
{
    return (int)((offset / STEP) % 251) + 1;
}

static void coroutine_fn write_co(void *opaque)
{
    Req *r = opaque;
    uint8_t *buf = g_malloc(r->bytes);
    IOVec q;

    memset(buf, pattern_at(r->offset), r->bytes);
    iovec_init_buf(&q, buf, r->bytes);
    r->ret = blk_co_pwritev(r->blk, r->offset, r->bytes, &q, 0);
    iovec_destroy(&q);
    g_free(buf);
    r->done = true;
}

static void start(Req *r, BlockBackend *blk, int64_t offset, int64_t bytes)
{
    *r = (Req){ .blk = blk, .offset = offset, .bytes = bytes,
                .ret = -EINPROGRESS };
    co_enter(co_create(write_co, r));
}

/* Refcount table entries in use, as the file has them now. */
static int reftable_entries_on_disk(const char *p)
{
    int fd = open(p, O_RDONLY);
    uint8_t h[60];
    int n = 0;

    assert_true(fd >= 0);
    assert_int_equal(pread(fd, h, sizeof(h), 0), (ssize_t)sizeof(h));
    uint64_t off;
    uint32_t clusters;
    memcpy(&off, h + 48, 8);
    memcpy(&clusters, h + 56, 4);
    off = be64toh(off);
    clusters = be32toh(clusters);
    size_t len = (size_t)clusters * CLUSTER;
    uint64_t *t = g_malloc(len);
    assert_int_equal(pread(fd, t, len, (off_t)off), (ssize_t)len);
    for (size_t i = 0; i < len / 8; i++) {
        n += t[i] != 0;
    }
    g_free(t);
    close(fd);
    return n;
}

/* Clean, or (leaks_ok: a crash's image) leaked clusters at most: qemu-img
 * check exits 3 for leaks, 2 for corruption. */
static void qemu_img_check(const char *p, bool leaks_ok)
{
    const char *argv[] = { "qemu-img", "check", "-q", p, NULL };
    g_autofree char *out = NULL, *err_out = NULL;
    GError *err = NULL;
    int status;

    if (!g_spawn_sync(NULL, (char **)argv, NULL, G_SPAWN_SEARCH_PATH, NULL,
                      NULL, &out, &err_out, &status, &err)) {
        fail_msg("qemu-img: %s", err->message);
    }
    if (!(WIFEXITED(status) && (WEXITSTATUS(status) == 0 ||
                                (leaks_ok && WEXITSTATUS(status) == 3)))) {
        fail_msg("qemu-img check %s: %s%s", p, out, err_out);
    }
}

static void copy_file(const char *from, const char *to)
{
    g_autofree gchar *data = NULL;
    gsize n = 0;

    assert_true(g_file_get_contents(from, &data, &n, NULL));
    assert_true(g_file_set_contents(to, data, (gssize)n, NULL));
}

static void test_growth_without_sync(void **state)
{
    g_autofree char *p = g_build_filename(tmpdir, "t.qcow2", NULL);
    g_autofree char *crash = g_build_filename(tmpdir, "crash.qcow2", NULL);
    GError *err = NULL;
    Req a, b;

    if (!image_create("qcow2", p, json_pack("{s:I, s:I}", "size",
                                            (json_int_t)SIZE, "cluster_size",
                                            (json_int_t)CLUSTER), &err)) {
        fail_msg("create: %s", err->message);
    }
    BlockBackend *blk = open_img(p);
    BlockNode *file = file_of(blk);

    /* Every L2 table first (each new one is synced before L1 names it),
     * so that what follows allocates data clusters and refcount blocks. */
    for (int64_t off = 0; off < SIZE; off += L2_SPAN) {
        start(&a, blk, off, STEP);
        LOOP_WAIT_WHILE(!a.done);
        assert_int_equal(a.ret, 0);
    }
    assert_int_equal(blk_flush(blk), 0);
    assert_true(node_getlength(file) < BLOCK_SPAN);
    assert_int_equal(reftable_entries_on_disk(p), 1);

    /* Fill the disk, two writes in flight at a time. */
    uint64_t flushes = file->flush_ops;
    for (int64_t off = 0; off < SIZE; off += 2 * STEP) {
        start(&a, blk, off, STEP);
        start(&b, blk, off + STEP, STEP);
        LOOP_WAIT_WHILE(!a.done || !b.done);
        assert_int_equal(a.ret, 0);
        assert_int_equal(b.ret, 0);
    }
    /* The file now spans four refcount blocks or more: three or more were
     * made, and not one sync was asked for (each used to cost one, under
     * the lock). */
    assert_true(node_getlength(file) > 3 * BLOCK_SPAN);
    assert_int_equal(file->flush_ops - flushes, 0);
    /* The table in the file does not name them yet... */
    assert_int_equal(reftable_entries_on_disk(p), 1);

    /* ...and a crash now leaves an image that relies on none of them. */
    copy_file(p, crash);
    qemu_img_check(crash, true);

    /* The next flush writes them, after the blocks are on disk. */
    assert_int_equal(blk_flush(blk), 0);
    assert_int_equal(reftable_entries_on_disk(p),
                     (node_getlength(file) + BLOCK_SPAN - 1) / BLOCK_SPAN);
    copy_file(p, crash);
    qemu_img_check(crash, true);
    blk_unref(blk);
    qemu_img_check(p, false);

    /* And the data is there. */
    blk = open_img(p);
    uint8_t *buf = g_malloc(STEP);
    for (int64_t off = 0; off < SIZE; off += STEP) {
        assert_int_equal(blk_pread(blk, off, STEP, buf, 0), 0);
        for (int64_t i = 0; i < STEP; i++) {
            if (buf[i] != pattern_at(off)) {
                fail_msg("byte %lld: 0x%02x", (long long)(off + i), buf[i]);
            }
        }
    }
    g_free(buf);
    blk_unref(blk);
    unlink(p);
    unlink(crash);
}

static int setup(void **state)
{
    GError *err = NULL;
    tmpdir = g_dir_make_tmp("test-qcow2-hookup-XXXXXX", &err);
    assert_non_null(tmpdir);
    return 0;
}

static int teardown(void **state)
{
    rmdir(tmpdir);
    g_free(tmpdir);
    return 0;
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_growth_without_sync),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
