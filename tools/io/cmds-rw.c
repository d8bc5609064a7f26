/*
 * strata-io data commands: read, readv, write, writev, aio_read, aio_write,
 * aio_flush, discard.  Asynchronous requests print their result from the
 * completion callback, whenever the loop runs next (a later command, a
 * sleep, aio_flush or the final drain), as qemu-io does.
 */
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "strata/iov.h"
#include "../common/tool-common.h"
#include "io.h"

/* QEMU's BDRV_REQUEST_MAX_BYTES: INT_MAX rounded down to 512 bytes. */
#define REQUEST_MAX_BYTES ((int64_t)(INT_MAX >> 9) << 9)

static struct timespec now(void)
{
    struct timespec t;

    clock_gettime(CLOCK_MONOTONIC, &t);
    return t;
}

/*
 * Parse the lengths of a vectored request and build one buffer cut into
 * that many pieces.  Prints qemu-io's message and returns NULL on error.
 */
static void *create_iovec(BlockBackend *blk, IOVec *qiov, char **argv,
                          int nr_iov, int pattern)
{
    int64_t *sizes = g_new0(int64_t, nr_iov > 0 ? nr_iov : 1);
    int64_t count = 0;
    uint8_t *buf = NULL, *p;

    for (int i = 0; i < nr_iov; i++) {
        int64_t len = io_cvtnum(argv[i]);

        if (len < 0) {
            goto out;
        }
        if (len > REQUEST_MAX_BYTES) {
            printf("Argument '%s' exceeds maximum size %" PRIu64 "\n",
                   argv[i], (uint64_t)REQUEST_MAX_BYTES);
            goto out;
        }
        if (count > REQUEST_MAX_BYTES - len) {
            printf("The total number of bytes exceed the maximum size %"
                   PRIu64 "\n", (uint64_t)REQUEST_MAX_BYTES);
            goto out;
        }
        sizes[i] = len;
        count += len;
    }

    iovec_init(qiov, nr_iov);
    buf = p = io_alloc(blk, count, pattern);
    if (!buf) {
        printf("Cannot allocate %" PRId64 " bytes\n", count);
        iovec_destroy(qiov);
        goto out;
    }
    for (int i = 0; i < nr_iov; i++) {
        iovec_add(qiov, p, sizes[i]);
        p += sizes[i];
    }
out:
    g_free(sizes);
    return buf;
}

/*
 * -P on the read commands: are the `len` bytes at buf, read from `offset`,
 * all equal to pattern?  A mismatch is printed but still reported, as in
 * qemu-io, so the caller only adjusts its return value.
 */
static bool verify_pattern(const uint8_t *buf, int pattern, int64_t offset,
                           int64_t len)
{
    for (int64_t i = 0; i < len; i++) {
        if (buf[i] != pattern) {
            printf("Pattern verification failed at offset %" PRId64 ", %"
                   PRId64 " bytes\n", offset, len);
            return false;
        }
    }
    return true;
}

/*
 * The "off len" that ends read, write and discard.  A length is refused
 * above QEMU's request limit unless limit_hint is NULL (write -n: the
 * request may be split); the hint completes qemu-io's message.  Prints
 * qemu-io's message and returns a negative errno on error.
 */
static int parse_offset_length(char **argv, const char *limit_hint,
                               int64_t *offset, int64_t *count)
{
    *offset = io_cvtnum(argv[0]);
    if (*offset < 0) {
        return (int)*offset;
    }
    *count = io_cvtnum(argv[1]);
    if (*count < 0) {
        return (int)*count;
    }
    if (limit_hint && *count > REQUEST_MAX_BYTES) {
        printf("length cannot exceed %" PRIu64 "%s, given %s\n",
               (uint64_t)REQUEST_MAX_BYTES, limit_hint, argv[1]);
        return -EINVAL;
    }
    return 0;
}

/* VM state (-b) and compressed (-c) requests work in whole sectors. */
static bool sector_aligned(int64_t offset, int64_t count)
{
    if (offset & 511) {
        printf("%" PRId64 " is not a sector-aligned value for 'offset'\n",
               offset);
        return false;
    }
    if (count & 511) {
        printf("%" PRId64 " is not a sector-aligned value for 'count'\n",
               count);
        return false;
    }
    return true;
}

