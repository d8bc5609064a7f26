/*
 * An incremental backup client in C, doing what virtnbdbackup does with a
 * fleecing export: block status of a qemu:dirty-bitmap context over the
 * whole export, then the dirty extents read and written into a file at
 * their offsets.  DEPTH reads in flight (1: one at a time, as
 * virtnbdbackup; more over libnbd's asynchronous API).  Reads are cut at
 * MAX_READ bytes.  bench/fleecing-bench builds it (a Python client spends
 * as long per request as the server does, diluting the comparison).
 *
 *   nbd-pull URI CONTEXT DEPTH OUT-FILE|- [REPEAT]
 *
 * OUT-FILE "-": the data is dropped.  REPEAT (default 1): the reads are
 * done that many times over one connection (the block status once).
 * Prints one line: "bytes B reads N status_s S read_s R total_s T"
 * (bytes and reads of all the repeats; total from connect to the last
 * write).
 */
#include <fcntl.h>
#include <libnbd.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define MAX_READ (32u << 20)
#define STATUS_STEP (1u << 30)

typedef struct {
    uint64_t off, len;
} Run;

typedef struct {
    Run *v;
    size_t n, cap;
    uint64_t pos;           /* where the next extent of the reply starts */
} Runs;

typedef struct {
    int fd;
    char *buf;
    uint64_t off;
    uint32_t len;
    int busy;
} Slot;

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

static void die(const char *what)
{
    fprintf(stderr, "nbd-pull: %s: %s\n", what, nbd_get_error());
    exit(1);
}

static void add_run(Runs *r, uint64_t off, uint64_t len)
{
    if (r->n && r->v[r->n - 1].off + r->v[r->n - 1].len == off) {
        r->v[r->n - 1].len += len;
        return;
    }
    if (r->n == r->cap) {
        r->cap = r->cap ? 2 * r->cap : 1024;
        r->v = realloc(r->v, r->cap * sizeof(*r->v));
        if (!r->v) {
            perror("nbd-pull");
            exit(1);
        }
    }
    r->v[r->n++] = (Run){ off, len };
}

static int on_extents(void *opaque, const char *ctx, uint64_t offset,
                      uint32_t *ent, size_t nr, int *error)
{
    Runs *r = opaque;
    (void)ctx, (void)offset, (void)error;
    for (size_t i = 0; i + 1 < nr; i += 2) {
        if (ent[i + 1] & 1) {       /* NBD_STATE_DIRTY */
            add_run(r, r->pos, ent[i]);
        }
        r->pos += ent[i];
    }
    return 0;
}

static int on_read_done(void *opaque, int *error)
{
    Slot *s = opaque;
    if (*error) {
        fprintf(stderr, "nbd-pull: read at %llu failed: %s\n",
                (unsigned long long)s->off, strerror(*error));
        exit(1);
    }
    if (s->fd >= 0 && pwrite(s->fd, s->buf, s->len, s->off) != s->len) {
        perror("nbd-pull: write");
        exit(1);
    }
    s->busy = 0;
    return 1;
}

int main(int argc, char **argv)
{
    if (argc < 5 || argc > 6) {
        fprintf(stderr, "usage: nbd-pull URI CONTEXT DEPTH OUT-FILE|- "
                "[REPEAT]\n");
        return 1;
    }
    int depth = atoi(argv[3]);
    int repeat = argc > 5 ? atoi(argv[5]) : 1;
    if (depth < 1 || repeat < 1) {
        fprintf(stderr, "nbd-pull: DEPTH and REPEAT must be positive\n");
        return 1;
    }
    int fd = -1;
    if (strcmp(argv[4], "-")) {
        fd = open(argv[4], O_WRONLY | O_CREAT, 0644);
        if (fd < 0) {
            perror(argv[4]);
            return 1;
        }
    }

    double t0 = now();
    struct nbd_handle *h = nbd_create();
    if (!h || nbd_add_meta_context(h, argv[2]) < 0 ||
        nbd_connect_uri(h, argv[1]) < 0) {
        die("connect");
    }
    if (nbd_can_meta_context(h, argv[2]) != 1) {
        fprintf(stderr, "nbd-pull: the server has no context %s\n", argv[2]);
        nbd_close(h);
        return 1;
    }
    int64_t size = nbd_get_size(h);
    if (size < 0) {
        die("size");
    }
    Runs runs = { 0 };
    while (runs.pos < (uint64_t)size) {
        uint64_t left = size - runs.pos;
        uint64_t before = runs.pos;
        nbd_extent_callback cb = { .callback = on_extents, .user_data = &runs };
        if (nbd_block_status(h, left < STATUS_STEP ? left : STATUS_STEP,
                             runs.pos, cb, 0) < 0) {
            die("block status");
        }
        if (runs.pos == before) {
            fprintf(stderr, "nbd-pull: empty block status reply\n");
            return 1;
        }
    }
    double t1 = now();

    Slot *slots = calloc(depth, sizeof(*slots));
    for (int i = 0; i < depth; i++) {
        slots[i].fd = fd;
        slots[i].buf = malloc(MAX_READ);
        if (!slots[i].buf) {
            perror("nbd-pull");
            return 1;
        }
    }
    uint64_t bytes = 0, reads = 0;
    for (int rep = 0; rep < repeat; rep++) {
        for (size_t i = 0; i < runs.n; i++) {
            for (uint64_t p = runs.v[i].off;
                 p < runs.v[i].off + runs.v[i].len; p += MAX_READ) {
                uint64_t end = runs.v[i].off + runs.v[i].len;
                uint32_t n = end - p < MAX_READ ? end - p : MAX_READ;
                if (depth == 1) {
                    if (nbd_pread(h, slots[0].buf, n, p, 0) < 0) {
                        die("read");
                    }
                    if (fd >= 0 && pwrite(fd, slots[0].buf, n, p) != n) {
                        perror("nbd-pull: write");
                        return 1;
                    }
                } else {
                    int k;
                    for (;;) {
                        for (k = 0; k < depth && slots[k].busy; k++) {
                        }
                        if (k < depth) {
                            break;
                        }
                        if (nbd_poll(h, -1) < 0) {
                            die("poll");
                        }
                    }
                    slots[k].off = p;
                    slots[k].len = n;
                    slots[k].busy = 1;
                    nbd_completion_callback cb = {
                        .callback = on_read_done, .user_data = &slots[k],
                    };
                    if (nbd_aio_pread(h, slots[k].buf, n, p, cb, 0) < 0) {
                        die("read");
                    }
                }
                bytes += n;
                reads++;
            }
        }
        while (nbd_aio_in_flight(h) > 0) {
            if (nbd_poll(h, -1) < 0) {
                die("poll");
            }
        }
    }
    double t2 = now();
    if (nbd_shutdown(h, 0) < 0) {
        die("shutdown");
    }
    nbd_close(h);
    if (fd >= 0 && close(fd) < 0) {
        perror("nbd-pull: close");
        return 1;
    }
    printf("bytes %llu reads %llu status_s %.6f read_s %.6f total_s %.6f\n",
           (unsigned long long)bytes, (unsigned long long)reads, t1 - t0,
           t2 - t1, t2 - t0);
    for (int i = 0; i < depth; i++) {
        free(slots[i].buf);
    }
    free(slots);
    free(runs.v);
    return 0;
}
