/*
 * strata-img commit [--object objectdef] [--image-opts] [-q] [-f fmt]
 *                   [-t cache] [-b base] [-r rate_limit] [-d] [-p] filename
 *
 * qemu-img commit: copy what the chain above `base` allocates (the top
 * image down to, not including, base; by default base is the immediate
 * backing file) into base, then empty the top image unless -d (-b implies
 * -d, as in qemu-img).
 *
 * qemu-img runs QEMU's active commit job (a mirror into the backing chain).
 * The job layer does not exist yet, so the copy loop lives here and
 * reproduces what that job does to the images:
 *  - the ranges allocated above base are marked in chunks of the job's
 *    granularity (base's cluster size, at least 4 KiB; 64 KiB when base has
 *    no clusters) and only those chunks are copied;
 *  - a chunk run is asked for the block status of the whole chain: where it
 *    reads as zeroes (no data) over whole base clusters, zeroes are written
 *    with REQ_MAY_UNMAP, as the job does, so a zero cluster in the overlay
 *    becomes a zero cluster in base; everything else is copied as data;
 *  - base grows to the top's length first if it is shorter.
 * Several workers (COMMIT_WORKERS) keep requests in flight, like the job's
 * in-flight operations; -r limits the average throughput.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "strata/block-ops.h"
#include "strata/opts.h"
#include "strata/units.h"
#include "strata/error.h"
#include "strata/loop.h"
#include "img.h"

#define COMMIT_WORKERS 4
/* The job's largest single copy (QEMU's mirror MAX_IO_BYTES). */
#define COMMIT_MAX_IO (1 << 20)
#define COMMIT_OWNER "commit"

typedef struct CommitRange {
    int64_t offset;
    int64_t bytes;
} CommitRange;

typedef struct CommitState {
    BlockBackend *source;     /* the top image, reads the whole chain */
    BlockNode *top;
    BlockNode *base;
    BlockBackend *target;     /* writes into base */
    int64_t length;           /* of the top image */
    int64_t granularity;
    int64_t base_cluster;     /* 0: base has no clusters */
    GArray *ranges;           /* CommitRange: chunk runs to copy, in order */
    guint next_range;
    int64_t next_offset;      /* inside ranges[next_range] */
    int64_t total;            /* bytes to copy, for progress */
    int64_t done;
    int64_t rate_limit;       /* bytes per second, 0: unlimited */
    int64_t start_ns;
    ImgProgress *progress;
    int running;
    int ret;
} CommitState;

/* Mark the chunks that hold anything the chain above base allocates. */
static void commit_scan(CommitState *s)
{
    int64_t offset = 0;

    s->ret = 0;
    while (offset < s->length) {
        int64_t pnum;
        int ret = node_is_allocated_above(s->top, s->base, false, offset,
                                          s->length - offset, &pnum);
        if (ret < 0) {
            s->ret = ret;
            return;
        }
        if (pnum <= 0) {
            break;
        }
        if (ret) {
            int64_t start = ROUND_DOWN(offset, s->granularity);
            int64_t end = MIN(ROUND_UP(offset + pnum, s->granularity),
                              s->length);
            CommitRange *last = s->ranges->len ?
                &g_array_index(s->ranges, CommitRange, s->ranges->len - 1) :
                NULL;

            if (last && last->offset + last->bytes >= start) {
                s->total += end - (last->offset + last->bytes);
                last->bytes = end - last->offset;
            } else {
                CommitRange r = { start, end - start };
                g_array_append_val(s->ranges, r);
                s->total += end - start;
            }
        }
        offset += pnum;
    }
}

