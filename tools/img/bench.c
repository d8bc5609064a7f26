/*
 * strata-img bench [-c count] [-d depth] [-f fmt]
 *                  [--flush-interval=flush_interval] [-i aio] [-n]
 *                  [--no-drain] [-o offset] [--pattern=pattern] [-q]
 *                  [-s buffer_size] [-S step_size] [-t cache] [-w] [-U]
 *                  filename
 *
 * Keeps `depth` asynchronous requests in flight until `count` have
 * completed, walking the image from `offset` in `step` increments (wrapping
 * at the end of the image), and reports the elapsed time.
 *
 * This is the performance showcase, so the request loop allocates nothing:
 * all requests share one aligned buffer and one I/O vector (as qemu-img's
 * bench effectively does; the data read is never looked at and the data
 * written is the same pattern everywhere), and completion callbacks refill
 * the queue directly.  Every byte of cost per request is the block layer's.
 *
 * -d 0 is refused: qemu-img accepts it and then waits forever with nothing
 * in flight.
 */
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "strata/block-ops.h"
#include "strata/error.h"
#include "strata/opts.h"
#include "strata/units.h"
#include "strata/loop.h"
#include "img.h"

enum {
    OPTION_PATTERN = IMG_OPTION_FIRST_PRIVATE,
    OPTION_FLUSH_INTERVAL,
    OPTION_NO_DRAIN,
};

typedef struct BenchData {
    BlockBackend *blk;
    uint64_t image_size;
    bool write;
    int step;
    int nrreq;           /* queue depth */
    int n;               /* requests still to complete */
    int flush_interval;  /* 0: never flush */
    bool drain_on_flush; /* wait for the queue to empty before flushing */
    IOVec qiov;
    int in_flight;
    bool in_flush;
    uint64_t offset;
} BenchData;

static void bench_cb(void *opaque, int ret);

static void bench_undrained_flush_cb(void *opaque, int ret)
{
    if (ret < 0) {
        tool_error("Failed flush request: %s", g_strerror(-ret));
        exit(EXIT_FAILURE);
    }
}

/* Submit until the queue is full or every remaining request is queued. */
static void bench_submit(BenchData *b)
{
    while (b->n > b->in_flight && b->in_flight < b->nrreq) {
        uint64_t offset = b->offset;

        /* Count it first: nothing may observe a half-submitted request. */
        b->in_flight++;
        b->offset += b->step;
        if (b->image_size) {
            b->offset %= b->image_size;
        }
        if (b->write) {
            blk_aio_pwritev(b->blk, (int64_t)offset, &b->qiov, 0, bench_cb, b);
        } else {
            blk_aio_preadv(b->blk, (int64_t)offset, &b->qiov, 0, bench_cb, b);
        }
    }
}

static void bench_cb(void *opaque, int ret)
{
    BenchData *b = opaque;

    if (ret < 0) {
        tool_error("Failed request: %s", g_strerror(-ret));
        exit(EXIT_FAILURE);
    }
    if (b->in_flush) {
        /* The flush after a drained queue is done: start the next batch. */
        b->in_flush = false;
    } else if (b->in_flight > 0) {
        int remaining = b->n - b->in_flight;

        b->n--;
        b->in_flight--;
        if (b->flush_interval && remaining % b->flush_interval == 0) {
            if (!b->in_flight || !b->drain_on_flush) {
                if (b->drain_on_flush) {
                    b->in_flush = true;
                    blk_aio_flush(b->blk, bench_cb, b);
                } else {
                    blk_aio_flush(b->blk, bench_undrained_flush_cb, b);
                }
            }
            if (b->drain_on_flush) {
                return;
            }
        }
    }
    bench_submit(b);
}

