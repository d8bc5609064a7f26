/*
 * The unit tests' shared fixtures (see support.h).
 */
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <cmocka.h>
#include <glib.h>

#include "strata/block-ops.h"
#include "strata/loop.h"
#include "support.h"

char *test_tmpdir;
static char *saved_cwd;

/* ---- The folder ---- */

int test_tmpdir_setup(void **state)
{
    /* After the program, so that a folder left behind says whose it is. */
    g_autofree char *tmpl = g_strdup_printf("%s-XXXXXX",
                                            program_invocation_short_name);
    GError *err = NULL;

    (void)state;
    test_tmpdir = g_dir_make_tmp(tmpl, &err);
    if (!test_tmpdir) {
        fprintf(stderr, "temporary folder: %s\n", err->message);
        g_error_free(err);
        return -1;
    }
    return 0;
}

void test_tmpdir_enter(void)
{
    assert_non_null(test_tmpdir);
    if (!saved_cwd) {
        saved_cwd = g_get_current_dir();
    }
    assert_int_equal(chdir(test_tmpdir), 0);
}

static int remove_one(const char *path, const struct stat *sb, int flag,
                      struct FTW *ftw)
{
    (void)sb;
    (void)flag;
    (void)ftw;
    if (remove(path) != 0) {
        fprintf(stderr, "cannot remove %s: %s\n", path, strerror(errno));
        return -1;
    }
    return 0;
}

int test_tmpdir_teardown(void **state)
{
    int ret = 0;

    (void)state;
    if (saved_cwd) {
        if (chdir(saved_cwd) != 0) {
            ret = -1;
        }
        g_free(saved_cwd);
        saved_cwd = NULL;
    }
    /* Depth first, links not followed: what a test left, and no more. */
    if (test_tmpdir && nftw(test_tmpdir, remove_one, 16,
                            FTW_DEPTH | FTW_PHYS) != 0) {
        ret = -1;
    }
    g_free(test_tmpdir);
    test_tmpdir = NULL;
    return ret;
}

char *test_path(const char *name)
{
    assert_non_null(test_tmpdir);
    return g_build_filename(test_tmpdir, name, NULL);
}

/* ---- Files ---- */

char *make_file(const char *name, const uint8_t *data, size_t len)
{
    char *p = test_path(name);
    int fd = open(p, O_CREAT | O_TRUNC | O_WRONLY, 0644);
    assert_true(fd >= 0);
    assert_int_equal(ftruncate(fd, (off_t)len), 0);
    if (data) {
        assert_int_equal(pwrite(fd, data, len, 0), (ssize_t)len);
    }
    close(fd);
    return p;
}

char *make_filled(const char *name, uint8_t byte, size_t len)
{
    uint8_t *buf = g_malloc(len);
    memset(buf, byte, len);
    char *p = make_file(name, buf, len);
    g_free(buf);
    return p;
}

uint8_t *read_file(const char *path, size_t len)
{
    gchar *data = NULL;
    gsize n = 0;
    assert_true(g_file_get_contents(path, &data, &n, NULL));
    assert_int_equal(n, len);
    return (uint8_t *)data;
}

void expect_file(const char *path, const uint8_t *data, size_t len)
{
    uint8_t *out = read_file(path, len);
    assert_memory_equal(out, data, len);
    g_free(out);
}

/* xorshift32: the same bytes every run, so a failure reproduces. */
static uint32_t rng_next(uint32_t *s)
{
    *s ^= *s << 13;
    *s ^= *s >> 17;
    *s ^= *s << 5;
    return *s;
}

void fill_nonzero(uint8_t *buf, size_t len, uint32_t seed)
{
    uint32_t s = seed * 2654435761u + 1;
    for (size_t i = 0; i < len; i++) {
        buf[i] = (uint8_t)((rng_next(&s) >> 24) | 1);
    }
}

/* ---- Nodes ---- */

BlockNode *open_json(json_t *o)
{
    GError *err = NULL;
    BlockNode *bs = node_open(NULL, o, NODE_O_RDWR, &err);
    if (!bs) {
        fail_msg("open failed: %s", err->message);
    }
    return bs;
}

