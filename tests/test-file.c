/*
 * The file protocol driver: open and its errors, reads and writes through
 * every aio back end (checked against qemu-io when it is installed), the
 * O_DIRECT alignment probe, block status on a sparse file, truncate, image
 * creation with preallocation (checked against qemu-img), image locks taken
 * through the permission transaction, and reopen.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <errno.h>
#include <fcntl.h>
#include <pwd.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "strata/backend.h"
#include "strata/block-driver.h"
#include "strata/block.h"
#include "strata/iov.h"
#include "strata/loop.h"
#include "strata/opts.h"
#include "strata/units.h"
#include "../block/locks.h"
#include "support.h"

enum {
    R = BLK_PERM_CONSISTENT_READ,
    W = BLK_PERM_WRITE,
    WU = BLK_PERM_WRITE_UNCHANGED,
    RS = BLK_PERM_RESIZE,
    ALL = BLK_PERM_ALL,
};

/* ---- Helpers ---- */

/* {"driver": "file", "filename": path} plus extra keys as JSON text. */
static json_t *file_opts(const char *path, const char *extra_json)
{
    json_t *o = json_pack("{s:s, s:s}", "driver", "file", "filename", path);
    if (extra_json) {
        json_error_t jerr;
        json_t *extra = json_loads(extra_json, 0, &jerr);
        assert_non_null(extra);
        json_object_update(o, extra);
        json_decref(extra);
    }
    return o;
}

static BlockBackend *file_blk(const char *path, const char *extra, int flags,
                              GError **errp)
{
    return blk_new_open(NULL, file_opts(path, extra), flags, errp);
}

/* Open a file node and attach a backend taking perm and sharing shared. */
static BlockBackend *open_with_perms(const char *path, const char *extra,
                                     uint64_t perm, uint64_t shared,
                                     GError **errp)
{
    BlockNode *bs = node_open(NULL, file_opts(path, extra), NODE_O_RDWR, errp);
    if (!bs) {
        return NULL;
    }
    BlockBackend *blk = blk_new(perm, shared);
    bool ok = blk_insert_node(blk, bs, errp);
    node_unref(bs);
    if (!ok) {
        blk_unref(blk);
        return NULL;
    }
    return blk;
}

static void assert_open_fails(const char *path, const char *extra, int flags,
                              const char *expect)
{
    GError *err = NULL;
    BlockBackend *blk = file_blk(path, extra, flags, &err);
    assert_null(blk);
    assert_non_null(err);
    assert_string_equal(err->message, expect);
    g_error_free(err);
}

static void fill(uint8_t *buf, size_t len, unsigned seed)
{
    for (size_t i = 0; i < len; i++) {
        buf[i] = (uint8_t)(seed + i * 7 + (i >> 9));
    }
}

static bool have_prog(const char *name)
{
    g_autofree char *p = g_find_program_in_path(name);
    return p != NULL;
}

