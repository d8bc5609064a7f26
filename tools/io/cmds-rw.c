/*
 * strata-io data commands: read, readv, write, writev, aio_read, aio_write,
 * aio_flush, discard.  Asynchronous requests print their result from the
 * completion callback, whenever the loop runs next (a later command, a
 * sleep, aio_flush or the final drain), as qemu-io does.
 *
 * Every command fills a Request from its command line with the shared
 * parsers below, so that options, limits and messages that qemu-io spells
 * alike in all of them are written once.
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

/*
 * One data command's request.  The aio commands allocate it and keep it
 * until their completion callback has reported.
 */
typedef struct Request {
    /* The options that mean the same in every data command. */
    bool Cflag;         /* -C: statistics as CSV */
    bool qflag;         /* -q: no statistics */
    bool vflag;         /* -v: dump the data read */
    bool Pflag;         /* -P given: fill or verify with pattern */
    int pattern;
    int64_t offset, count;
    uint8_t *buf;       /* NULL for zero writes and discard */
    IOVec qiov;         /* the vectored commands' pieces of buf */
    struct timespec t1; /* when the request was started */
} Request;

static struct timespec now(void)
{
    struct timespec t;

    clock_gettime(CLOCK_MONOTONIC, &t);
    return t;
}

static void request_cleanup(Request *r)
{
    io_free(r->buf);
    iovec_destroy(&r->qiov);
}

/*
 * For the default branch of a command's getopt switch: -C, -q, -v and
 * -P pattern (getopt only passes those the command's string lists); any
 * other character is an option the command does not know, so its usage is
 * printed.  Returns 0 or a negative errno.
 */
