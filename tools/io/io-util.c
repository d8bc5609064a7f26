/*
 * Helpers shared by the strata-io commands: numbers as qemu-io parses and
 * prints them, the statistics report, I/O buffers and hex dumps.  They
 * reproduce qemu-io's own helpers, odd corners included, because their
 * output is compared byte for byte.
 */
#include <ctype.h>
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "strata/iov.h"
#include "../common/tool-common.h"
#include "io.h"

bool io_misalign;

void io_print_cvtnum_err(int64_t rc, const char *arg)
{
    switch (rc) {
    case -EINVAL:
        printf("Parsing error: non-numeric argument,"
               " or extraneous/unrecognized suffix -- %s\n", arg);
        break;
    case -ERANGE:
        printf("Parsing error: argument too large -- %s\n", arg);
        break;
    default:
        printf("Parsing error: %s\n", arg);
    }
}

int64_t io_cvtnum(const char *arg)
{
    int64_t n = tool_cvtnum(arg);

    if (n < 0) {
        io_print_cvtnum_err(n, arg);
    }
    return n;
}

/*
 * Human sizes as qemu-io prints them: three decimals, with a ".000" cut
 * off wherever it first appears (so "1 KiB" but "1.500 KiB"), bytes with
 * %f.  Kept literally, odd corners included, for identical output.
 */
void io_cvtstr(double value, char *str, size_t size)
{
    static const struct {
        double unit;
        const char *suffix;
    } units[] = {
        { 0x1p60, " EiB" }, { 0x1p50, " PiB" }, { 0x1p40, " TiB" },
        { 0x1p30, " GiB" }, { 0x1p20, " MiB" }, { 0x1p10, " KiB" },
    };
    const char *suffix = " bytes";
    char *trim;
    size_t i;

    for (i = 0; i < G_N_ELEMENTS(units); i++) {
        if (value >= units[i].unit) {
            suffix = units[i].suffix;
            snprintf(str, size - 4, "%.3f", value / units[i].unit);
            break;
        }
    }
    if (i == G_N_ELEMENTS(units)) {
        snprintf(str, size - 6, "%f", value);
    }
    trim = strstr(str, ".000");
    if (trim) {
        strcpy(trim, suffix);
    } else {
        strcat(str, suffix);
    }
}

static struct timespec tsub(struct timespec t1, struct timespec t2)
{
    t1.tv_nsec -= t2.tv_nsec;
    if (t1.tv_nsec < 0) {
        t1.tv_nsec += 1000000000;
        t1.tv_sec--;
    }
    t1.tv_sec -= t2.tv_sec;
    return t1;
}

static double tdiv(double value, struct timespec tv)
{
    return value / (tv.tv_sec + tv.tv_nsec / 1e9);
}

static void timestr(const struct timespec *tv, char *ts, size_t size,
                    bool verbose)
{
    double frac = tv->tv_nsec / 1e9;
    unsigned sec = (unsigned)tv->tv_sec;

    if (verbose || tv->tv_sec) {
        snprintf(ts, size, "%u:%02u:%05.2f", sec / 3600, (sec % 3600) / 60,
                 (sec % 60) + frac);
    } else {
        snprintf(ts, size, "%05.2f sec", frac);
    }
}

void io_print_report(const char *op, struct timespec start,
                     struct timespec end, int64_t offset, int64_t count,
                     bool Cflag)
{
    /*
     * qemu-io's report has room for several ops and short transfers; a
     * strata-io command is always one request that moved all its bytes.
     */
    const int64_t total = count;
    const int cnt = 1;
    struct timespec t = tsub(end, start);
    char s1[64], s2[64], ts[64];

    timestr(&t, ts, sizeof(ts), Cflag);
    if (!Cflag) {
        io_cvtstr((double)total, s1, sizeof(s1));
        io_cvtstr(tdiv((double)total, t), s2, sizeof(s2));
        printf("%s %" PRId64 "/%" PRId64 " bytes at offset %" PRId64 "\n",
               op, total, count, offset);
        printf("%s, %d ops; %s (%s/sec and %.4f ops/sec)\n",
               s1, cnt, ts, s2, tdiv((double)cnt, t));
    } else {
        /* bytes,ops,time,bytes/sec,ops/sec */
        printf("%" PRId64 ",%d,%s,%.3f,%.3f\n", total, cnt, ts,
               tdiv((double)total, t), tdiv((double)cnt, t));
    }
}

#define MISALIGN_OFFSET 16

/* Buffers are aligned for O_DIRECT, or deliberately not with -m. */
void *io_alloc(BlockBackend *blk, size_t len, int pattern)
{
    size_t extra = io_misalign ? MISALIGN_OFFSET : 0;
    uint8_t *buf = aligned_alloc_buf(4096, len + extra + 1);

    if (!buf) {
        return NULL;
    }
    memset(buf, pattern, len + extra);
    return buf + extra;
}

void io_free(void *p)
{
    if (p) {
        aligned_free((uint8_t *)p - (io_misalign ? MISALIGN_OFFSET : 0));
    }
}

void io_dump_buffer(const void *buffer, int64_t offset, int64_t len)
{
    const uint8_t *p = buffer;

    for (int64_t i = 0; i < len; i += 16) {
        const uint8_t *s = p;
        int j;

        printf("%08" PRIx64 ":  ", (uint64_t)(offset + i));
        for (j = 0; j < 16 && i + j < len; j++, p++) {
            printf("%02x ", *p);
        }
        printf(" ");
        for (j = 0; j < 16 && i + j < len; j++, s++) {
            putchar(isalnum(*s) ? *s : '.');
        }
        printf("\n");
    }
}

/* A byte for memset: 0..255 in any strtol base, nothing trailing. */
int io_parse_pattern(const char *arg)
{
    char *end = NULL;
    long pattern = strtol(arg, &end, 0);

    if (pattern < 0 || pattern > 255 || *end != '\0') {
        printf("%s is not a valid pattern byte\n", arg);
        return -1;
    }
    return (int)pattern;
}