/* ---- read ---- */

static void read_help(void)
{
    printf(
"\n"
" reads a range of bytes from the given offset\n"
"\n"
" Example:\n"
" 'read -v 512 1k' - dumps 1 kilobyte read from 512 bytes into the file\n"
"\n"
" Reads a segment of the currently open file, optionally dumping it to the\n"
" standard output stream (with -v option) for subsequent inspection.\n"
" -b, -- read from the VM state rather than the virtual disk\n"
" -C, -- report statistics in a machine parsable format\n"
" -l, -- length for pattern verification (only with -P)\n"
" -p, -- ignored for backwards compatibility\n"
" -P, -- use a pattern to verify read data\n"
" -q, -- quiet mode, do not show I/O statistics\n"
" -s, -- start offset for pattern verification (only with -P)\n"
" -v, -- dump buffer to standard output\n"
"\n");
}

static int read_f(BlockBackend *blk, int argc, char **argv)
{
    struct timespec t1, t2;
    bool Cflag = false, qflag = false, vflag = false;
    bool Pflag = false, sflag = false, lflag = false, bflag = false;
    int64_t offset, count, total = 0;
    int64_t pattern_offset = 0, pattern_count = 0;
    int pattern = 0;
    uint8_t *buf;
    int c, ret;

    while ((c = getopt(argc, argv, "bCl:pP:qs:v")) != -1) {
        switch (c) {
        case 'b':
            bflag = true;
            break;
        case 'C':
            Cflag = true;
            break;
        case 'l':
            lflag = true;
            pattern_count = tool_cvtnum(optarg);
            if (pattern_count < 0) {
                io_print_cvtnum_err(pattern_count, optarg);
                return (int)pattern_count;
            }
            break;
        case 'p':
            break; /* accepted for compatibility */
        case 'P':
            Pflag = true;
            pattern = io_parse_pattern(optarg);
            if (pattern < 0) {
                return -EINVAL;
            }
            break;
        case 'q':
            qflag = true;
            break;
        case 's':
            sflag = true;
            pattern_offset = tool_cvtnum(optarg);
            if (pattern_offset < 0) {
                io_print_cvtnum_err(pattern_offset, optarg);
                return (int)pattern_offset;
            }
            break;
        case 'v':
            vflag = true;
            break;
        default:
            io_command_usage(&io_cmd_read);
            return -EINVAL;
        }
    }
    if (optind != argc - 2) {
        io_command_usage(&io_cmd_read);
        return -EINVAL;
    }

    offset = tool_cvtnum(argv[optind]);
    if (offset < 0) {
        io_print_cvtnum_err(offset, argv[optind]);
        return (int)offset;
    }
    optind++;
    count = tool_cvtnum(argv[optind]);
    if (count < 0) {
        io_print_cvtnum_err(count, argv[optind]);
        return (int)count;
    } else if (count > REQUEST_MAX_BYTES) {
        printf("length cannot exceed %" PRIu64 ", given %s\n",
               (uint64_t)REQUEST_MAX_BYTES, argv[optind]);
        return -EINVAL;
    }

    if (!Pflag && (lflag || sflag)) {
        io_command_usage(&io_cmd_read);
        return -EINVAL;
    }
    if (!lflag) {
        pattern_count = count - pattern_offset;
    }
    int64_t pattern_end;
    if (pattern_count < 0 ||
        __builtin_add_overflow(pattern_count, pattern_offset, &pattern_end) ||
        pattern_end > count) {
        printf("pattern verification range exceeds end of read data\n");
        return -EINVAL;
    }

    if (bflag) {
        if (offset & 511) {
            printf("%" PRId64 " is not a sector-aligned value for 'offset'\n",
                   offset);
            return -EINVAL;
        }
        if (count & 511) {
            printf("%" PRId64 " is not a sector-aligned value for 'count'\n",
                   count);
            return -EINVAL;
        }
    }

    buf = io_alloc(blk, count, 0xab);
    if (!buf) {
        printf("read failed: %s\n", strerror(ENOMEM));
        return -ENOMEM;
    }
    t1 = now();
    if (bflag) {
        /* No driver offers VM state access. */
        ret = -ENOTSUP;
    } else {
        ret = blk_pread(blk, offset, count, buf, 0);
        total = count;
    }
    t2 = now();
    if (ret < 0) {
        printf("read failed: %s\n", strerror(-ret));
        goto out;
    }
    ret = 0;

    if (Pflag && !buffer_matches(buf + pattern_offset, pattern,
                                 pattern_count)) {
        printf("Pattern verification failed at offset %" PRId64 ", %" PRId64
               " bytes\n", offset + pattern_offset, pattern_count);
        ret = -EINVAL;
    }
    if (qflag) {
        goto out;
    }
    if (vflag) {
        io_dump_buffer(buf, offset, count);
    }
    t2 = io_tsub(t2, t1);
    io_print_report("read", &t2, offset, count, total, 1, Cflag);
out:
    io_free(buf);
    return ret;
}