/* Run a program; returns the exit status, stdout+stderr in *out if asked. */
static int run_prog(const char *const *argv, char **out)
{
    int status = -1;
    g_autofree char *o = NULL, *e = NULL;
    assert_true(g_spawn_sync(NULL, (char **)argv, NULL, G_SPAWN_SEARCH_PATH,
                             NULL, NULL, &o, &e, &status, NULL));
    if (out) {
        *out = g_strconcat(o ? o : "", e ? e : "", NULL);
    }
    return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

/* The lock bytes that fds other than probe_fd hold on the file. */
static void held_by_others(int probe_fd, uint64_t *perm, uint64_t *unshared)
{
    *perm = *unshared = 0;
    for (int i = 0; i < BLK_PERM_COUNT; i++) {
        if (lock_fd_test(probe_fd, LOCK_PERM_BASE + i, 1, true) == -EAGAIN) {
            *perm |= 1ULL << i;
        }
        if (lock_fd_test(probe_fd, LOCK_SHARED_BASE + i, 1, true) == -EAGAIN) {
            *unshared |= 1ULL << i;
        }
    }
}

static void assert_held(const char *path, uint64_t perm, uint64_t unshared)
{
    int fd = open(path, O_RDONLY);
    uint64_t p, u;
    assert_true(fd >= 0);
    held_by_others(fd, &p, &u);
    close(fd);
    assert_int_equal(p, perm);
    assert_int_equal(u, unshared);
}

/* ---- Read and write ---- */

static void rw_roundtrip(const char *extra, int flags)
{
    g_autofree char *path = make_file("rw.img", NULL, 4 * MiB);
    GError *err = NULL;
    BlockBackend *blk = file_blk(path, extra, NODE_O_RDWR | flags, &err);
    assert_null(err);
    assert_non_null(blk);
    assert_int_equal(blk_getlength(blk), 4 * MiB);

    size_t len = 192 * KiB;
    uint8_t *wbuf = g_malloc(len), *rbuf = g_malloc(len);
    fill(wbuf, len, 1);
    assert_int_equal(blk_pwrite(blk, 0, len, wbuf, 0), 0);
    /* Unaligned offset, length and buffer. */
    assert_int_equal(blk_pwrite(blk, MiB + 513, 3001, wbuf + 3, 0), 0);
    /* A vector of many odd-sized pieces. */
    IOVec v;
    iovec_init(&v, 8);
    iovec_add(&v, wbuf + 100, 1000);
    iovec_add(&v, wbuf + 5000, 24);
    iovec_add(&v, wbuf + 9000, 4096);
    assert_int_equal(blk_pwritev(blk, 2 * MiB, v.size, &v, 0), 0);
    assert_int_equal(blk_flush(blk), 0);

    memset(rbuf, 0, len);
    assert_int_equal(blk_pread(blk, 0, len, rbuf, 0), 0);
    assert_memory_equal(rbuf, wbuf, len);
    memset(rbuf, 0, len);
    assert_int_equal(blk_pread(blk, MiB + 513, 3001, rbuf + 1, 0), 0);
    assert_memory_equal(rbuf + 1, wbuf + 3, 3001);
    assert_int_equal(blk_pread(blk, 2 * MiB, 1000, rbuf, 0), 0);
    assert_memory_equal(rbuf, wbuf + 100, 1000);
    assert_int_equal(blk_pread(blk, 2 * MiB + 1000, 24, rbuf, 0), 0);
    assert_memory_equal(rbuf, wbuf + 5000, 24);
    assert_int_equal(blk_pread(blk, 2 * MiB + 1024, 4096, rbuf, 0), 0);
    assert_memory_equal(rbuf, wbuf + 9000, 4096);
    iovec_destroy(&v);
    blk_unref(blk);

    /* What we wrote is what QEMU reads... */
    if (have_prog("qemu-io")) {
        int fd = open(path, O_RDONLY);
        uint8_t *disk = g_malloc(len);
        assert_int_equal(pread(fd, disk, len, 0), (ssize_t)len);
        close(fd);
        assert_memory_equal(disk, wbuf, len);
        g_free(disk);
        const char *argv[] = {
            "qemu-io", "-f", "raw", "-c", "write -P 0x5c 3M 64k",
            "-c", "write -P 0x3d 3407873 1000", path, NULL,
        };
        g_autofree char *out = NULL;
        assert_int_equal(run_prog(argv, &out), 0);
        /* ...and what QEMU writes is what we read. */
        blk = file_blk(path, extra, flags, &err);
        assert_non_null(blk);
        assert_int_equal(blk_pread(blk, 3 * MiB, 64 * KiB, rbuf, 0), 0);
        for (size_t i = 0; i < 64 * KiB; i++) {
            assert_int_equal(rbuf[i], 0x5c);
        }
        assert_int_equal(blk_pread(blk, 3407873, 1000, rbuf + 7, 0), 0);
        for (size_t i = 0; i < 1000; i++) {
            assert_int_equal(rbuf[7 + i], 0x3d);
        }
        blk_unref(blk);

        const char *check[] = {
            "qemu-io", "-f", "raw", "-c", "read -P 0x5c 3M 64k", path, NULL,
        };
        g_autofree char *out2 = NULL;
        assert_int_equal(run_prog(check, &out2), 0);
        assert_null(strstr(out2, "Pattern verification failed"));
    }
    g_free(wbuf);
    g_free(rbuf);
    unlink(path);
}

static void test_rw_threads(void **state)
{
    rw_roundtrip("{\"aio\": \"threads\"}", 0);
}

static void test_rw_io_uring(void **state)
{
    rw_roundtrip("{\"aio\": \"io_uring\"}", 0);
}

static void test_rw_default(void **state)
{
    rw_roundtrip(NULL, 0);
}

static void test_rw_direct_native(void **state)
{
    rw_roundtrip("{\"aio\": \"native\", \"cache\": {\"direct\": true}}", 0);
}

static void test_rw_direct_io_uring(void **state)
{
    rw_roundtrip("{\"aio\": \"io_uring\", \"cache.direct\": \"on\"}", 0);
}

typedef struct ReadReq {
    BlockNode *bs;
    IOVec *v;
    int64_t bytes;
    int ret;
} ReadReq;

static void read_entry(void *opaque)
{
    ReadReq *r = opaque;
    r->ret = r->bs->drv->co_preadv(r->bs, 0, r->bytes, r->v, 0, 0);
}

/* A read across EOF returns the data and zeroes after it. */
static void test_read_past_eof(void **state)
{
    g_autofree char *path = test_path("eof.img");
    uint8_t data[1000], buf[4096];
    fill(data, sizeof(data), 9);
    assert_true(g_file_set_contents(path, (char *)data, sizeof(data), NULL));

    const char *variants[] = { NULL, "{\"cache.direct\": \"on\"}" };
    for (int i = 0; i < 2; i++) {
        GError *err = NULL;
        BlockBackend *blk = file_blk(path, variants[i], 0, &err);
        assert_non_null(blk);
        BlockNode *bs = blk_node(blk);
        memset(buf, 0xff, sizeof(buf));
        /* Straight to the driver: the backend would stop at EOF. */
        IOVec v;
        iovec_init_buf(&v, buf, sizeof(buf));
        ReadReq req = { bs, &v, 4096, -1 };
        co_run_sync(read_entry, &req);
        iovec_destroy(&v);
        assert_int_equal(req.ret, 0);
        assert_memory_equal(buf, data, sizeof(data));
        for (size_t j = sizeof(data); j < sizeof(buf); j++) {
            assert_int_equal(buf[j], 0);
        }
        blk_unref(blk);
    }
}

/* ---- O_DIRECT alignment ---- */

static void test_direct_alignment(void **state)
{
    g_autofree char *path = test_path("align.img");
    GError *err = NULL;

    /*
     * Created like qemu-img does, with the first block written: reads from
     * a hole succeed at any length on some file systems, and the probe
     * would fall back to the safe 4096.
     */
    assert_true(image_create("file", path, json_pack("{s:s}", "size", "1M"),
                             &err));

    BlockBackend *blk = file_blk(path, NULL, NODE_O_RDWR, &err);
    assert_non_null(blk);
    assert_int_equal(blk_node(blk)->bl.request_alignment, 1);
    assert_int_equal(blk_node(blk)->bl.min_mem_alignment, 1);
    blk_unref(blk);

    blk = file_blk(path, "{\"cache.direct\": \"on\"}", NODE_O_RDWR, &err);
    assert_non_null(blk);
    BlockLimits *bl = &blk_node(blk)->bl;
    uint32_t ra = bl->request_alignment, ma = bl->min_mem_alignment;
    assert_true(ra >= 512 && ra <= 4096 && !(ra & (ra - 1)));
    assert_true(ma >= 512 && ma <= 4096 && !(ma & (ma - 1)));
    assert_true(bl->opt_mem_alignment >= ma);

    /* The probed values are what the kernel accepts... */
    int fd = open(path, O_RDONLY | O_DIRECT);
    assert_true(fd >= 0);
    char *buf = aligned_alloc_buf(4096, 8192);
    assert_int_equal(pread(fd, buf + ma, ra, 0), (ssize_t)ra);
    /* ...and the smallest ones, if the probe had to find them by trying. */
    if (ra > 512) {
        assert_int_equal(pread(fd, buf, ra / 2, 0), -1);
    }
    close(fd);

    /* Misaligned requests and buffers still work (bounced). */
    uint8_t w[777];
    fill(w, sizeof(w), 3);
    assert_int_equal(blk_pwrite(blk, 4097, sizeof(w), w, 0), 0);
    assert_int_equal(blk_pread(blk, 4097, sizeof(w), buf + 1, 0), 0);
    assert_memory_equal(buf + 1, w, sizeof(w));
    aligned_free(buf);
    blk_unref(blk);

    /* A file that is one big hole gets the safe fallback. */
    g_autofree char *sparse = make_file("hole.img", NULL, MiB);
    blk = file_blk(sparse, "{\"cache.direct\": \"on\"}", 0, &err);
    assert_non_null(blk);
    ra = blk_node(blk)->bl.request_alignment;
    assert_true(ra >= 512 && ra <= 4096 && !(ra & (ra - 1)));
    blk_unref(blk);
}

/* ---- Block status ---- */

typedef struct StatusReq {
    BlockNode *bs;
    int64_t offset, bytes, pnum, map;
    BlockNode *file;
    int ret;
} StatusReq;

static void status_entry(void *opaque)
{
    StatusReq *r = opaque;
    r->ret = r->bs->drv->co_block_status(r->bs, true, r->offset, r->bytes,
                                         &r->pnum, &r->map, &r->file);
}

static void status_entry_no_zero(void *opaque)
{
    StatusReq *r = opaque;
    r->ret = r->bs->drv->co_block_status(r->bs, false, r->offset, r->bytes,
                                         &r->pnum, &r->map, &r->file);
}

static int status_at(BlockNode *bs, int64_t offset, int64_t bytes,
                     int64_t *pnum)
{
    StatusReq r = { .bs = bs, .offset = offset, .bytes = bytes };
    co_run_sync(status_entry, &r);
    assert_true(r.ret < 0 || r.file == bs);
    assert_true(r.ret < 0 || r.map == offset);
    *pnum = r.pnum;
    return r.ret;
}

static void test_block_status(void **state)
{
    g_autofree char *path = make_file("sparse.img", NULL, 4 * MiB);
    uint8_t data[64 * 1024];
    int fd = open(path, O_WRONLY);
    memset(data, 0x42, sizeof(data));
    assert_int_equal(pwrite(fd, data, sizeof(data), MiB), (ssize_t)sizeof(data));
    close(fd);

    GError *err = NULL;
    BlockBackend *blk = file_blk(path, NULL, 0, &err);
    assert_non_null(blk);
    BlockNode *bs = blk_node(blk);
    int64_t pnum;

    assert_int_equal(status_at(bs, 0, 4 * MiB, &pnum),
                     BLOCK_ZERO | BLOCK_OFFSET_VALID);
    assert_int_equal(pnum, MiB);
    assert_int_equal(status_at(bs, MiB, 3 * MiB, &pnum),
                     BLOCK_DATA | BLOCK_OFFSET_VALID);
    assert_int_equal(pnum, 64 * KiB);
    assert_int_equal(status_at(bs, MiB + 64 * KiB, 3 * MiB - 64 * KiB, &pnum),
                     BLOCK_ZERO | BLOCK_OFFSET_VALID);
    assert_int_equal(pnum, 3 * MiB - 64 * KiB);

    /* Without want_zero everything is data, at the same offset. */
    StatusReq r = { .bs = bs, .offset = 0, .bytes = 4 * MiB };
    co_run_sync(status_entry_no_zero, &r);
    assert_int_equal(r.ret, BLOCK_DATA | BLOCK_OFFSET_VALID);
    assert_int_equal(r.pnum, 4 * MiB);
    blk_unref(blk);

    /* The same map as qemu-img. */
    if (have_prog("qemu-img")) {
        const char *argv[] = { "qemu-img", "map", "-f", "raw",
                               "--output=json", path, NULL };
        g_autofree char *out = NULL;
        assert_int_equal(run_prog(argv, &out), 0);
        assert_non_null(strstr(out, "\"start\": 1048576, \"length\": 65536, "
                                    "\"depth\": 0, \"present\": true, "
                                    "\"zero\": false, \"data\": true"));
    }
}

/* ---- Truncate ---- */

static uint64_t allocated(const char *path)
{
    struct stat st;
    assert_int_equal(stat(path, &st), 0);
    return (uint64_t)st.st_blocks * 512;
}

static void test_truncate(void **state)
{
    g_autofree char *path = make_file("trunc.img", NULL, MiB);
    GError *err = NULL;
    BlockBackend *blk = file_blk(path, NULL, NODE_O_RDWR | NODE_O_RESIZE,
                                 &err);
    assert_non_null(blk);

    assert_int_equal(blk_truncate(blk, 8 * MiB, true, PREALLOC_MODE_OFF, &err), 0);
    assert_int_equal(blk_getlength(blk), 8 * MiB);
    assert_int_equal(blk_truncate(blk, MiB / 2, true, PREALLOC_MODE_OFF, &err), 0);
    assert_int_equal(blk_getlength(blk), MiB / 2);

    assert_true(blk_truncate(blk, 1000, true, PREALLOC_MODE_FALLOC, &err) < 0);
    assert_string_equal(err->message,
                        "Cannot use preallocation for shrinking files");
    g_clear_error(&err);
    assert_int_equal(blk_getlength(blk), MiB / 2);

    assert_int_equal(blk_truncate(blk, 2 * MiB, true, PREALLOC_MODE_FALLOC, &err),
                     0);
    assert_true(allocated(path) >= 3 * MiB / 2);
    assert_int_equal(blk_truncate(blk, 4 * MiB, true, PREALLOC_MODE_FULL, &err), 0);
    assert_true(allocated(path) >= 7 * MiB / 2);
    assert_int_equal(blk_getlength(blk), 4 * MiB);

    assert_true(blk_truncate(blk, 5 * MiB, true, PREALLOC_MODE_METADATA, &err) < 0);
    assert_string_equal(err->message, "Unsupported preallocation mode: metadata");
    g_clear_error(&err);

    /* Grown space reads as zeroes. */
    uint8_t buf[4096];
    memset(buf, 1, sizeof(buf));
    assert_int_equal(blk_pread(blk, 3 * MiB, sizeof(buf), buf, 0), 0);
    for (size_t i = 0; i < sizeof(buf); i++) {
        assert_int_equal(buf[i], 0);
    }
    blk_unref(blk);
}

/* ---- Zero writes and discard ---- */

static void test_zeroes_discard(void **state)
{
    g_autofree char *path = make_file("zero.img", NULL, 0);
    GError *err = NULL;
    BlockBackend *blk = file_blk(path, "{\"discard\": \"unmap\"}",
                                 NODE_O_RDWR | NODE_O_RESIZE, &err);
    assert_non_null(blk);
    assert_int_equal(blk_truncate(blk, 4 * MiB, true, PREALLOC_MODE_FULL, &err), 0);
    assert_true(allocated(path) >= 4 * MiB);

    uint8_t buf[64 * 1024];
    memset(buf, 0x77, sizeof(buf));
    assert_int_equal(blk_pwrite(blk, 0, sizeof(buf), buf, 0), 0);
    /* Zeroes without unmap keep the space allocated. */
    assert_int_equal(blk_pwrite_zeroes(blk, 0, sizeof(buf), 0), 0);
    assert_true(allocated(path) >= 4 * MiB);
    memset(buf, 1, sizeof(buf));
    assert_int_equal(blk_pread(blk, 0, sizeof(buf), buf, 0), 0);
    assert_true(buffer_is_zero(buf, sizeof(buf)));

    /* With unmap (and discard) the range becomes a hole. */
    assert_int_equal(blk_pwrite_zeroes(blk, MiB, MiB, REQ_MAY_UNMAP), 0);
    assert_true(allocated(path) <= 3 * MiB + 64 * KiB);
    assert_int_equal(blk_pdiscard(blk, 2 * MiB, MiB), 0);
    assert_true(allocated(path) <= 2 * MiB + 64 * KiB);
    assert_int_equal(blk_pread(blk, 2 * MiB, sizeof(buf), buf, 0), 0);
    assert_true(buffer_is_zero(buf, sizeof(buf)));
    blk_unref(blk);

    /* discard=ignore: success, nothing freed. */
    uint64_t before = allocated(path);
    blk = file_blk(path, NULL, NODE_O_RDWR, &err);
    assert_non_null(blk);
    assert_int_equal(blk_pdiscard(blk, 0, MiB), 0);
    assert_int_equal(allocated(path), before);
    blk_unref(blk);
}

/* ---- Create ---- */

static bool create(const char *path, const char *opts_json, GError **errp)
{
    json_error_t jerr;
    json_t *o = json_loads(opts_json, 0, &jerr);
    assert_non_null(o);
    return image_create("file", path, o, errp);
}

static void assert_create_fails(const char *path, const char *opts,
                                const char *expect)
{
    GError *err = NULL;
    assert_false(create(path, opts, &err));
    assert_non_null(err);
    assert_string_equal(err->message, expect);
    g_error_free(err);
}

/* Create with our driver and with qemu-img: same size, same allocation. */
static void compare_create(const char *prealloc, const char *size)
{
    g_autofree char *ours = test_path("ours.img");
    g_autofree char *theirs = test_path("theirs.img");
    g_autofree char *opts = g_strdup_printf(
        "{\"size\": \"%s\", \"preallocation\": \"%s\"}", size, prealloc);
    GError *err = NULL;
    struct stat a, b;

    assert_true(create(ours, opts, &err));
    assert_null(err);
    assert_int_equal(stat(ours, &a), 0);
    if (have_prog("qemu-img")) {
        g_autofree char *o = g_strdup_printf("preallocation=%s", prealloc);
        const char *argv[] = { "qemu-img", "create", "-q", "-f", "raw", "-o",
                               o, theirs, size, NULL };
        assert_int_equal(run_prog(argv, NULL), 0);
        assert_int_equal(stat(theirs, &b), 0);
        assert_int_equal(a.st_size, b.st_size);
        assert_int_equal(a.st_blocks, b.st_blocks);
        unlink(theirs);
    }
    unlink(ours);
}

static void test_create(void **state)
{
    g_autofree char *path = test_path("new.img");
    GError *err = NULL;
    struct stat st;

    compare_create("off", "1M");
    compare_create("off", "1000");
    compare_create("falloc", "3M");
    compare_create("full", "1000");
    compare_create("full", "2M");

    /* An existing file is emptied first. */
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0644);
    assert_int_equal(write(fd, "abcdefgh", 8), 8);
    close(fd);
    assert_true(create(path, "{\"size\": 4096, \"preallocation\": \"falloc\"}",
                       &err));
    assert_int_equal(stat(path, &st), 0);
    assert_int_equal(st.st_size, 4096);
    char buf[8];
    fd = open(path, O_RDONLY);
    assert_int_equal(read(fd, buf, 8), 8);
    close(fd);
    assert_memory_equal(buf, "\0\0\0\0\0\0\0\0", 8);
    assert_true(create(path, "{\"size\": \"1M\", \"nocow\": \"on\", "
                             "\"extent_size_hint\": \"2M\"}", &err));

    assert_create_fails(path, "{\"size\": \"1M\", \"preallocation\": \"foo\"}",
                        "invalid parameter value: foo");
    assert_create_fails(path,
                        "{\"size\": \"1M\", \"preallocation\": \"metadata\"}",
                        "Unsupported preallocation mode: metadata");
    assert_create_fails(path,
                        "{\"size\": \"1M\", \"extent_size_hint\": \"8G\"}",
                        "Extent size hint is too large");
    g_autofree char *missing = test_path("nodir/x.img");
    g_autofree char *msg = g_strdup_printf(
        "Could not create '%s': No such file or directory", missing);
    assert_create_fails(missing, "{\"size\": \"1M\"}", msg);
    g_free(msg);
    msg = g_strdup_printf("Could not create '%s': Is a directory",
                          test_tmpdir);
    assert_create_fails(test_tmpdir, "{\"size\": \"1M\"}", msg);

    /* Someone writing the image and sharing no writes: refused. */
    fd = open(path, O_RDWR);
    ImageLock il;
    image_lock_init(&il, fd, true);
    assert_int_equal(image_lock_prepare(&il, R | W, R | WU, path, &err), 0);
    image_lock_commit(&il, R | W, R | WU);
    g_free(msg);
    msg = g_strdup_printf("Failed to get \"write\" lock\n"
                          "Is another process using the image [%s]?", path);
    assert_create_fails(path, "{\"size\": \"1M\"}", msg);
    close(fd);
    assert_true(create(path, "{\"size\": \"1M\"}", &err));
    /* The protocol prefix is accepted. */
    g_free(msg);
    msg = g_strdup_printf("file:%s", path);
    assert_true(create(msg, "{\"size\": \"2M\"}", &err));
    assert_int_equal(stat(path, &st), 0);
    assert_int_equal(st.st_size, 2 * MiB);
    unlink(path);
}

