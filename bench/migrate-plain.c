/*
 * The yardstick of bench/migrate-bench, in C: the best plain writer and
 * reader of the shape issue 14 names, with no format, no scan, no channel
 * logic.  Prints the seconds it took.
 *
 *   migrate-plain write RAMFILE OUT BYTES THREADS
 *       fallocate BYTES, THREADS threads taking the next 8 MiB piece from a
 *       shared counter and writing it with one O_DIRECT pwrite from the
 *       RAM file's shared mapping (the first BYTES of it), fdatasync.
 *   migrate-plain read FILE BYTES [RAMFILE]
 *       the first BYTES of FILE, sequential 8 MiB O_DIRECT reads, one at a
 *       time, into one buffer; or, with RAMFILE (created, BYTES long),
 *       each piece into its place in RAMFILE's shared mapping: the same
 *       reads plus the cost of memory a restore fills for the first time.
 */
#define _GNU_SOURCE
#include <fcntl.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#define CHUNK (8u << 20)

static const uint8_t *src;
static int out;
static uint64_t total;
static _Atomic uint64_t next;

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

static void die(const char *what)
{
    perror(what);
    exit(1);
}

static void *writer(void *arg)
{
    (void)arg;
    for (;;) {
        uint64_t off = atomic_fetch_add(&next, CHUNK);
        if (off >= total) {
            return NULL;
        }
        size_t n = total - off < CHUNK ? total - off : CHUNK;
        if (pwrite(out, src + off, n, (off_t)off) != (ssize_t)n) {
            die("pwrite");
        }
    }
}

static int do_write(char **argv)
{
    int threads = atoi(argv[5]);
    pthread_t th[64];
    int mfd = open(argv[2], O_RDONLY);

    total = strtoull(argv[4], NULL, 0);
    if (mfd < 0 || threads < 1 || threads > 64) {
        die("ram file");
    }
    src = mmap(NULL, total, PROT_READ, MAP_SHARED, mfd, 0);
    out = open(argv[3], O_WRONLY | O_CREAT | O_TRUNC | O_DIRECT, 0600);
    if (src == MAP_FAILED || out < 0) {
        die("open");
    }
    double t0 = now();
    if (fallocate(out, 0, 0, (off_t)total) < 0) {
        die("fallocate");
    }
    for (int i = 0; i < threads; i++) {
        pthread_create(&th[i], NULL, writer, NULL);
    }
    for (int i = 0; i < threads; i++) {
        pthread_join(th[i], NULL);
    }
    if (fdatasync(out) < 0) {
        die("fdatasync");
    }
    printf("%.6f\n", now() - t0);
    return 0;
}

static int do_read(char **argv)
{
    int fd = open(argv[2], O_RDONLY | O_DIRECT);
    uint64_t left = strtoull(argv[3], NULL, 0), off = 0;
    uint8_t *buf, *ram = NULL;

    if (argv[4]) {
        int rfd = open(argv[4], O_RDWR | O_CREAT | O_TRUNC, 0600);
        if (rfd < 0 || ftruncate(rfd, (off_t)(left + CHUNK)) < 0) {
            die("ram file");
        }
        ram = mmap(NULL, left + CHUNK, PROT_READ | PROT_WRITE, MAP_SHARED,
                   rfd, 0);
        buf = ram;
    } else {
        buf = mmap(NULL, CHUNK, PROT_READ | PROT_WRITE,
                   MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    }
    if (fd < 0 || buf == MAP_FAILED) {
        die("open");
    }
    double t0 = now();
    while (left) {
        size_t n = left < CHUNK ? left : CHUNK;
        ssize_t r = pread(fd, ram ? ram + off : buf, CHUNK, (off_t)off);
        if (r <= 0) {
            die("pread");
        }
        off += (uint64_t)r;
        left -= (uint64_t)r < n ? (uint64_t)r : n;
    }
    printf("%.6f\n", now() - t0);
    return 0;
}

int main(int argc, char **argv)
{
    if (argc == 6 && strcmp(argv[1], "write") == 0) {
        return do_write(argv);
    }
    if ((argc == 4 || argc == 5) && strcmp(argv[1], "read") == 0) {
        return do_read(argv);
    }
    fprintf(stderr, "usage: migrate-plain write RAMFILE OUT BYTES THREADS\n"
                    "       migrate-plain read FILE BYTES [RAMFILE]\n");
    return 1;
}