const IoCmd io_cmd_read = {
    .name = "read", .altname = "r", .func = read_f,
    .argmin = 2, .argmax = -1,
    .args = "[-abCqv] [-P pattern [-s off] [-l len]] off len",
    .oneline = "reads a number of bytes at a specified offset",
    .help = read_help,
};

/* ---- readv ---- */

static void readv_help(void)
{
    printf(
"\n"
" reads a range of bytes from the given offset into multiple buffers\n"
"\n"
" Example:\n"
" 'readv -v 512 1k 1k ' - dumps 2 kilobytes read from 512 bytes into the file\n"
"\n"
" Reads a segment of the currently open file, optionally dumping it to the\n"
" standard output stream (with -v option) for subsequent inspection.\n"
" Uses multiple iovec buffers if more than one byte range is specified.\n"
" -C, -- report statistics in a machine parsable format\n"
" -P, -- use a pattern to verify read data\n"
" -v, -- dump buffer to standard output\n"
" -q, -- quiet mode, do not show I/O statistics\n"
"\n");
}

static int readv_f(BlockBackend *blk, int argc, char **argv)
{
    struct timespec t1, t2;
    bool Cflag = false, qflag = false, vflag = false, Pflag = false;
    int pattern = 0;
    int64_t offset;
    IOVec qiov;
    uint8_t *buf;
    int c, ret;

    while ((c = getopt(argc, argv, "CP:qv")) != -1) {
        switch (c) {
        case 'C':
            Cflag = true;
            break;
        case 'P':
            Pflag = true;
            pattern = io_parse_pattern(optarg);
            if (pattern < 0) {
                return -EINVAL;
            }
            break;
        case 'q':
            qflag = true;
            break;
        case 'v':
            vflag = true;
            break;
        default:
            io_command_usage(&io_cmd_readv);
            return -EINVAL;
        }
    }
    if (optind > argc - 2) {
        io_command_usage(&io_cmd_readv);
        return -EINVAL;
    }

    offset = tool_cvtnum(argv[optind]);
    if (offset < 0) {
        io_print_cvtnum_err(offset, argv[optind]);
        return (int)offset;
    }
    optind++;

    buf = create_iovec(blk, &qiov, &argv[optind], argc - optind, 0xab);
    if (!buf) {
        return -EINVAL;
    }
    t1 = now();
    ret = blk_preadv(blk, offset, qiov.size, &qiov, 0);
    t2 = now();
    if (ret < 0) {
        printf("readv failed: %s\n", strerror(-ret));
        goto out;
    }
    ret = 0;

    if (Pflag && !buffer_matches(buf, pattern, qiov.size)) {
        printf("Pattern verification failed at offset %" PRId64 ", %zu bytes\n",
               offset, qiov.size);
        ret = -EINVAL;
    }
    if (qflag) {
        goto out;
    }
    if (vflag) {
        io_dump_buffer(buf, offset, qiov.size);
    }
    t2 = io_tsub(t2, t1);
    io_print_report("read", &t2, offset, qiov.size, qiov.size, 1, Cflag);
out:
    io_free(buf);
    iovec_destroy(&qiov);
    return ret;
}

const IoCmd io_cmd_readv = {
    .name = "readv", .func = readv_f,
    .argmin = 2, .argmax = -1,
    .args = "[-Cqv] [-P pattern] off len [len..]",
    .oneline = "reads a number of bytes at a specified offset",
    .help = readv_help,
};

/* ---- write ---- */

