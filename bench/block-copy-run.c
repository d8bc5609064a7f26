/*
 * One whole-image copy with the copy engine, for bench/block-copy-bench:
 * like `qemu-img convert -n` (the target exists), then a flush, and the
 * time and the engine's counters as one JSON line.
 *
 *   block-copy-run [-f FMT] [-O FMT] [--chunk BYTES] [--memory BYTES]
 *                  [--workers N] [--offload] [--no-flush] [--aio MODE]
 *                  SRC DST
 *
 * --no-flush leaves the target's data in the page cache, as
 * qemu-img convert's default cache mode (unsafe) does.
 *
 * A measuring tool, not a test (built, not installed).
 */
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include "strata/backend.h"
#include "strata/block-copy.h"
#include "strata/loop.h"

typedef struct Run {
    BlockCopyState *s;
    BlockNode *dst;
    bool flush;
    int ret, flush_ret;
} Run;

static void run_co(void *opaque)
{
    Run *r = opaque;
    bool is_read;
    r->ret = block_copy_run(r->s, NULL, &is_read);
    r->flush_ret = r->flush ? node_co_flush(r->dst) : 0;
}

static const char *aio = "";

static BlockNode *open_image(const char *fmt, const char *path, int flags)
{
    GError *err = NULL;
    json_t *o = json_pack("{s:s, s:{s:s, s:s}}", "driver", fmt, "file",
                          "driver", "file", "filename", path);
    if (*aio) {
        json_object_set_new(json_object_get(o, "file"), "aio",
                            json_string(aio));
    }
    BlockNode *bs = node_open(NULL, o, flags, &err);
    if (!bs) {
        fprintf(stderr, "%s: %s\n", path, err->message);
        exit(1);
    }
    return bs;
}

static BlockChild *edge(BlockBackend **blk, BlockNode *bs, uint64_t perm)
{
    GError *err = NULL;
    *blk = blk_new(perm, BLK_PERM_ALL);
    if (!blk_insert_node(*blk, bs, &err)) {
        fprintf(stderr, "%s\n", err->message);
        exit(1);
    }
    return blk_root(*blk);
}

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

int main(int argc, char **argv)
{
    static const struct option longopts[] = {
        { "chunk", required_argument, NULL, 'c' },
        { "memory", required_argument, NULL, 'm' },
        { "workers", required_argument, NULL, 'w' },
        { "offload", no_argument, NULL, 'o' },
        { "no-flush", no_argument, NULL, 'n' },
        { "aio", required_argument, NULL, 'a' },
        { NULL, 0, NULL, 0 },
    };
    const char *sfmt = "raw", *dfmt = "raw";
    BlockCopyOptions o = { 0 };
    bool flush = true;
    int c;

    while ((c = getopt_long(argc, argv, "f:O:", longopts, NULL)) != -1) {
        switch (c) {
        case 'f': sfmt = optarg; break;
        case 'O': dfmt = optarg; break;
        case 'c': o.max_chunk = strtoll(optarg, NULL, 0); break;
        case 'm': o.max_memory = strtoull(optarg, NULL, 0); break;
        case 'w': o.max_workers = atoi(optarg); break;
        case 'o': o.use_copy_range = true; break;
        case 'n': flush = false; break;
        case 'a': aio = optarg; break;
        default: return 2;
        }
    }
    if (argc - optind != 2) {
        fprintf(stderr, "usage: block-copy-run [-f FMT] [-O FMT] [--chunk N] "
                "[--memory N] [--workers N] [--offload] SRC DST\n");
        return 2;
    }

    BlockNode *src = open_image(sfmt, argv[optind], 0);
    /* No flush at all, not even at close: qemu-img's cache=unsafe. */
    BlockNode *dst = open_image(dfmt, argv[optind + 1],
                                NODE_O_RDWR | (flush ? 0 : NODE_O_NO_FLUSH));
    BlockBackend *sb, *db;
    GError *err = NULL;
    o.source = edge(&sb, src, BLK_PERM_CONSISTENT_READ);
    o.target = edge(&db, dst, BLK_PERM_WRITE);
    /* As qemu-img convert -n: the target is not known to read zeroes. */
    Run r = { .dst = dst, .flush = flush };
    r.s = block_copy_new(&o, &err);
    if (!r.s) {
        fprintf(stderr, "%s\n", err->message);
        return 1;
    }

    double t = now();
    co_run_sync(run_co, &r);
    t = now() - t;
    if (r.ret < 0 || r.flush_ret < 0) {
        fprintf(stderr, "copy failed: %s\n",
                strerror(-(r.ret < 0 ? r.ret : r.flush_ret)));
        return 1;
    }
    BlockCopyStats st;
    block_copy_get_stats(r.s, &st);
    printf("{\"seconds\": %.4f, \"bytes_read\": %" PRIu64
           ", \"bytes_written\": %" PRIu64 ", \"bytes_zeroed\": %" PRIu64
           ", \"bytes_offloaded\": %" PRIu64 ", \"chunks\": %" PRIu64
           ", \"peak_memory\": %" PRIu64 ", \"peak_in_flight\": %d}\n",
           t, st.bytes_read, st.bytes_written, st.bytes_zeroed,
           st.bytes_offloaded, st.chunks, st.peak_memory, st.peak_in_flight);
    block_copy_free(r.s);
    blk_unref(sb);
    blk_unref(db);
    node_unref(src);
    node_unref(dst);
    return 0;
}