/* ---- Open errors ---- */

static void test_open_errors(void **state)
{
    g_autofree char *missing = test_path("missing.img");
    g_autofree char *img = make_file("plain.img", NULL, MiB);
    char *msg;

    msg = g_strdup_printf("Could not open '%s': No such file or directory",
                          missing);
    assert_open_fails(missing, NULL, 0, msg);
    g_free(msg);
    msg = g_strdup_printf("Could not open '%s': Is a directory",
                          test_tmpdir);
    assert_open_fails(test_tmpdir, NULL, NODE_O_RDWR, msg);
    g_free(msg);
    msg = g_strdup_printf("'file' driver requires '%s' to be a regular file",
                          test_tmpdir);
    assert_open_fails(test_tmpdir, NULL, 0, msg);
    g_free(msg);
    assert_open_fails("/dev/null", NULL, 0,
                      "'file' driver requires '/dev/null' to be a regular file");
    if (driver_find("host_device")) {
        msg = g_strdup_printf("'host_device' driver requires '%s' to be either "
                              "a character or block device", img);
        assert_open_fails(img, "{\"driver\": \"host_device\"}", 0, msg);
        g_free(msg);
    }

    assert_open_fails(img, "{\"aio\": \"native\"}", 0,
                      "aio=native was specified, but it requires "
                      "cache.direct=on, which was not specified.");
    assert_open_fails(img, "{\"aio\": \"foo\"}", 0,
                      "invalid parameter value: foo");
    assert_open_fails(img, "{\"locking\": \"maybe\"}", 0,
                      "invalid parameter value: maybe");
    assert_open_fails(img, "{\"aio-max-batch\": \"x\"}", 0,
                      "Parameter 'aio-max-batch' expects a number");
    assert_open_fails(img, "{\"foo\": \"bar\"}", 0,
                      "Block protocol 'file' doesn't support the option 'foo'");
    GError *err = NULL;
    assert_null(blk_new_open(NULL, json_pack("{s:s}", "driver", "file"), 0,
                             &err));
    assert_string_equal(err->message,
                        "The 'file' block driver requires a file name");
    g_clear_error(&err);

    /* Accepted options. */
    BlockBackend *blk = file_blk(img, "{\"aio-max-batch\": 16, "
                                      "\"locking\": \"on\", "
                                      "\"drop-cache\": false, "
                                      "\"aio\": \"threads\"}", 0, &err);
    assert_null(err);
    assert_non_null(blk);
    blk_unref(blk);
    /* A "file:" filename. */
    g_autofree char *prefixed = g_strdup_printf("file:%s", img);
    blk = blk_new_open(prefixed, NULL, NODE_O_PROTOCOL, &err);
    assert_null(err);
    assert_non_null(blk);
    assert_int_equal(blk_getlength(blk), MiB);
    blk_unref(blk);
}