static void write_help(void)
{
    printf(
"\n"
" writes a range of bytes from the given offset\n"
"\n"
" Example:\n"
" 'write 512 1k' - writes 1 kilobyte at 512 bytes into the open file\n"
"\n"
" Writes into a segment of the currently open file, using a buffer\n"
" filled with a set pattern (0xcdcdcdcd).\n"
" -b, -- write to the VM state rather than the virtual disk\n"
" -c, -- write compressed data with blk_write_compressed\n"
" -f, -- use Force Unit Access semantics\n"
" -n, -- with -z, don't allow slow fallback\n"
" -p, -- ignored for backwards compatibility\n"
" -P, -- use different pattern to fill file\n"
" -s, -- use a pattern file to fill the write buffer\n"
" -C, -- report statistics in a machine parsable format\n"
" -q, -- quiet mode, do not show I/O statistics\n"
" -u, -- with -z, allow unmapping\n"
" -z, -- write zeroes using blk_co_pwrite_zeroes\n"
"\n");
}

/*
 * A buffer of len bytes filled with the contents of file_name, repeated as
 * often as needed.  Errors are printed like qemu-io's (perror style).
 */
static uint8_t *alloc_from_file(BlockBackend *blk, size_t len,
                                const char *file_name)
{
    FILE *f = fopen(file_name, "r");
    uint8_t *buf;
    size_t pattern_len;

    if (!f) {
        perror(file_name);
        return NULL;
    }
    buf = io_alloc(blk, len, 0);
    if (!buf) {
        fclose(f);
        fprintf(stderr, "%s: %s\n", file_name, strerror(ENOMEM));
        return NULL;
    }
    pattern_len = fread(buf, 1, len, f);
    if (ferror(f)) {
        perror(file_name);
        goto error;
    }
    if (pattern_len == 0) {
        fprintf(stderr, "%s: file is empty\n", file_name);
        goto error;
    }
    fclose(f);
    for (size_t done = pattern_len; done < len; done += pattern_len) {
        memcpy(buf + done, buf, MIN(pattern_len, len - done));
    }
    return buf;

error:
    fclose(f);
    io_free(buf);
    return NULL;
}

static int write_f(BlockBackend *blk, int argc, char **argv)
{
    struct timespec t1, t2;
    bool Cflag = false, qflag = false, bflag = false;
    bool Pflag = false, zflag = false, cflag = false, sflag = false;
    int flags = 0;
    int pattern = 0xcd;
    const char *file_name = NULL;
    int64_t offset, count, total = 0;
    uint8_t *buf = NULL;
    int c, ret;

    while ((c = getopt(argc, argv, "bcCfnpP:qs:uz")) != -1) {
        switch (c) {
        case 'b':
            bflag = true;
            break;
        case 'c':
            cflag = true;
            break;
        case 'C':
            Cflag = true;
            break;
        case 'f':
            flags |= REQ_FUA;
            break;
        case 'n':
            flags |= REQ_NO_FALLBACK;
            break;
        case 'p':
            break; /* accepted for compatibility */
        case 'P':
            Pflag = true;
            pattern = io_parse_pattern(optarg);
            if (pattern < 0) {
                return -EINVAL;
            }
            break;
        case 'q':
            qflag = true;
            break;
        case 's':
            sflag = true;
            file_name = optarg;
            break;
        case 'u':
            flags |= REQ_MAY_UNMAP;
            break;
        case 'z':
            zflag = true;
            break;
        default:
            io_command_usage(&io_cmd_write);
            return -EINVAL;
        }
    }
    if (optind != argc - 2) {
        io_command_usage(&io_cmd_write);
        return -EINVAL;
    }
    if (bflag && zflag) {
        printf("-b and -z cannot be specified at the same time\n");
        return -EINVAL;
    }
    if ((flags & REQ_FUA) && (bflag || cflag)) {
        printf("-f and -b or -c cannot be specified at the same time\n");
        return -EINVAL;
    }
    if ((flags & REQ_NO_FALLBACK) && !zflag) {
        printf("-n requires -z to be specified\n");
        return -EINVAL;
    }
    if ((flags & REQ_MAY_UNMAP) && !zflag) {
        printf("-u requires -z to be specified\n");
        return -EINVAL;
    }
    if (zflag + Pflag + sflag > 1) {
        printf("Only one of -z, -P, and -s can be specified at the same time\n");
        return -EINVAL;
    }

    offset = tool_cvtnum(argv[optind]);
    if (offset < 0) {
        io_print_cvtnum_err(offset, argv[optind]);
        return (int)offset;
    }
    optind++;
    count = tool_cvtnum(argv[optind]);
    if (count < 0) {
        io_print_cvtnum_err(count, argv[optind]);
        return (int)count;
    } else if (count > REQUEST_MAX_BYTES && !(flags & REQ_NO_FALLBACK)) {
        printf("length cannot exceed %" PRIu64 " without -n, given %s\n",
               (uint64_t)REQUEST_MAX_BYTES, argv[optind]);
        return -EINVAL;
    }
    if (bflag || cflag) {
        if (offset & 511) {
            printf("%" PRId64 " is not a sector-aligned value for 'offset'\n",
                   offset);
            return -EINVAL;
        }
        if (count & 511) {
            printf("%" PRId64 " is not a sector-aligned value for 'count'\n",
                   count);
            return -EINVAL;
        }
    }

    if (!zflag) {
        buf = sflag ? alloc_from_file(blk, count, file_name)
                    : io_alloc(blk, count, pattern);
        if (!buf) {
            if (!sflag) {
                printf("write failed: %s\n", strerror(ENOMEM));
            }
            return -EINVAL;
        }
    }

    t1 = now();
    if (bflag || cflag) {
        /* Neither VM state nor compressed writes are offered by a driver. */
        ret = -ENOTSUP;
    } else if (zflag) {
        ret = blk_pwrite_zeroes(blk, offset, count, flags);
    } else {
        ret = blk_pwrite(blk, offset, count, buf, flags);
    }
    total = count;
    t2 = now();
    if (ret < 0) {
        printf("write failed: %s\n", strerror(-ret));
        goto out;
    }
    ret = 0;
    if (qflag) {
        goto out;
    }
    t2 = io_tsub(t2, t1);
    io_print_report("wrote", &t2, offset, count, total, 1, Cflag);
out:
    io_free(buf);
    return ret;
}

