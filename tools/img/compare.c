/*
 * strata-img compare [--object objectdef] [--image-opts] [-f fmt] [-F fmt]
 *                    [-T src_cache] [-p | --progress=json|human] [-q] [-s]
 *                    [-U] filename1 filename2
 *
 * qemu-img compare: walks both images by block status (of the whole
 * backing chain), skips what both say reads as zeroes, compares what both
 * allocate and checks that what only one allocates is zero; then, if the
 * sizes differ, checks that the larger image's tail is zero.  Exit codes
 * are qemu-img's: 0 identical, 1 different, 2 open or option errors, 3 a
 * block status error, 4 a read error.
 *
 * Mismatches are reported at the start of the first differing 512-byte
 * sector, counted from the start of the chunk being compared, as qemu-img
 * does; with -s (strict) the block status words themselves must be equal,
 * so the status is computed with QEMU's rules for chains (see
 * status_above()).
 */
#include <errno.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "strata/block-ops.h"
#include "strata/error.h"
#include "strata/opts.h"
#include "strata/units.h"
#include "img.h"

#define IO_BUF_SIZE (2 * 1024 * 1024)
#define SECTOR 512

/* ---- Block status of the whole chain ---- */

static int block_status(BlockBackend *blk, int64_t offset, int64_t bytes,
                        int64_t *pnum)
{
    /* bdrv_block_status_above(bs, NULL, ...), with want_zero. */
    int ret = node_block_status_above(blk_node(blk), NULL, false, true, offset,
                                      bytes, pnum, NULL, NULL, NULL);

    if (ret >= 0 && *pnum <= 0) {
        /* A status that covers nothing would never advance. */
        return -EIO;
    }
    return ret;
}

/* ---- Comparing ---- */

typedef struct Compare {
    BlockBackend *blk[2];
    const char *filename[2];
    uint8_t *buf[2];
    bool quiet;
    ImgProgress progress;
} Compare;

static void qprintf(const Compare *c, const char *fmt, ...) G_GNUC_PRINTF(2, 3);
static void qprintf(const Compare *c, const char *fmt, ...)
{
    va_list ap;

    if (!c->quiet) {
        va_start(ap, fmt);
        vprintf(fmt, ap);
        va_end(ap);
    }
}

/* Offset of the first 512-byte block holding a non-zero byte, or -1. */
static int64_t find_nonzero(const uint8_t *buf, int64_t n)
{
    for (int64_t i = 0; i < n; i += SECTOR) {
        int64_t len = MIN(SECTOR, n - i);
        if (buf[i] || memcmp(buf + i, buf + i + 1, len - 1)) {
            return i;
        }
    }
    return -1;
}

/*
 * Whether the first 512-byte block differs, and in *pnum how far the
 * blocks keep the same answer.
 */
static bool compare_buffers(const uint8_t *a, const uint8_t *b, int64_t n,
                            int64_t *pnum)
{
    int64_t i = MIN(n, SECTOR);
    bool res = memcmp(a, b, i) != 0;

    while (i < n) {
        int64_t len = MIN(n - i, SECTOR);
        if ((memcmp(a + i, b + i, len) != 0) != res) {
            break;
        }
        i += len;
    }
    *pnum = i;
    return res;
}

static int read_chunk(Compare *c, int which, int64_t offset, int64_t bytes,
                      uint8_t *buf)
{
    int ret = blk_pread(c->blk[which], offset, bytes, buf, 0);

    if (ret < 0) {
        tool_error("Error while reading offset %" PRId64 " of %s: %s",
                   offset, c->filename[which], g_strerror(-ret));
        return 4;
    }
    return 0;
}

/* 0 if the range of image `which` reads as zeroes, 1 (reported) if not. */
static int check_empty(Compare *c, int which, int64_t offset, int64_t bytes)
{
    int ret = read_chunk(c, which, offset, bytes, c->buf[0]);
    int64_t idx;

    if (ret) {
        return ret;
    }
    idx = find_nonzero(c->buf[0], bytes);
    if (idx >= 0) {
        qprintf(c, "Content mismatch at offset %" PRId64 "!\n", offset + idx);
        return 1;
    }
    return 0;
}

static int status_error(const char *filename)
{
    tool_error("Sector allocation test failed for %s", filename);
    return 3;
}