/* Permission denied, as an unprivileged user (root would be let in). */
static void test_open_permission(void **state)
{
    g_autofree char *img = make_file("secret.img", NULL, MiB);
    assert_int_equal(chmod(img, 0600), 0);
    uid_t uid = getuid();
    if (uid == 0) {
        struct passwd *pw = getpwnam("nobody");
        if (!pw) {
            skip();
        }
        uid = pw->pw_uid;
        assert_int_equal(chmod(test_tmpdir, 0755), 0);
    } else {
        assert_int_equal(chmod(img, 0), 0);
    }
    int pipefd[2];
    assert_int_equal(pipe(pipefd), 0);
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        GError *err = NULL;
        if (getuid() == 0 && setuid(uid) != 0) {
            _exit(2);
        }
        BlockBackend *blk = file_blk(img, NULL, 0, &err);
        const char *m = blk ? "opened" : err->message;
        if (write(pipefd[1], m, strlen(m)) < 0) {
            _exit(3);
        }
        _exit(0);
    }
    close(pipefd[1]);
    char got[512] = "";
    ssize_t n = read(pipefd[0], got, sizeof(got) - 1);
    close(pipefd[0]);
    int status;
    waitpid(pid, &status, 0);
    assert_true(n > 0);
    got[n] = 0;
    g_autofree char *expect = g_strdup_printf(
        "Could not open '%s': Permission denied", img);
    assert_string_equal(got, expect);
}

