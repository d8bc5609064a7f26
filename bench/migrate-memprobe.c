/*
 * What new shared memory costs a restore, without a restore: the kernel
 * CPU time of giving out and filling memory of a new file in /dev/shm
 * (as a restore's memory backend), the way the restore does it and the
 * ways it could (docs/performance.md "Migration to a file").
 *
 *   cc -O2 -o /tmp/memprobe bench/migrate-memprobe.c
 *   memprobe touch FILE MIB
 *       MADV_POPULATE_WRITE over a new shared mapping of FILE, 64 MiB at
 *       a time; per GiB: seconds, system CPU, MiB the kernel scanned to
 *       reclaim memory (kswapd and direct).  A GiB that costs more system
 *       CPU with nothing reclaimed is memory the machine gives the guest
 *       on first use.
 *   memprobe fill FILE MIB MODE
 *       fills FILE (MIB long, new) with 4 MiB pieces of data; CPU seconds
 *       per GiB:
 *         populate  MADV_POPULATE_WRITE only (the restore's kernel work;
 *                   its reads then land by DMA)
 *         copy      populate, then memcpy of the piece
 *         falloc    fallocate of the piece, then populate and memcpy
 *         pwrite    pwrite of the piece into FILE (no mapping)
 */
#define _GNU_SOURCE
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <time.h>
#include <unistd.h>

#ifndef MADV_POPULATE_WRITE
#define MADV_POPULATE_WRITE 23
#endif

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

static double cpu(int sys_only)
{
    struct rusage r;
    getrusage(RUSAGE_SELF, &r);
    double s = r.ru_stime.tv_sec + r.ru_stime.tv_usec / 1e6;
    return sys_only ? s : s + r.ru_utime.tv_sec + r.ru_utime.tv_usec / 1e6;
}

static long long reclaim_scanned(void)
{
    FILE *f = fopen("/proc/vmstat", "r");
    char k[64];
    long long v, t = 0;
    while (f && fscanf(f, "%63s %lld", k, &v) == 2) {
        if (!strcmp(k, "pgscan_kswapd") || !strcmp(k, "pgscan_direct")) {
            t += v;
        }
    }
    if (f) {
        fclose(f);
    }
    return t;
}

static void die(const char *what)
{
    perror(what);
    exit(1);
}

static uint8_t *map_new(const char *path, size_t n, int *fdp)
{
    int fd = open(path, O_RDWR | O_CREAT | O_TRUNC, 0600);
    if (fd < 0 || ftruncate(fd, (off_t)n) < 0) {
        die(path);
    }
    uint8_t *p = mmap(NULL, n, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    if (p == MAP_FAILED) {
        die("mmap");
    }
    *fdp = fd;
    return p;
}

static int do_touch(const char *path, size_t n)
{
    const size_t step = 64u << 20, gib = 1u << 30;
    int fd;
    uint8_t *p = map_new(path, n, &fd);
    double t = now(), s = cpu(1);
    long long sc = reclaim_scanned();

    for (size_t o = 0; o < n; o += step) {
        if (madvise(p + o, step < n - o ? step : n - o,
                    MADV_POPULATE_WRITE) < 0) {
            die("madvise");
        }
        if ((o + step) % gib == 0 || o + step >= n) {
            long long sc2 = reclaim_scanned();
            printf("GiB %zu: %.2f s, %.2f s sys, reclaim scanned %lld MiB\n",
                   (o + step + gib - 1) / gib, now() - t, cpu(1) - s,
                   (sc2 - sc) * 4096 >> 20);
            fflush(stdout);
            t = now();
            s = cpu(1);
            sc = sc2;
        }
    }
    unlink(path);
    return 0;
}

static int do_fill(const char *path, size_t n, const char *mode)
{
    const size_t piece = 4u << 20;
    uint8_t *buf = aligned_alloc(4096, piece);
    int fd;
    uint8_t *p = map_new(path, n, &fd);

    memset(buf, 0x5a, piece);
    double c = cpu(0), t = now();
    for (size_t o = 0; o < n; o += piece) {
        if (!strcmp(mode, "pwrite")) {
            if (pwrite(fd, buf, piece, (off_t)o) != (ssize_t)piece) {
                die("pwrite");
            }
            continue;
        }
        if (!strcmp(mode, "falloc") && fallocate(fd, 0, (off_t)o, piece)) {
            die("fallocate");
        }
        if (madvise(p + o, piece, MADV_POPULATE_WRITE) < 0) {
            die("madvise");
        }
        if (strcmp(mode, "populate")) {
            memcpy(p + o, buf, piece);
        }
    }
    printf("%-8s %.2f s CPU per GiB (%.2f s wall per GiB)\n", mode,
           (cpu(0) - c) * (1u << 30) / n, (now() - t) * (1u << 30) / n);
    unlink(path);
    return 0;
}

int main(int argc, char **argv)
{
    if (argc == 4 && !strcmp(argv[1], "touch")) {
        return do_touch(argv[2], strtoull(argv[3], NULL, 0) << 20);
    }
    if (argc == 5 && !strcmp(argv[1], "fill")) {
        return do_fill(argv[2], (strtoull(argv[3], NULL, 0) << 20) &
                       ~(size_t)((4u << 20) - 1), argv[4]);
    }
    fprintf(stderr, "usage: memprobe touch FILE MIB\n"
                    "       memprobe fill FILE MIB "
                    "populate|copy|falloc|pwrite\n");
    return 1;
}