BlockNode *open_file(const char *path)
{
    return open_json(json_pack("{s:s, s:s}", "driver", "file",
                               "filename", path));
}

BlockNode *open_null(int64_t size, int64_t latency)
{
    return open_json(json_pack("{s:s, s:I, s:I}", "driver", "null-co",
                               "size", (json_int_t)size,
                               "latency-ns", (json_int_t)latency));
}

BlockNode *open_blkdebug(const char *path, const char *iotype,
                         int64_t offset)
{
    return open_json(json_pack("{s:s, s:{s:s, s:s}, s:[{s:s, s:s, s:i, "
                               "s:I, s:b}]}",
                               "driver", "blkdebug",
                               "image", "driver", "file", "filename", path,
                               "inject-error", "event", "none",
                               "iotype", iotype, "errno", EIO,
                               "sector", (json_int_t)(offset / 512),
                               "once", 1));
}

BlockBackend *backend_on(BlockNode *bs, uint64_t perm)
{
    GError *err = NULL;
    BlockBackend *blk = blk_new(perm, BLK_PERM_ALL);
    if (!blk_insert_node(blk, bs, &err)) {
        fail_msg("attach failed: %s", err->message);
    }
    return blk;
}

BlockChild *edge(BlockBackend **blk, BlockNode *bs, uint64_t perm)
{
    *blk = backend_on(bs, perm);
    return blk_root(*blk);
}

/* ---- qcow2 images and patterns ---- */

char *make_qcow2(const char *name, int64_t size, const char *backing)
{
    char *p = test_path(name);
    GError *err = NULL;
    json_t *o = json_pack("{s:I}", "size", (json_int_t)size);
    if (backing) {
        json_object_set_new(o, "backing_file", json_string(backing));
        json_object_set_new(o, "backing_fmt", json_string("qcow2"));
    }
    /* image_create takes the options' reference. */
    if (!image_create("qcow2", p, o, &err)) {
        fail_msg("create %s: %s", name, err->message);
    }
    return p;
}

BlockBackend *open_blk(const char *path)
{
    GError *err = NULL;
    BlockBackend *blk = blk_new_open(path, json_pack("{s:s}", "driver",
                                                     "qcow2"),
                                     NODE_O_RDWR, &err);
    if (!blk) {
        fail_msg("open %s: %s", path, err->message);
    }
    return blk;
}

BlockBackend *open_blk_json(json_t *options)
{
    GError *err = NULL;
    BlockBackend *blk = blk_new_open(NULL, options, NODE_O_RDWR, &err);
    if (!blk) {
        fail_msg("open: %s", err->message);
    }
    return blk;
}

void write_pattern(BlockBackend *blk, int64_t off, int64_t len, int byte)
{
    void *buf = g_malloc(len);
    memset(buf, byte, len);
    assert_int_equal(blk_pwrite(blk, off, len, buf, 0), 0);
    g_free(buf);
}

void check_pattern(BlockBackend *blk, int64_t off, int64_t len, int byte)
{
    uint8_t *buf = g_malloc(len);
    assert_int_equal(blk_pread(blk, off, len, buf, 0), 0);
    for (int64_t i = 0; i < len; i++) {
        if (buf[i] != byte) {
            fail_msg("byte %lld: 0x%02x, not 0x%02x", (long long)(off + i),
                     buf[i], byte);
        }
    }
    g_free(buf);
}

/* ---- Programs ---- */

char *run_capture(const char *const *argv, int *status)
{
    char *out = NULL;
    GError *err = NULL;
    if (!g_spawn_sync(NULL, (char **)argv, NULL, G_SPAWN_SEARCH_PATH, NULL,
                      NULL, &out, NULL, status, &err)) {
        fail_msg("%s: %s", argv[0], err->message);
    }
    return out;
}

void run_ready(void)
{
    for (int i = 0; i < 20; i++) {
        loop_iterate(false);
    }
}

bool wait_flag(const bool *flag, int ms)
{
    int64_t end = clock_ns() + (int64_t)ms * 1000000;
    while (!*flag && clock_ns() < end) {
        loop_iterate(false);
        g_usleep(500);
    }
    return *flag;
}