const IoCmd io_cmd_write = {
    .name = "write", .altname = "w", .func = write_f,
    .perm = BLK_PERM_WRITE,
    .argmin = 2, .argmax = -1,
    .args = "[-bcCfnquz] [-P pattern | -s source_file] off len",
    .oneline = "writes a number of bytes at a specified offset",
    .help = write_help,
};

/* ---- writev ---- */

static void writev_help(void)
{
    printf(
"\n"
" writes a range of bytes from the given offset source from multiple buffers\n"
"\n"
" Example:\n"
" 'writev 512 1k 1k' - writes 2 kilobytes at 512 bytes into the open file\n"
"\n"
" Writes into a segment of the currently open file, using a buffer\n"
" filled with a set pattern (0xcdcdcdcd).\n"
" -P, -- use different pattern to fill file\n"
" -C, -- report statistics in a machine parsable format\n"
" -f, -- use Force Unit Access semantics\n"
" -q, -- quiet mode, do not show I/O statistics\n"
"\n");
}

static int writev_f(BlockBackend *blk, int argc, char **argv)
{
    struct timespec t1, t2;
    bool Cflag = false, qflag = false;
    int flags = 0, pattern = 0xcd;
    int64_t offset;
    IOVec qiov;
    uint8_t *buf;
    int c, ret;

    while ((c = getopt(argc, argv, "CfqP:")) != -1) {
        switch (c) {
        case 'C':
            Cflag = true;
            break;
        case 'f':
            flags |= REQ_FUA;
            break;
        case 'q':
            qflag = true;
            break;
        case 'P':
            pattern = io_parse_pattern(optarg);
            if (pattern < 0) {
                return -EINVAL;
            }
            break;
        default:
            io_command_usage(&io_cmd_writev);
            return -EINVAL;
        }
    }
    if (optind > argc - 2) {
        io_command_usage(&io_cmd_writev);
        return -EINVAL;
    }

    offset = tool_cvtnum(argv[optind]);
    if (offset < 0) {
        io_print_cvtnum_err(offset, argv[optind]);
        return (int)offset;
    }
    optind++;

    buf = create_iovec(blk, &qiov, &argv[optind], argc - optind, pattern);
    if (!buf) {
        return -EINVAL;
    }
    t1 = now();
    ret = blk_pwritev(blk, offset, qiov.size, &qiov, flags);
    t2 = now();
    if (ret < 0) {
        printf("writev failed: %s\n", strerror(-ret));
        goto out;
    }
    ret = 0;
    if (qflag) {
        goto out;
    }
    t2 = io_tsub(t2, t1);
    io_print_report("wrote", &t2, offset, qiov.size, qiov.size, 1, Cflag);
out:
    io_free(buf);
    iovec_destroy(&qiov);
    return ret;
}