/* The next piece of at most COMMIT_MAX_IO bytes; false when all is taken. */
static bool commit_next_piece(CommitState *s, int64_t *offset,
                              int64_t *bytes)
{
    while (s->next_range < s->ranges->len) {
        CommitRange *r = &g_array_index(s->ranges, CommitRange,
                                        s->next_range);
        int64_t end = r->offset + r->bytes;

        if (s->next_offset < r->offset) {
            s->next_offset = r->offset;
        }
        if (s->next_offset < end) {
            *offset = s->next_offset;
            *bytes = MIN(end - s->next_offset, COMMIT_MAX_IO);
            s->next_offset += *bytes;
            return true;
        }
        s->next_range++;
    }
    return false;
}

static bool commit_cluster_aligned(CommitState *s, int64_t offset,
                                   int64_t bytes)
{
    if (!s->base_cluster) {
        return true;
    }
    return offset % s->base_cluster == 0 && bytes % s->base_cluster == 0;
}

/*
 * One piece as the job's iteration does it: the chain's status decides
 * between copying and writing zeroes; what a status call does not cover
 * is handled in the next round.
 */
static int coroutine_fn commit_piece(CommitState *s, int64_t offset,
                                     int64_t bytes, void *buf)
{
    int64_t end = offset + bytes;

    while (offset < end) {
        int64_t pnum, n;
        bool zero = false, discard = false;
        int ret = node_co_block_status_above(s->top, NULL, false, true,
                                             offset, end - offset, &pnum,
                                             NULL, NULL, NULL);

        n = ret < 0 ? end - offset : pnum;
        n -= n % s->granularity;
        if (n < s->granularity) {
            n = s->granularity;
        } else if (ret >= 0 && !(ret & BLOCK_DATA) &&
                   commit_cluster_aligned(s, offset, n)) {
            zero = ret & BLOCK_ZERO;
            discard = !zero;
        }
        n = MIN(n, end - offset);

        if (zero) {
            ret = blk_co_pwrite_zeroes(s->target, offset, n, REQ_MAY_UNMAP);
        } else if (discard) {
            ret = blk_co_pdiscard(s->target, offset, n);
        } else {
            IOVec q;

            iovec_init_buf(&q, buf, (size_t)n);
            ret = blk_co_preadv(s->source, offset, n, &q, 0);
            if (ret >= 0) {
                ret = blk_co_pwritev(s->target, offset, n, &q, 0);
            }
            iovec_destroy(&q);
        }
        if (ret < 0) {
            return ret;
        }
        offset += n;
    }
    return 0;
}

/* -r: sleep until the average since the start is back under the limit. */
static void coroutine_fn commit_rate_limit(CommitState *s)
{
    int64_t due_ns, now;

    if (!s->rate_limit) {
        return;
    }
    due_ns = s->start_ns +
             (int64_t)((double)s->done / (double)s->rate_limit * 1e9);
    now = clock_ns();
    if (due_ns > now) {
        co_sleep_ns(due_ns - now);
    }
}

static void coroutine_fn commit_worker(void *opaque)
{
    CommitState *s = opaque;
    void *buf = g_malloc(COMMIT_MAX_IO);
    int64_t offset, bytes;

    while (s->ret == 0 && commit_next_piece(s, &offset, &bytes)) {
        int ret = commit_piece(s, offset, bytes, buf);

        if (ret < 0) {
            if (s->ret == 0) {
                s->ret = ret;
            }
            break;
        }
        s->done += bytes;
        if (s->total) {
            img_progress_print(s->progress,
                               (float)s->done / (float)s->total * 100.f, 0);
        }
        commit_rate_limit(s);
    }
    g_free(buf);
    s->running--;
}

/*
 * Copy the chain above base into base through `target`.  Returns -errno;
 * the error message for the user is in *errp.
 */
