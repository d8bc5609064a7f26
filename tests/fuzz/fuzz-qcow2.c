/*
 * libFuzzer target: any bytes, opened as a qcow2 image.  Whatever the
 * header, tables and entries say, opening, reading, mapping and writing
 * must end in an error code, never a crash, a hang or a sanitizer report.
 *
 * The input is written to a file in /dev/shm (the driver reads through the
 * file protocol as it would in use).  It is checked as `strata-img check`
 * does (opened for a check, read-only), then repaired as `check -r all`
 * does (read-write, fix everything, check again), then, from the original
 * bytes once more, opened read-only and described as `info` does (the
 * persistent bitmaps are loaded and listed), then opened read-write, read
 * and mapped over its whole length in a few requests, written in a few
 * places (allocating, zeroing, discarding; enabled bitmaps record it, and
 * are stored at close), and closed.  (Run with -close_fd_mask=2: the check reports
 * every problem on stderr.)
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "strata/backend.h"
#include "strata/block-driver.h"
#include "strata/coroutine.h"
#include "strata/loop.h"

static char path[64];

static void quiet(const char *msg)
{
    (void)msg;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static bool write_input(const uint8_t *data, size_t size)
{
    FILE *f = fopen(path, "wb");
    if (!f) {
        return false;
    }
    fwrite(data, 1, size, f);
    fclose(f);
    return true;
}

typedef struct CheckRun {
    BlockNode *bs;
    int fix;
    BlockCheckResult res;
    int ret;
} CheckRun;

static void coroutine_fn check_co(void *opaque)
{
    CheckRun *c = opaque;

    memset(&c->res, 0, sizeof(c->res));
    c->ret = c->bs->drv->co_check(c->bs, &c->res, c->fix, NULL, NULL);
}

/* What strata-img check [-r all] does with the image. */
static void run_check(int fix)
{
    GError *err = NULL;
    json_t *opts = json_pack("{s:s, s:{s:s, s:s}}", "driver", "qcow2",
                             "file", "driver", "file", "filename", path);
    BlockBackend *blk = blk_new_open(NULL, opts, NODE_O_CHECK |
                                     (fix ? NODE_O_RDWR : 0), &err);
    if (!blk) {
        g_clear_error(&err);
        return;
    }
    CheckRun c = { .bs = blk_node(blk), .fix = fix };
    if (c.bs->drv->co_check) {
        co_run_sync(check_co, &c);
        if (c.ret >= 0 && (c.res.corruptions_fixed || c.res.leaks_fixed)) {
            c.fix = 0;
            co_run_sync(check_co, &c);
        }
    }
    blk_unref(blk);
}

/*
 * Read-only, as strata-img info does: the format-specific information
 * (the bitmap directory is read again there) and a read.  A damaged
 * bitmap directory or table never fails this open (only the header can).
 */
static void run_read_only(void)
{
    GError *err = NULL;
    json_t *opts = json_pack("{s:s, s:{s:s, s:s}}", "driver", "qcow2",
                             "file", "driver", "file", "filename", path);
    BlockBackend *blk = blk_new_open(NULL, opts, 0, &err);
    uint8_t buf[4096];

    if (!blk) {
        g_clear_error(&err);
        return;
    }
    BlockNode *bs = blk_node(blk);
    if (bs->drv->get_specific_info) {
        json_decref(bs->drv->get_specific_info(bs, &err));
        g_clear_error(&err);
    }
    if (blk_getlength(blk) >= (int64_t)sizeof(buf)) {
        blk_pread(blk, 0, sizeof(buf), buf, 0);
    }
    blk_unref(blk);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static bool init;
    GError *err = NULL;

    if (!init) {
        snprintf(path, sizeof(path), "/dev/shm/fuzz-qcow2-%d", getpid());
        warn_set_handler(quiet);
        init = true;
    }
    if (!write_input(data, size)) {
        return 0;
    }
    run_check(0);
    run_check(CHECK_FIX_LEAKS | CHECK_FIX_ERRORS);
    if (!write_input(data, size)) {
        return 0;
    }

    run_read_only();
    json_t *opts = json_pack("{s:s, s:{s:s, s:s}, s:s}", "driver", "qcow2",
                             "file", "driver", "file", "filename", path,
                             "l2-cache-size", "128k");
    BlockBackend *blk = blk_new_open(NULL, opts, NODE_O_RDWR, &err);
    if (!blk) {
        g_clear_error(&err);
        unlink(path);
        return 0;
    }
    int64_t len = blk_getlength(blk);
    uint8_t *buf = g_malloc(65536);
    if (len > 0) {
        /* A few spots spread over the image, and its very end. */
        int64_t step = MAX(len / 8, 512);
        for (int64_t off = 0; off < len; off += step) {
            blk_pread(blk, off, MIN(65536, len - off), buf, 0);
        }
        memset(buf, 0x5a, 65536);
        blk_pwrite(blk, 0, MIN(4096, len), buf, 0);
        blk_pwrite(blk, len / 2 / 512 * 512, MIN(65536, len - len / 2 / 512 * 512),
                   buf, 0);
        blk_pwrite_zeroes(blk, 0, MIN(131072, len), REQ_MAY_UNMAP);
        blk_pdiscard(blk, len / 4 / 512 * 512, MIN(65536, len / 4));
        blk_pread(blk, 0, MIN(65536, len), buf, 0);
        blk_flush(blk);
    }
    g_free(buf);
    blk_unref(blk);
    unlink(path);
    return 0;
}