const IoCmd io_cmd_writev = {
    .name = "writev", .func = writev_f,
    .perm = BLK_PERM_WRITE,
    .argmin = 2, .argmax = -1,
    .args = "[-Cfq] [-P pattern] off len [len..]",
    .oneline = "writes a number of bytes at a specified offset",
    .help = writev_help,
};

/* ---- aio_read / aio_write ---- */

typedef struct AioCtx {
    IOVec qiov;
    int64_t offset;
    int64_t size;
    uint8_t *buf;
    bool qflag, vflag, Cflag, Pflag, zflag;
    int pattern;
    struct timespec t1;
} AioCtx;

static void aio_ctx_free(AioCtx *ctx)
{
    if (!ctx->zflag) {
        io_free(ctx->buf);
        iovec_destroy(&ctx->qiov);
    }
    g_free(ctx);
}

static void aio_write_done(void *opaque, int ret)
{
    AioCtx *ctx = opaque;
    struct timespec t2 = now();

    if (ret < 0) {
        printf("aio_write failed: %s\n", strerror(-ret));
    } else if (!ctx->qflag) {
        t2 = io_tsub(t2, ctx->t1);
        io_print_report("wrote", &t2, ctx->offset, ctx->size, ctx->size, 1,
                        ctx->Cflag);
    }
    aio_ctx_free(ctx);
}

static void aio_read_done(void *opaque, int ret)
{
    AioCtx *ctx = opaque;
    struct timespec t2 = now();

    if (ret < 0) {
        printf("readv failed: %s\n", strerror(-ret));
        goto out;
    }
    if (ctx->Pflag && !buffer_matches(ctx->buf, ctx->pattern, ctx->size)) {
        printf("Pattern verification failed at offset %" PRId64 ", %" PRId64
               " bytes\n", ctx->offset, ctx->size);
    }
    if (ctx->qflag) {
        goto out;
    }
    if (ctx->vflag) {
        io_dump_buffer(ctx->buf, ctx->offset, ctx->size);
    }
    t2 = io_tsub(t2, ctx->t1);
    io_print_report("read", &t2, ctx->offset, ctx->size, ctx->size, 1,
                    ctx->Cflag);
out:
    aio_ctx_free(ctx);
}

static void aio_read_help(void)
{
    printf(
"\n"
" asynchronously reads a range of bytes from the given offset\n"
"\n"
" Example:\n"
" 'aio_read -v 512 1k 1k ' - dumps 2 kilobytes read from 512 bytes into the file\n"
"\n"
" Reads a segment of the currently open file, optionally dumping it to the\n"
" standard output stream (with -v option) for subsequent inspection.\n"
" The read is performed asynchronously and the aio_flush command must be\n"
" used to ensure all outstanding aio requests have been completed.\n"
" Note that due to its asynchronous nature, this command will be\n"
" considered successful once the request is submitted, independently\n"
" of potential I/O errors or pattern mismatches.\n"
" -C, -- report statistics in a machine parsable format\n"
" -P, -- use a pattern to verify read data\n"
" -i, -- treat request as invalid, for exercising stats\n"
" -v, -- dump buffer to standard output\n"
" -q, -- quiet mode, do not show I/O statistics\n"
"\n");
}

