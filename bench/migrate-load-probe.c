/*
 * Restores of a mapped-ram file into a new memfd, timed inside one
 * process (no daemon, no QMP): CPU seconds (user + sys, getrusage) per
 * GiB of mr_load, for comparing the load paths of migration/channels.c
 * through their environment variables (STRATA_MIGRATION_LOAD_VIA_MAP=1,
 * STRATA_MIGRATION_LOAD_UFFD=1, STRATA_MIGRATION_LOAD_PIECE, ...).
 *
 *   cd build && cc -O2 -I../include $(pkg-config --cflags glib-2.0) \
 *     -o /tmp/probe ../bench/migrate-load-probe.c libstrata.a \
 *     $(pkg-config --libs glib-2.0 gio-2.0 jansson liburing zlib libzstd) \
 *     -laio -pthread
 *   /tmp/probe FILE MIB CHANNELS REPS     (TAG=name labels the lines)
 *
 * FILE is saved first (direct-io, CHANNELS channels) if it does not
 * exist: MIB MiB of RAM, 1 page in 8 zero, the others data; the restores
 * read it with direct-io.  A measuring tool, not a test.
 */
#define _GNU_SOURCE
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "strata/mapped-ram.h"

static double now(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + t.tv_nsec / 1e9;
}

static double cpu(void)
{
    struct rusage r;
    getrusage(RUSAGE_SELF, &r);
    return (double)(r.ru_utime.tv_sec + r.ru_stime.tv_sec) +
           (r.ru_utime.tv_usec + r.ru_stime.tv_usec) / 1e6;
}

static void open_target(MrTarget *t, int *fds, const char *path,
                        unsigned ch, bool save)
{
    t->fd = save ? open(path, O_RDWR | O_CREAT | O_TRUNC, 0600)
                 : open(path, O_RDONLY);
    for (unsigned i = 0; i < ch; i++) {
        fds[i] = open(path, (save ? O_WRONLY : O_RDONLY) | O_DIRECT);
    }
    t->chan_fds = fds;
    t->nb_chan = ch;
    t->offset = 0;
}

static void close_target(MrTarget *t)
{
    close(t->fd);
    for (unsigned i = 0; i < t->nb_chan; i++) {
        close(t->chan_fds[i]);
    }
}

int main(int argc, char **argv)
{
    if (argc != 5) {
        fprintf(stderr, "usage: %s FILE MIB CHANNELS REPS\n", argv[0]);
        return 2;
    }
    const char *path = argv[1];
    uint64_t size = strtoull(argv[2], NULL, 10) << 20;
    unsigned ch = (unsigned)atoi(argv[3]);
    int reps = atoi(argv[4]);
    int fds[64];
    struct stat st;
    GError *err = NULL;
    atomic_bool cancel = false;
    MrParams p = { .channels = ch, .direct_io = true };
    const char *tag = getenv("TAG") ? getenv("TAG") : "";

    if (ch < 1 || ch > 64) {
        return 2;
    }
    if (stat(path, &st) != 0) {
        uint8_t *src = mmap(NULL, size, PROT_READ | PROT_WRITE,
                            MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        for (uint64_t pg = 0; pg < size / 4096; pg++) {
            uint64_t *q = (uint64_t *)(src + pg * 4096);
            for (int i = 0; pg % 8 && i < 512; i++) {
                q[i] = pg * 2654435761u + (uint64_t)i;
            }
        }
        MrBlock b = { .id = "ram0", .used = size, .host = src };
        MrStats s = { 0 };
        MrTarget t;
        open_target(&t, fds, path, ch, true);
        if (!mr_save(&t, &b, 1, &p, &s, &cancel, &err)) {
            fprintf(stderr, "%s\n", err->message);
            return 1;
        }
        close_target(&t);
        munmap(src, size);
    }
    for (int r = 0; r < reps; r++) {
        int mfd = memfd_create("ram", MFD_CLOEXEC);
        if (mfd < 0 || ftruncate(mfd, (off_t)size) < 0) {
            return 1;
        }
        uint8_t *dst = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_SHARED,
                            mfd, 0);
        MrStats s = { 0 };
        MrTarget t;
        open_target(&t, fds, path, ch, false);
        MrFileInfo *info = mr_file_parse(t.fd, 0, &err);
        if (!info || info->nb_blocks != 1 || info->blocks[0].used != size) {
            fprintf(stderr, "%s\n", err ? err->message : "not MIB MiB");
            return 1;
        }
        info->blocks[0].host = dst;
        info->blocks[0].has_fd = true;
        info->blocks[0].fd = mfd;
        double c0 = cpu(), t0 = now();
        if (!mr_load(&t, info, &p, &s, &cancel, &err)) {
            fprintf(stderr, "%s\n", err->message);
            return 1;
        }
        double t1 = now(), c1 = cpu();
        printf("%s channels %u: %.2f s, CPU %.3f s/GiB, pages via fd %llu\n",
               tag, ch, t1 - t0, (c1 - c0) / ((double)size / (1 << 30)),
               (unsigned long long)s.via_fd);
        fflush(stdout);
        mr_file_info_free(info);
        munmap(dst, size);
        close(mfd);
        close_target(&t);
    }
    return 0;
}