static int commit_copy(CommitState *s, GError **errp)
{
    int64_t base_len = blk_getlength(s->target);

    if (base_len < 0) {
        error_setg_errno(errp, (int)-base_len,
                         "Unable to get length of base");
        return (int)base_len;
    }
    if (base_len < s->length) {
        GError *local = NULL;
        int ret = blk_truncate(s->target, s->length, false, PREALLOC_MODE_OFF,
                               &local);

        if (ret < 0) {
            if (local) {
                g_propagate_error(errp, local);
            } else {
                error_setg_errno(errp, -ret, "Could not resize base");
            }
            return ret;
        }
    }

    s->ranges = g_array_new(false, false, sizeof(CommitRange));
    commit_scan(s);
    if (s->ret == 0) {
        s->start_ns = clock_ns();
        for (int i = 0; i < COMMIT_WORKERS; i++) {
            s->running++;
            co_enter(co_create(commit_worker, s));
        }
        LOOP_WAIT_WHILE(s->running > 0);
    }
    g_array_free(s->ranges, true);
    if (s->ret == 0) {
        /* The job flushes base before it completes; failing counts too. */
        s->ret = blk_flush(s->target);
    }
    if (s->ret < 0) {
        error_setg_errno(errp, -s->ret, "Block job failed");
        return s->ret;
    }
    return 0;
}

/* ---- Finding base (QEMU's bdrv_find_backing_image) ---- */

static bool has_protocol(const char *path)
{
    size_t len = strcspn(path, ":/");

    return path[len] == ':';
}

/* `name` as the image `bs` would resolve it: relative to its directory. */
static char *resolve_against(BlockNode *bs, const char *name)
{
    char *dir, *path;

    if (g_path_is_absolute(name)) {
        return g_strdup(name);
    }
    dir = g_path_get_dirname(node_get_filename(bs));
    path = g_build_filename(dir, name, NULL);
    g_free(dir);
    return path;
}

/*
 * The node of the chain below top that `name` names.  Like QEMU, each
 * layer resolves a relative name against its own directory and compares
 * canonical paths, unless a protocol is involved: then names must be equal.
 */
static BlockNode *find_backing_image(BlockNode *top, const char *name)
{
    bool protocol = has_protocol(name);

    for (BlockNode *cur = top; node_backing(cur);
         cur = node_skip_filters(node_backing(cur))) {
        BlockNode *below = node_skip_filters(node_backing(cur));

        if (protocol || has_protocol(node_backing_file(cur))) {
            if (!strcmp(name, node_backing_file(cur)) ||
                !strcmp(name, node_get_filename(below))) {
                return below;
            }
        } else {
            char *want = resolve_against(cur, name);
            char *have = node_get_full_backing_filename(cur);
            char *want_real = want ? realpath(want, NULL) : NULL;
            char *have_real = have ? realpath(have, NULL) : NULL;
            bool match = want_real && have_real &&
                         !strcmp(want_real, have_real);

            free(want_real);
            free(have_real);
            g_free(want);
            g_free(have);
            if (match) {
                return below;
            }
        }
    }
    return NULL;
}