static int aio_read_f(BlockBackend *blk, int argc, char **argv)
{
    AioCtx *ctx = g_new0(AioCtx, 1);
    int c;

    while ((c = getopt(argc, argv, "CP:iqv")) != -1) {
        switch (c) {
        case 'C':
            ctx->Cflag = true;
            break;
        case 'P':
            ctx->Pflag = true;
            ctx->pattern = io_parse_pattern(optarg);
            if (ctx->pattern < 0) {
                g_free(ctx);
                return -EINVAL;
            }
            break;
        case 'i':
            /* Only accounting would notice; there is no accounting yet. */
            printf("injecting invalid read request\n");
            g_free(ctx);
            return 0;
        case 'q':
            ctx->qflag = true;
            break;
        case 'v':
            ctx->vflag = true;
            break;
        default:
            g_free(ctx);
            io_command_usage(&io_cmd_aio_read);
            return -EINVAL;
        }
    }
    if (optind > argc - 2) {
        g_free(ctx);
        io_command_usage(&io_cmd_aio_read);
        return -EINVAL;
    }

    ctx->offset = tool_cvtnum(argv[optind]);
    if (ctx->offset < 0) {
        int ret = (int)ctx->offset;
        io_print_cvtnum_err(ctx->offset, argv[optind]);
        g_free(ctx);
        return ret;
    }
    optind++;

    ctx->buf = create_iovec(blk, &ctx->qiov, &argv[optind], argc - optind,
                            0xab);
    if (!ctx->buf) {
        g_free(ctx);
        return -EINVAL;
    }
    ctx->size = ctx->qiov.size;
    ctx->t1 = now();
    blk_aio_preadv(blk, ctx->offset, &ctx->qiov, 0, aio_read_done, ctx);
    return 0;
}

const IoCmd io_cmd_aio_read = {
    .name = "aio_read", .func = aio_read_f,
    .argmin = 2, .argmax = -1,
    .args = "[-Ciqv] [-P pattern] off len [len..]",
    .oneline = "asynchronously reads a number of bytes",
    .help = aio_read_help,
};

static void aio_write_help(void)
{
    printf(
"\n"
" asynchronously writes a range of bytes from the given offset source\n"
" from multiple buffers\n"
"\n"
" Example:\n"
" 'aio_write 512 1k 1k' - writes 2 kilobytes at 512 bytes into the open file\n"
"\n"
" Writes into a segment of the currently open file, using a buffer\n"
" filled with a set pattern (0xcdcdcdcd).\n"
" The write is performed asynchronously and the aio_flush command must be\n"
" used to ensure all outstanding aio requests have been completed.\n"
" Note that due to its asynchronous nature, this command will be\n"
" considered successful once the request is submitted, independently\n"
" of potential I/O errors or pattern mismatches.\n"
" -P, -- use different pattern to fill file\n"
" -C, -- report statistics in a machine parsable format\n"
" -f, -- use Force Unit Access semantics\n"
" -i, -- treat request as invalid, for exercising stats\n"
" -q, -- quiet mode, do not show I/O statistics\n"
" -u, -- with -z, allow unmapping\n"
" -z, -- write zeroes using blk_aio_pwrite_zeroes\n"
"\n");
}

static int aio_write_f(BlockBackend *blk, int argc, char **argv)
{
    AioCtx *ctx = g_new0(AioCtx, 1);
    int pattern = 0xcd;
    int flags = 0;
    int c;

    while ((c = getopt(argc, argv, "CfiP:quz")) != -1) {
        switch (c) {
        case 'C':
            ctx->Cflag = true;
            break;
        case 'f':
            flags |= REQ_FUA;
            break;
        case 'q':
            ctx->qflag = true;
            break;
        case 'u':
            flags |= REQ_MAY_UNMAP;
            break;
        case 'P':
            /* qemu-io 7.2 accepts -P together with -z: the pattern is unused. */
            pattern = io_parse_pattern(optarg);
            if (pattern < 0) {
                g_free(ctx);
                return -EINVAL;
            }
            break;
        case 'i':
            printf("injecting invalid write request\n");
            g_free(ctx);
            return 0;
        case 'z':
            ctx->zflag = true;
            break;
        default:
            g_free(ctx);
            io_command_usage(&io_cmd_aio_write);
            return -EINVAL;
        }
    }
    if (optind > argc - 2) {
        g_free(ctx);
        io_command_usage(&io_cmd_aio_write);
        return -EINVAL;
    }
    if (ctx->zflag && optind != argc - 2) {
        printf("-z supports only a single length parameter\n");
        g_free(ctx);
        return -EINVAL;
    }
    if ((flags & REQ_MAY_UNMAP) && !ctx->zflag) {
        printf("-u requires -z to be specified\n");
        g_free(ctx);
        return -EINVAL;
    }

    ctx->offset = tool_cvtnum(argv[optind]);
    if (ctx->offset < 0) {
        int ret = (int)ctx->offset;
        io_print_cvtnum_err(ctx->offset, argv[optind]);
        g_free(ctx);
        return ret;
    }
    optind++;

    if (ctx->zflag) {
        int64_t count = tool_cvtnum(argv[optind]);
        if (count < 0) {
            io_print_cvtnum_err(count, argv[optind]);
            g_free(ctx);
            return (int)count;
        }
        ctx->size = count;
        ctx->t1 = now();
        blk_aio_pwrite_zeroes(blk, ctx->offset, count, flags, aio_write_done,
                              ctx);
    } else {
        ctx->buf = create_iovec(blk, &ctx->qiov, &argv[optind], argc - optind,
                                pattern);
        if (!ctx->buf) {
            g_free(ctx);
            return -EINVAL;
        }
        ctx->size = ctx->qiov.size;
        ctx->t1 = now();
        blk_aio_pwritev(blk, ctx->offset, &ctx->qiov, flags, aio_write_done,
                        ctx);
    }
    return 0;
}

