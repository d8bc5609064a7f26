/*
 * 4 KiB random reads through an NBD export with a fixed number of requests
 * in flight, over libnbd's asynchronous API (fio's nbd engine is not in
 * Debian).  Prints "IOPS N" after running for the given seconds.
 *
 *   nbd-randread URI DEPTH SECONDS
 */
#include <libnbd.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

static uint64_t done;

static int on_done(void *opaque, int *error)
{
    done++;
    return 1;       /* retire the command */
}

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

int main(int argc, char **argv)
{
    if (argc != 4) {
        fprintf(stderr, "usage: nbd-randread URI DEPTH SECONDS\n");
        return 1;
    }
    int depth = atoi(argv[2]);
    double secs = atof(argv[3]);
    struct nbd_handle *h = nbd_create();
    if (!h || nbd_connect_uri(h, argv[1]) < 0) {
        fprintf(stderr, "%s\n", nbd_get_error());
        return 1;
    }
    int64_t blocks = nbd_get_size(h) / 4096;
    char *bufs = malloc((size_t)depth * 4096);
    uint64_t seed = 88172645463325252ull, issued = 0;
    double start = now(), end = start + secs;

    while (now() < end) {
        while (nbd_aio_in_flight(h) < depth) {
            seed ^= seed << 13; seed ^= seed >> 7; seed ^= seed << 17;
            int64_t blk = seed % blocks;
            nbd_completion_callback cb = { .callback = on_done };
            if (nbd_aio_pread(h, bufs + (issued % depth) * 4096, 4096,
                              blk * 4096, cb, 0) < 0) {
                fprintf(stderr, "%s\n", nbd_get_error());
                return 1;
            }
            issued++;
        }
        if (nbd_poll(h, -1) < 0) {
            fprintf(stderr, "%s\n", nbd_get_error());
            return 1;
        }
    }
    double elapsed = now() - start;
    while (nbd_aio_in_flight(h) > 0) {
        nbd_poll(h, -1);
    }
    printf("IOPS %.0f\n", done / elapsed);
    nbd_shutdown(h, 0);
    nbd_close(h);
    free(bufs);
    return 0;
}