/* ---- Locks through the permission transaction ---- */

static void test_node_locks(void **state)
{
    g_autofree char *path = make_file("locks.img", NULL, MiB);
    GError *err = NULL;

    /* A writer that lets nobody else write or resize (like qcow2 does). */
    BlockBackend *a = open_with_perms(path, NULL, R | W, R | WU, &err);
    assert_null(err);
    assert_held(path, R | W, W | RS);

    /* A second node on the same file, wanting to write: refused. */
    BlockBackend *b = open_with_perms(path, NULL, R | W, ALL, &err);
    assert_null(b);
    g_autofree char *msg = g_strdup_printf(
        "Failed to get \"write\" lock\n"
        "Is another process using the image [%s]?", path);
    assert_string_equal(err->message, msg);
    g_clear_error(&err);
    /* The failed attempt left the first user's locks as they were. */
    assert_held(path, R | W, W | RS);

    /* A reader that shares everything is fine (force-share). */
    b = open_with_perms(path, NULL, R, ALL, &err);
    assert_non_null(b);
    blk_unref(b);

    /* Relaxing the first user's sharing drops lock bytes. */
    assert_true(blk_set_perm(a, R | W, ALL, &err));
    assert_held(path, R | W, 0);
    blk_unref(a);
    assert_held(path, 0, 0);

    /* locking=off takes nothing. */
    a = open_with_perms(path, "{\"locking\": \"off\"}", R | W | RS, 0, &err);
    assert_non_null(a);
    assert_held(path, 0, 0);
    blk_unref(a);

    /* QEMU holds it: qemu-io -f raw writes and shares everything. */
    if (!have_prog("qemu-io")) {
        return;
    }
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        int null = open("/dev/null", O_RDWR);
        dup2(null, 1);
        dup2(null, 2);
        execlp("qemu-io", "qemu-io", "-f", "raw", "-c", "sleep 20000", path,
               (char *)NULL);
        _exit(127);
    }
    for (int i = 0; i < 1000; i++) {
        uint64_t p, u;
        int fd = open(path, O_RDONLY);
        held_by_others(fd, &p, &u);
        close(fd);
        if (p & W) {
            break;
        }
        g_usleep(10000);
    }
    assert_held(path, R | W, 0);
    a = open_with_perms(path, NULL, R, R | WU, &err);
    assert_null(a);
    g_free(msg);
    msg = g_strdup_printf("Failed to get shared \"write\" lock\n"
                          "Is another process using the image [%s]?", path);
    assert_string_equal(err->message, msg);
    g_clear_error(&err);
    a = open_with_perms(path, NULL, R | W, ALL, &err);
    assert_non_null(a);
    blk_unref(a);
    kill(pid, SIGKILL);
    waitpid(pid, NULL, 0);
}