static int compare_images(Compare *c, bool strict)
{
    int64_t size[2], total, base, offset = 0, chunk;

    for (int i = 0; i < 2; i++) {
        size[i] = blk_getlength(c->blk[i]);
        if (size[i] < 0) {
            tool_error("Can't get size of %s: %s", c->filename[i],
                       g_strerror((int)-size[i]));
            return 4;
        }
    }
    total = MIN(size[0], size[1]);
    base = MAX(size[0], size[1]);
    img_progress_set_bytes(&c->progress, 0, (uint64_t)base);
    img_progress_print(&c->progress, 0, 100);

    if (strict && size[0] != size[1]) {
        qprintf(c, "Strict mode: Image size mismatch!\n");
        return 1;
    }

    while (offset < total) {
        int64_t pnum[2];
        int status[2];
        bool allocated[2];
        int ret;

        for (int i = 0; i < 2; i++) {
            status[i] = block_status(c->blk[i], offset, size[i] - offset,
                                     &pnum[i]);
            if (status[i] < 0) {
                return status_error(c->filename[i]);
            }
            allocated[i] = status[i] & BLOCK_ALLOCATED;
        }
        chunk = MIN(pnum[0], pnum[1]);

        if (strict && status[0] != status[1]) {
            qprintf(c, "Strict mode: Offset %" PRId64
                    " block status mismatch!\n", offset);
            return 1;
        }
        if ((status[0] & BLOCK_ZERO) && (status[1] & BLOCK_ZERO)) {
            /* Both read as zeroes. */
        } else if (allocated[0] == allocated[1]) {
            /* Both unallocated would both be zeroes: only data is left. */
            if (allocated[0]) {
                int64_t same;
                bool differ;

                chunk = MIN(chunk, IO_BUF_SIZE);
                for (int i = 0; i < 2; i++) {
                    ret = read_chunk(c, i, offset, chunk, c->buf[i]);
                    if (ret) {
                        return ret;
                    }
                }
                differ = compare_buffers(c->buf[0], c->buf[1], chunk, &same);
                if (differ || same != chunk) {
                    qprintf(c, "Content mismatch at offset %" PRId64 "!\n",
                            offset + (differ ? 0 : same));
                    return 1;
                }
            }
        } else {
            chunk = MIN(chunk, IO_BUF_SIZE);
            ret = check_empty(c, allocated[0] ? 0 : 1, offset, chunk);
            if (ret) {
                return ret;
            }
        }
        offset += chunk;
        img_progress_set_bytes(&c->progress, (uint64_t)offset, (uint64_t)base);
        img_progress_print(&c->progress, ((float)chunk / base) * 100, 100);
    }

    if (size[0] != size[1]) {
        int over = size[0] > size[1] ? 0 : 1;

        qprintf(c, "Warning: Image size mismatch!\n");
        while (offset < base) {
            int ret = block_status(c->blk[over], offset, base - offset, &chunk);

            if (ret < 0) {
                return status_error(c->filename[over]);
            }
            if ((ret & BLOCK_ALLOCATED) && !(ret & BLOCK_ZERO)) {
                chunk = MIN(chunk, IO_BUF_SIZE);
                ret = check_empty(c, over, offset, chunk);
                if (ret) {
                    return ret;
                }
            }
            offset += chunk;
            img_progress_set_bytes(&c->progress, (uint64_t)offset,
                                   (uint64_t)base);
            img_progress_print(&c->progress, ((float)chunk / base) * 100, 100);
        }
    }

    /*
     * The float sum of the steps may stop short of 100, where qemu-img's
     * meter prints no last step; a JSON reader needs done == total.
     */
    if (c->progress.json_op && c->progress.json_done != (uint64_t)base) {
        img_progress_print(&c->progress, 100.f, 0);
    }
    qprintf(c, "Images are identical.\n");
    return 0;
}

static void *alloc_buffer(void)
{
    void *p = NULL;

    /* Aligned for O_DIRECT (-T none) reads straight into it. */
    if (posix_memalign(&p, 4096, IO_BUF_SIZE)) {
        return NULL;
    }
    return p;
}

int img_compare(int argc, char **argv)
{
    static const struct option long_options[] = {
        { "help", no_argument, NULL, 'h' },
        { "object", required_argument, NULL, IMG_OPTION_OBJECT },
        { "image-opts", no_argument, NULL, IMG_OPTION_IMAGE_OPTS },
        { "force-share", no_argument, NULL, 'U' },
        { "progress", required_argument, NULL, IMG_OPTION_PROGRESS },
        { NULL, 0, NULL, 0 },
    };
    ImgOpenSpec spec[2] = { { 0 }, { 0 } };
    const char *cache = "writeback";
    bool progress = false, strict = false, json = false;
    Compare c = { 0 };
    int ch, flags = 0, ret;
    bool writethrough;

    while ((ch = img_getopt(argc, argv, ":hf:F:T:pqsU", long_options)) !=
           -1) {
        switch (ch) {
        case 'f':
            spec[0].fmt = optarg;
            break;
        case 'F':
            spec[1].fmt = optarg;
            break;
        case 'T':
            cache = optarg;
            break;
        case 'p':
            progress = true;
            break;
        case IMG_OPTION_PROGRESS:
            if (!img_progress_parse(optarg, &progress, &json)) {
                return 2;
            }
            break;
        case 'q':
            c.quiet = true;
            break;
        case 's':
            strict = true;
            break;
        default:
            /* -U, --image-opts and --object: once, for both images. */
            img_open_option(ch, optarg, &spec[0]);
            spec[1].force_share = spec[0].force_share;
            spec[1].image_opts = spec[0].image_opts;
        }
    }
    if (c.quiet) {
        progress = false;
    }
    if (optind != argc - 2) {
        img_error_exit("Expecting two image file names");
    }
    c.filename[0] = argv[optind];
    c.filename[1] = argv[optind + 1];

    img_progress_init_mode(&c.progress, progress, json, "compare", 2.0f);
    if (tool_parse_cache_mode(cache, &flags, &writethrough) < 0) {
        tool_error("Invalid source cache option: %s", cache);
        img_progress_end(&c.progress);
        return 2;
    }
    for (int i = 0; i < 2; i++) {
        spec[i].flags = flags;
        spec[i].writethrough = writethrough;
        c.blk[i] = img_open(c.filename[i], &spec[i]);
        if (!c.blk[i]) {
            if (i) {
                blk_unref(c.blk[0]);
            }
            img_progress_end(&c.progress);
            return 2;
        }
    }
    c.buf[0] = alloc_buffer();
    c.buf[1] = alloc_buffer();
    if (!c.buf[0] || !c.buf[1]) {
        tool_error("Could not allocate the comparison buffers");
        ret = 4;
    } else {
        ret = compare_images(&c, strict);
    }
    free(c.buf[0]);
    free(c.buf[1]);
    blk_unref(c.blk[1]);
    blk_unref(c.blk[0]);
    img_progress_end(&c.progress);
    return ret;
}