int img_bench(int argc, char **argv)
{
    static const struct option long_options[] = {
        { "help", no_argument, NULL, 'h' },
        { "flush-interval", required_argument, NULL, OPTION_FLUSH_INTERVAL },
        { "image-opts", no_argument, NULL, IMG_OPTION_IMAGE_OPTS },
        { "pattern", required_argument, NULL, OPTION_PATTERN },
        { "no-drain", no_argument, NULL, OPTION_NO_DRAIN },
        { "force-share", no_argument, NULL, 'U' },
        { NULL, 0, NULL, 0 },
    };
    ImgOpenSpec spec = { 0 };
    const char *aio_name;
    bool native = false, uring = false, threads = false, is_write = false;
    bool drain_on_flush = true;
    int count = 75000, depth = 64, bufsize = 4096, step = 0, pattern = 0;
    int flush_interval = 0;
    int64_t offset = 0, image_size, sval;
    BenchData data = { 0 };
    size_t align;
    BlockLimits bl;
    void *buf;
    int64_t t1, t2;
    int c;

    while ((c = img_getopt(argc, argv, ":hc:d:f:ni:o:qs:S:t:wU",
                           long_options)) != -1) {
        switch (c) {
        case 'c':
            if (!img_strtoi(optarg, &count) || count < 0) {
                tool_error("Invalid request count specified");
                return EXIT_FAILURE;
            }
            break;
        case 'd':
            if (!img_strtoi(optarg, &depth) || depth <= 0) {
                tool_error("Invalid queue depth specified");
                return EXIT_FAILURE;
            }
            break;
        case 'n':
            native = true;
            break;
        case 'i':
            if (tool_parse_aio(optarg, &aio_name) < 0) {
                tool_error("Invalid aio option: %s", optarg);
                return EXIT_FAILURE;
            }
            /* Like QEMU's open flags: -i adds a back end, never removes. */
            native |= !strcmp(aio_name, "native");
            uring |= !strcmp(aio_name, "io_uring");
            threads |= !strcmp(aio_name, "threads");
            break;
        case 'o':
            offset = img_cvtnum("offset", optarg);
            if (offset < 0) {
                return EXIT_FAILURE;
            }
            break;
        case 'q':
            /* Accepted; qemu-img bench prints its two lines regardless. */
            break;
        case 's':
            sval = img_cvtnum_full("buffer size", optarg, 0, INT_MAX);
            if (sval < 0) {
                return EXIT_FAILURE;
            }
            bufsize = (int)sval;
            break;
        case 'S':
            sval = img_cvtnum_full("step_size", optarg, 0, INT_MAX);
            if (sval < 0) {
                return EXIT_FAILURE;
            }
            step = (int)sval;
            break;
        case 't':
            if (tool_parse_cache_mode(optarg, &spec.flags,
                                      &spec.writethrough) < 0) {
                tool_error("Invalid cache mode");
                return EXIT_FAILURE;
            }
            break;
        case 'w':
            spec.flags |= NODE_O_RDWR;
            is_write = true;
            break;
        case OPTION_PATTERN:
            if (!img_strtoi(optarg, &pattern) || pattern < 0 ||
                pattern > 0xff) {
                tool_error("Invalid pattern byte specified");
                return EXIT_FAILURE;
            }
            break;
        case OPTION_FLUSH_INTERVAL:
            if (!img_strtoi(optarg, &flush_interval) || flush_interval < 0) {
                tool_error("Invalid flush interval specified");
                return EXIT_FAILURE;
            }
            break;
        case OPTION_NO_DRAIN:
            drain_on_flush = false;
            break;
        default:
            img_open_option(c, optarg, &spec);
        }
    }
    if (optind != argc - 1) {
        img_error_exit("Expecting one image file name");
    }
    if (flush_interval && !is_write) {
        tool_error("--flush-interval is only available in write tests");
        return EXIT_FAILURE;
    }
    if (flush_interval && flush_interval < depth) {
        tool_error("Flush interval can't be smaller than depth");
        return EXIT_FAILURE;
    }
    /*
     * qemu-img turns -i/-n into open flags that accumulate and prefers
     * native, then io_uring.  "-i threads" is QEMU's default; ours may be
     * io_uring, so say it explicitly.  Without -i/-n the file driver picks.
     */
    spec.aio = native ? "native" : uring ? "io_uring" :
               threads ? "threads" : NULL;

    data.blk = img_open(argv[optind], &spec);
    if (!data.blk) {
        return EXIT_FAILURE;
    }
    image_size = blk_getlength(data.blk);
    if (image_size < 0) {
        blk_unref(data.blk);
        return EXIT_FAILURE;
    }

    node_get_limits(blk_node(data.blk), &bl);
    align = bl.opt_mem_alignment;
    if (align < 4096) {
        align = 4096;
    }
    buf = aligned_alloc_buf(align, bufsize ? (size_t)bufsize : align);
    if (!buf) {
        tool_error("Could not allocate a %d byte buffer", bufsize);
        blk_unref(data.blk);
        return EXIT_FAILURE;
    }
    memset(buf, pattern, bufsize);
    iovec_init_buf(&data.qiov, buf, (size_t)bufsize);

    data.image_size = (uint64_t)image_size;
    data.write = is_write;
    data.step = step ? step : bufsize;
    data.nrreq = depth;
    data.n = count;
    data.offset = (uint64_t)offset;
    data.flush_interval = flush_interval;
    data.drain_on_flush = drain_on_flush;

    printf("Sending %d %s requests, %d bytes each, %d in parallel "
           "(starting at offset %" PRId64 ", step size %d)\n",
           count, is_write ? "write" : "read", bufsize, depth, offset,
           data.step);
    if (flush_interval) {
        printf("Sending flush every %d requests\n", flush_interval);
    }

    t1 = clock_ns();
    bench_cb(&data, 0);
    while (data.n > 0) {
        loop_iterate(true);
    }
    t2 = clock_ns();
    printf("Run completed in %3.3f seconds.\n", (double)(t2 - t1) / 1e9);

    /* An undrained flush may still be running. */
    blk_drain(data.blk);
    iovec_destroy(&data.qiov);
    aligned_free(buf);
    blk_unref(data.blk);
    return EXIT_SUCCESS;
}