int img_commit(int argc, char **argv)
{
    bool keep_top = false;
    static const struct option long_options[] = {
        { "help", no_argument, NULL, 'h' },
        { "object", required_argument, NULL, IMG_OPTION_OBJECT },
        { "image-opts", no_argument, NULL, IMG_OPTION_IMAGE_OPTS },
        { NULL, 0, NULL, 0 },
    };
    ImgOpenSpec spec = { 0 };
    const char *filename, *base_name = NULL, *cache = "writeback";
    bool quiet = false, progress = false;
    int64_t rate_limit = 0;
    ImgProgress prog;
    CommitState s = { 0 };
    BlockBackend *blk, *target = NULL;
    BlockNode *top, *base;
    bool base_was_ro = false, frozen = false;
    GError *err = NULL;
    int c;

    while ((c = img_getopt(argc, argv, ":f:ht:b:dpqr:",
                           long_options)) != -1) {
        switch (c) {
        case 't':
            cache = optarg;
            break;
        case 'b':
            /* qemu-img makes -b imply -d: see the end of img_commit. */
            base_name = optarg;
            keep_top = true;
            break;
        case 'd':
            /* Keep the top image as it is: see the end of img_commit. */
            keep_top = true;
            break;
        case 'p':
            progress = true;
            break;
        case 'q':
            quiet = true;
            break;
        case 'r':
            rate_limit = img_cvtnum("rate limit", optarg);
            if (rate_limit < 0) {
                return EXIT_FAILURE;
            }
            break;
        default:
            img_open_option(c, optarg, &spec);
        }
    }
    if (quiet) {
        progress = false;
    }
    if (optind != argc - 1) {
        img_error_exit("Expecting one image file name");
    }
    filename = argv[optind];

    spec.flags = NODE_O_RDWR;
    if (tool_parse_cache_mode(cache, &spec.flags, &spec.writethrough) < 0) {
        tool_error("Invalid cache option: %s", cache);
        return EXIT_FAILURE;
    }
    blk = img_open(filename, &spec);
    if (!blk) {
        return EXIT_FAILURE;
    }
    top = blk_node(blk);

    img_progress_init(&prog, progress, 1.f);
    img_progress_print(&prog, 0.f, 100);

    if (base_name) {
        base = find_backing_image(top, base_name);
        if (!base) {
            error_setg(&err, "Did not find '%s' in the backing chain of '%s'",
                       base_name, filename);
            goto done;
        }
    } else {
        base = node_backing(top) ? node_skip_filters(node_backing(top)) : NULL;
        if (!base) {
            error_setg(&err, "Image does not have a backing file");
            goto done;
        }
    }
    /* Nothing may change the chain under the copy. */
    if (!chain_freeze(top, base, COMMIT_OWNER, &err)) {
        goto done;
    }
    frozen = true;
    base_was_ro = node_is_read_only(base);
    if (base_was_ro && !node_reopen(base, NULL, false, &err)) {
        base_was_ro = false;
        goto done;
    }
    target = blk_new(BLK_PERM_WRITE | BLK_PERM_RESIZE, BLK_PERM_ALL);
    if (!blk_insert_node(target, base, &err)) {
        goto done;
    }
    blk_set_enable_write_cache(target, !spec.writethrough);
    blk_set_allow_write_beyond_eof(target, false);

    s = (CommitState) {
        .source = blk,
        .top = top,
        .base = base,
        .target = target,
        .length = blk_getlength(blk),
        .rate_limit = rate_limit,
        .progress = &prog,
    };
    if (s.length < 0) {
        error_setg_errno(&err, (int)-s.length, "Unable to get length");
        goto done;
    }
    {
        BlockDriverInfo bdi = { 0 };

        if (node_get_info(base, &bdi) == 0 && bdi.cluster_size > 0) {
            s.base_cluster = bdi.cluster_size;
            s.granularity = MAX(4096, bdi.cluster_size);
        } else {
            s.granularity = 65536;
        }
    }
    if (commit_copy(&s, &err) < 0) {
        goto done;
    }

    img_progress_print(&prog, 100.f, 0);
    /*
     * Without -d or -b, qemu-img now empties the top so that it reads
     * through to base again; a driver that cannot is left as it is,
     * silently, as qemu-img does.
     */
    if (!keep_top) {
        GError *empty_err = NULL;

        if (node_make_empty(top, &empty_err) == -ENOTSUP) {
            g_clear_error(&empty_err);
        }
        err = empty_err;
    }

done:
    if (target) {
        blk_unref(target);
    }
    if (base_was_ro) {
        /* Best effort, as the job: the data is committed either way. */
        node_reopen(base, NULL, true, NULL);
    }
    if (frozen) {
        chain_unfreeze(top, base, COMMIT_OWNER);
    }
    img_progress_end(&prog);
    blk_unref(blk);
    if (err) {
        tool_error_gerror(err, "%s", "");
        return EXIT_FAILURE;
    }
    if (!quiet) {
        printf("Image committed.\n");
    }
    return EXIT_SUCCESS;
}