/* ---- Reopen ---- */

static int count_fds(void)
{
    GDir *d = g_dir_open("/proc/self/fd", 0, NULL);
    int n = 0;
    assert_non_null(d);
    while (g_dir_read_name(d)) {
        n++;
    }
    g_dir_close(d);
    return n;
}

static void test_reopen(void **state)
{
    g_autofree char *path = make_file("reopen.img", NULL, MiB);
    GError *err = NULL;
    uint8_t w[4096], r[4096];
    int fds = count_fds();

    BlockBackend *blk = open_with_perms(path, NULL, R, R | WU, &err);
    assert_non_null(blk);
    BlockNode *bs = blk_node(blk);
    assert_held(path, R, W | RS);

    /* Read-write and O_DIRECT: a new fd that keeps the locks. */
    assert_true(node_reopen(bs, json_pack("{s:b}", "cache.direct", 1), false,
                            &err));
    assert_null(err);
    assert_held(path, R, W | RS);
    assert_true(bs->bl.request_alignment >= 512);
    assert_true(blk_set_perm(blk, R | W, R | WU, &err));
    assert_held(path, R | W, W | RS);
    fill(w, sizeof(w), 5);
    assert_int_equal(blk_pwrite(blk, 8192, sizeof(w), w, 0), 0);
    assert_int_equal(blk_pread(blk, 8192, sizeof(r), r, 0), 0);
    assert_memory_equal(r, w, sizeof(w));

    /* Read-only again needs the writer gone first. */
    assert_false(node_reopen(bs, NULL, true, &err));
    assert_non_null(err);
    g_clear_error(&err);
    assert_held(path, R | W, W | RS);
    assert_true(blk_set_perm(blk, R, ALL, &err));
    assert_true(node_reopen(bs, json_pack("{s:b}", "cache.direct", 0), true,
                            &err));
    assert_null(err);
    assert_held(path, R, 0);
    assert_int_equal(bs->bl.request_alignment, 1);
    assert_int_equal(blk_pread(blk, 8192, sizeof(r), r, 0), 0);
    assert_memory_equal(r, w, sizeof(w));

    /* A failed reopen leaves the node as it was. */
    int fd = open(path, O_RDWR);
    ImageLock other;
    image_lock_init(&other, fd, true);
    assert_int_equal(image_lock_prepare(&other, R, R | WU, path, &err), 0);
    image_lock_commit(&other, R, R | WU);
    assert_true(blk_set_perm(blk, R, ALL, &err));
    assert_false(node_reopen(bs, NULL, false, &err) &&
                 blk_set_perm(blk, R | W, ALL, &err));
    g_clear_error(&err);
    close(fd);
    assert_int_equal(blk_pread(blk, 8192, sizeof(r), r, 0), 0);
    assert_memory_equal(r, w, sizeof(w));
    blk_unref(blk);
    assert_held(path, 0, 0);
    /* Every fd a reopen opened was closed again. */
    assert_int_equal(count_fds(), fds);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_rw_threads),
        cmocka_unit_test(test_rw_io_uring),
        cmocka_unit_test(test_rw_default),
        cmocka_unit_test(test_rw_direct_native),
        cmocka_unit_test(test_rw_direct_io_uring),
        cmocka_unit_test(test_read_past_eof),
        cmocka_unit_test(test_direct_alignment),
        cmocka_unit_test(test_block_status),
        cmocka_unit_test(test_truncate),
        cmocka_unit_test(test_zeroes_discard),
        cmocka_unit_test(test_create),
        cmocka_unit_test(test_open_errors),
        cmocka_unit_test(test_open_permission),
        cmocka_unit_test(test_node_locks),
        cmocka_unit_test(test_reopen),
    };
    return cmocka_run_group_tests(tests, test_tmpdir_setup,
                                  test_tmpdir_teardown);
}