const IoCmd io_cmd_aio_write = {
    .name = "aio_write", .func = aio_write_f,
    .perm = BLK_PERM_WRITE,
    .argmin = 2, .argmax = -1,
    .args = "[-Cfiquz] [-P pattern] off len [len..]",
    .oneline = "asynchronously writes a number of bytes",
    .help = aio_write_help,
};

static int aio_flush_f(BlockBackend *blk, int argc, char **argv)
{
    blk_drain(blk);
    return 0;
}

const IoCmd io_cmd_aio_flush = {
    .name = "aio_flush", .func = aio_flush_f,
    .oneline = "completes all outstanding aio requests",
};

/* ---- discard ---- */

static void discard_help(void)
{
    printf(
"\n"
" discards a range of bytes from the given offset\n"
"\n"
" Example:\n"
" 'discard 512 1k' - discards 1 kilobyte from 512 bytes into the file\n"
"\n"
" Discards a segment of the currently open file.\n"
" -C, -- report statistics in a machine parsable format\n"
" -q, -- quiet mode, do not show I/O statistics\n"
"\n");
}

static int discard_f(BlockBackend *blk, int argc, char **argv)
{
    struct timespec t1, t2;
    bool Cflag = false, qflag = false;
    int64_t offset, bytes;
    int c, ret;

    while ((c = getopt(argc, argv, "Cq")) != -1) {
        switch (c) {
        case 'C':
            Cflag = true;
            break;
        case 'q':
            qflag = true;
            break;
        default:
            io_command_usage(&io_cmd_discard);
            return -EINVAL;
        }
    }
    if (optind != argc - 2) {
        io_command_usage(&io_cmd_discard);
        return -EINVAL;
    }

    offset = tool_cvtnum(argv[optind]);
    if (offset < 0) {
        io_print_cvtnum_err(offset, argv[optind]);
        return (int)offset;
    }
    optind++;
    bytes = tool_cvtnum(argv[optind]);
    if (bytes < 0) {
        io_print_cvtnum_err(bytes, argv[optind]);
        return (int)bytes;
    } else if (bytes > REQUEST_MAX_BYTES) {
        printf("length cannot exceed %" PRIu64 ", given %s\n",
               (uint64_t)REQUEST_MAX_BYTES, argv[optind]);
        return -EINVAL;
    }

    t1 = now();
    ret = blk_pdiscard(blk, offset, bytes);
    t2 = now();
    if (ret < 0) {
        printf("discard failed: %s\n", strerror(-ret));
        return ret;
    }
    if (!qflag) {
        t2 = io_tsub(t2, t1);
        io_print_report("discard", &t2, offset, bytes, bytes, 1, Cflag);
    }
    return 0;
}

const IoCmd io_cmd_discard = {
    .name = "discard", .altname = "d", .func = discard_f,
    .perm = BLK_PERM_WRITE,
    .argmin = 2, .argmax = -1,
    .args = "[-Cq] off len",
    .oneline = "discards a number of bytes at a specified offset",
    .help = discard_help,
};