static int parse_request_option(int c, Request *r, const IoCmd *cmd)
{
    switch (c) {
    case 'C':
        r->Cflag = true;
        return 0;
    case 'q':
        r->qflag = true;
        return 0;
    case 'v':
        r->vflag = true;
        return 0;
    case 'P':
        r->Pflag = true;
        r->pattern = io_parse_pattern(optarg);
        return r->pattern < 0 ? -EINVAL : 0;
    default:
        return io_usage_error(cmd);
    }
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
 * The "off len [len..]" of the vectored commands: r->offset, and r->buf
 * cut into one piece of r->qiov per length, filled with fill.  Prints
 * qemu-io's message and returns a negative errno on error.
 */
static int parse_vectored(BlockBackend *blk, char **argv, int nargs, int fill,
                          Request *r)
{
    r->offset = io_cvtnum(argv[0]);
    if (r->offset < 0) {
        return (int)r->offset;
    }
    r->buf = create_iovec(blk, &r->qiov, &argv[1], nargs - 1, fill);
    if (!r->buf) {
        return -EINVAL;
    }
    r->count = r->qiov.size;
    return 0;
}

/*
 * The "off len" that ends read, write and discard.  A length is refused
 * above QEMU's request limit unless limit_hint is NULL (zero writes with
 * -n or from aio_write: nothing is allocated and the request may be split);
 * the hint completes qemu-io's message.  Prints qemu-io's message and
 * returns a negative errno on error.
 */
static int parse_offset_length(char **argv, const char *limit_hint,
                               Request *r)
{
    r->offset = io_cvtnum(argv[0]);
    if (r->offset < 0) {
        return (int)r->offset;
    }
    r->count = io_cvtnum(argv[1]);
    if (r->count < 0) {
        return (int)r->count;
    }
    if (limit_hint && r->count > REQUEST_MAX_BYTES) {
        printf("length cannot exceed %" PRIu64 "%s, given %s\n",
               (uint64_t)REQUEST_MAX_BYTES, limit_hint, argv[1]);
        return -EINVAL;
    }
    return 0;
}

/* VM state (-b) and compressed (-c) requests work in whole sectors. */
static bool sector_aligned(const Request *r)
{
    if (r->offset & 511) {
        printf("%" PRId64 " is not a sector-aligned value for 'offset'\n",
               r->offset);
        return false;
    }
    if (r->count & 511) {
        printf("%" PRId64 " is not a sector-aligned value for 'count'\n",
               r->count);
        return false;
    }
    return true;
}

/*
 * -P on the read commands: are the len bytes that start skip bytes into
 * the data read all equal to the pattern?  A mismatch is printed, and the
 * statistics still follow, as in qemu-io.  True without -P.
 */
static bool verify_pattern(const Request *r, int64_t skip, int64_t len)
{
    if (!r->Pflag) {
        return true;
    }
    for (int64_t i = 0; i < len; i++) {
        if (r->buf[skip + i] != r->pattern) {
            printf("Pattern verification failed at offset %" PRId64 ", %"
                   PRId64 " bytes\n", r->offset + skip, len);
            return false;
        }
    }
    return true;
}

/* A request that succeeded, done at t2: -v data, then the statistics. */
static void report_done(const Request *r, const char *op, struct timespec t2)
{
    if (r->qflag) {
        return;
    }
    if (r->vflag) {
        io_dump_buffer(r->buf, r->offset, r->count);
    }
    io_print_report(op, r->t1, t2, r->offset, r->count, r->Cflag);
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
    Request r = { 0 };
    struct timespec t2;
    bool sflag = false, lflag = false, bflag = false;
    int64_t pattern_offset = 0, pattern_count = 0, pattern_end;
    int c, ret;

    while ((c = getopt(argc, argv, "bCl:pP:qs:v")) != -1) {
        switch (c) {
        case 'b':
            bflag = true;
            break;
        case 'l':
            lflag = true;
            pattern_count = io_cvtnum(optarg);
            if (pattern_count < 0) {
                return (int)pattern_count;
            }
            break;
        case 'p':
            break; /* accepted for compatibility */
        case 's':
            sflag = true;
            pattern_offset = io_cvtnum(optarg);
            if (pattern_offset < 0) {
                return (int)pattern_offset;
            }
            break;
        default:
            ret = parse_request_option(c, &r, &io_cmd_read);
            if (ret < 0) {
                return ret;
            }
        }
    }
    if (optind != argc - 2) {
        return io_usage_error(&io_cmd_read);
    }
    ret = parse_offset_length(&argv[optind], "", &r);
    if (ret < 0) {
        return ret;
    }
    if (!r.Pflag && (lflag || sflag)) {
        return io_usage_error(&io_cmd_read);
    }
    if (!lflag) {
        pattern_count = r.count - pattern_offset;
    }
    if (pattern_count < 0 ||
        __builtin_add_overflow(pattern_count, pattern_offset, &pattern_end) ||
        pattern_end > r.count) {
        printf("pattern verification range exceeds end of read data\n");
        return -EINVAL;
    }
    if (bflag && !sector_aligned(&r)) {
        return -EINVAL;
    }

    r.buf = io_alloc(blk, r.count, 0xab);
    if (!r.buf) {
        printf("read failed: %s\n", strerror(ENOMEM));
        return -ENOMEM;
    }
    r.t1 = now();
    ret = bflag ? blk_load_vmstate(blk, r.buf, r.offset, r.count)
                : blk_pread(blk, r.offset, r.count, r.buf, 0);
    t2 = now();
    if (ret < 0) {
        printf("read failed: %s\n", strerror(-ret));
        goto out;
    }
    ret = verify_pattern(&r, pattern_offset, pattern_count) ? 0 : -EINVAL;
    report_done(&r, "read", t2);
out:
    request_cleanup(&r);
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
    Request r = { 0 };
    struct timespec t2;
    int c, ret;

    while ((c = getopt(argc, argv, "CP:qv")) != -1) {
        ret = parse_request_option(c, &r, &io_cmd_readv);
        if (ret < 0) {
            return ret;
        }
    }
    if (optind > argc - 2) {
        return io_usage_error(&io_cmd_readv);
    }
    ret = parse_vectored(blk, &argv[optind], argc - optind, 0xab, &r);
    if (ret < 0) {
        return ret;
    }
    r.t1 = now();
    ret = blk_preadv(blk, r.offset, r.count, &r.qiov, 0);
    t2 = now();
    if (ret < 0) {
        printf("readv failed: %s\n", strerror(-ret));
        goto out;
    }
    ret = verify_pattern(&r, 0, r.count) ? 0 : -EINVAL;
    report_done(&r, "read", t2);
out:
    request_cleanup(&r);
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
    Request r = { .pattern = 0xcd };
    struct timespec t2;
    bool bflag = false, zflag = false, cflag = false, sflag = false;
    int flags = 0;
    const char *file_name = NULL;
    int c, ret;

    while ((c = getopt(argc, argv, "bcCfnpP:qs:uz")) != -1) {
        switch (c) {
        case 'b':
            bflag = true;
            break;
        case 'c':
            cflag = true;
            break;
        case 'f':
            flags |= REQ_FUA;
            break;
        case 'n':
            flags |= REQ_NO_FALLBACK;
            break;
        case 'p':
            break; /* accepted for compatibility */
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
            ret = parse_request_option(c, &r, &io_cmd_write);
            if (ret < 0) {
                return ret;
            }
        }
    }
    if (optind != argc - 2) {
        return io_usage_error(&io_cmd_write);
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
    if (zflag + r.Pflag + sflag > 1) {
        printf("Only one of -z, -P, and -s can be specified at the same time\n");
        return -EINVAL;
    }
    ret = parse_offset_length(&argv[optind],
                              flags & REQ_NO_FALLBACK ? NULL : " without -n",
                              &r);
    if (ret < 0) {
        return ret;
    }
    if ((bflag || cflag) && !sector_aligned(&r)) {
        return -EINVAL;
    }

    if (!zflag) {
        r.buf = sflag ? alloc_from_file(blk, r.count, file_name)
                      : io_alloc(blk, r.count, r.pattern);
        if (!r.buf) {
            if (!sflag) {
                printf("write failed: %s\n", strerror(ENOMEM));
            }
            return -EINVAL;
        }
    }

    r.t1 = now();
    /* QEMU's precedence: -b, then -z (so -c -z writes zeroes), then -c. */
    if (bflag) {
        ret = blk_save_vmstate(blk, r.buf, r.offset, r.count);
    } else if (zflag) {
        ret = blk_pwrite_zeroes(blk, r.offset, r.count, flags);
    } else if (cflag) {
        ret = blk_pwrite(blk, r.offset, r.count, r.buf,
                         flags | REQ_WRITE_COMPRESSED);
    } else {
        ret = blk_pwrite(blk, r.offset, r.count, r.buf, flags);
    }
    t2 = now();
    if (ret < 0) {
        printf("write failed: %s\n", strerror(-ret));
        goto out;
    }
    ret = 0;
    report_done(&r, "wrote", t2);
out:
    request_cleanup(&r);
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
    Request r = { .pattern = 0xcd };
    struct timespec t2;
    int flags = 0;
    int c, ret;

    while ((c = getopt(argc, argv, "CfqP:")) != -1) {
        if (c == 'f') {
            flags |= REQ_FUA;
            continue;
        }
        ret = parse_request_option(c, &r, &io_cmd_writev);
        if (ret < 0) {
            return ret;
        }
    }
    if (optind > argc - 2) {
        return io_usage_error(&io_cmd_writev);
    }
    ret = parse_vectored(blk, &argv[optind], argc - optind, r.pattern, &r);
    if (ret < 0) {
        return ret;
    }
    r.t1 = now();
    ret = blk_pwritev(blk, r.offset, r.count, &r.qiov, flags);
    t2 = now();
    if (ret < 0) {
        printf("writev failed: %s\n", strerror(-ret));
        goto out;
    }
    ret = 0;
    report_done(&r, "wrote", t2);
out:
    request_cleanup(&r);
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

static void aio_write_done(void *opaque, int ret)
{
    Request *r = opaque;
    struct timespec t2 = now();

    if (ret < 0) {
        printf("aio_write failed: %s\n", strerror(-ret));
    } else {
        report_done(r, "wrote", t2);
    }
    request_cleanup(r);
    g_free(r);
}

static void aio_read_done(void *opaque, int ret)
{
    Request *r = opaque;
    struct timespec t2 = now();

    if (ret < 0) {
        printf("readv failed: %s\n", strerror(-ret));
    } else {
        /* The command has long returned: a mismatch is only printed. */
        verify_pattern(r, 0, r->count);
        report_done(r, "read", t2);
    }
    request_cleanup(r);
    g_free(r);
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
    Request *r = g_new0(Request, 1);
    int c, ret;

    while ((c = getopt(argc, argv, "CP:iqv")) != -1) {
        if (c == 'i') {
            /* Only accounting would notice; there is no accounting yet. */
            printf("injecting invalid read request\n");
            ret = 0;
            goto not_submitted;
        }
        ret = parse_request_option(c, r, &io_cmd_aio_read);
        if (ret < 0) {
            goto not_submitted;
        }
    }
    if (optind > argc - 2) {
        ret = io_usage_error(&io_cmd_aio_read);
        goto not_submitted;
    }
    ret = parse_vectored(blk, &argv[optind], argc - optind, 0xab, r);
    if (ret < 0) {
        goto not_submitted;
    }
    r->t1 = now();
    blk_aio_preadv(blk, r->offset, &r->qiov, 0, aio_read_done, r);
    return 0;

not_submitted:
    /* The parsers leave nothing allocated when they fail. */
    g_free(r);
    return ret;
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
    Request *r = g_new0(Request, 1);
    bool zflag = false;
    int flags = 0;
    int c, ret;

    r->pattern = 0xcd;
    while ((c = getopt(argc, argv, "CfiP:quz")) != -1) {
        switch (c) {
        case 'f':
            flags |= REQ_FUA;
            break;
        case 'u':
            flags |= REQ_MAY_UNMAP;
            break;
        case 'i':
            printf("injecting invalid write request\n");
            ret = 0;
            goto not_submitted;
        case 'z':
            zflag = true;
            break;
        default:
            /* qemu-io 7.2 accepts -P with -z: the pattern is unused. */
            ret = parse_request_option(c, r, &io_cmd_aio_write);
            if (ret < 0) {
                goto not_submitted;
            }
        }
    }
    if (optind > argc - 2) {
        ret = io_usage_error(&io_cmd_aio_write);
        goto not_submitted;
    }
    ret = -EINVAL;
    if (zflag && optind != argc - 2) {
        printf("-z supports only a single length parameter\n");
        goto not_submitted;
    }
    if ((flags & REQ_MAY_UNMAP) && !zflag) {
        printf("-u requires -z to be specified\n");
        goto not_submitted;
    }

    if (zflag) {
        ret = parse_offset_length(&argv[optind], NULL, r);
        if (ret < 0) {
            goto not_submitted;
        }
        r->t1 = now();
        blk_aio_pwrite_zeroes(blk, r->offset, r->count, flags, aio_write_done,
                              r);
        return 0;
    }
    ret = parse_vectored(blk, &argv[optind], argc - optind, r->pattern, r);
    if (ret < 0) {
        goto not_submitted;
    }
    r->t1 = now();
    blk_aio_pwritev(blk, r->offset, &r->qiov, flags, aio_write_done, r);
    return 0;

not_submitted:
    /* The parsers leave nothing allocated when they fail. */
    g_free(r);
    return ret;
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
    Request r = { 0 };
    struct timespec t2;
    int c, ret;

    while ((c = getopt(argc, argv, "Cq")) != -1) {
        ret = parse_request_option(c, &r, &io_cmd_discard);
        if (ret < 0) {
            return ret;
        }
    }
    if (optind != argc - 2) {
        return io_usage_error(&io_cmd_discard);
    }
    ret = parse_offset_length(&argv[optind], "", &r);
    if (ret < 0) {
        return ret;
    }

    r.t1 = now();
    ret = blk_pdiscard(blk, r.offset, r.count);
    t2 = now();
    if (ret < 0) {
        printf("discard failed: %s\n", strerror(-ret));
        return ret;
    }
    report_done(&r, "discard", t2);
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
