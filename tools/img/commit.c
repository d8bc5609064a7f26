/*
 * strata-img commit [--object objectdef] [--image-opts] [-q] [-f fmt]
 *                   [-t cache] [-b base] [-r rate_limit] [-d] [-p]
 *                   [--progress=json|human] filename
 *
 * qemu-img commit: copy what the chain above `base` allocates (the top
 * image down to, not including, base; by default base is the immediate
 * backing file) into base, then empty the top image unless -d (-b implies
 * -d, as in qemu-img).
 *
 * A front end of the commit job (jobs/commit.c, strata/commit.h), run in
 * this process: the job freezes the chain, reopens base read-write, grows
 * it to the top's length and copies with the copy engine.  qemu-img runs
 * QEMU's active commit (a mirror into base), so the job runs in its
 * copy_only mode, which writes what that mirror writes: chunks of base's
 * cluster size (at least 4 KiB; 64 KiB when base has no clusters), zero
 * clusters of the chain as zero writes that may unmap, the rest as data,
 * and leaves the graph as it was.  -r is the job's speed.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "strata/block-ops.h"
#include "strata/commit.h"
#include "strata/opts.h"
#include "strata/units.h"
#include "strata/error.h"
#include "strata/loop.h"
#include "img.h"

typedef struct CommitRun {
    ImgProgress *progress;
    Job *job;
    bool done;
    int ret;
} CommitRun;

static void commit_done(void *opaque, int ret)
{
    CommitRun *r = opaque;
    r->done = true;
    r->ret = ret;
}

/* The job's progress drives the meter (and the JSON lines). */
static void commit_job_event(Job *job, JobEvent ev, JobStatus old,
                             void *opaque)
{
    CommitRun *r = opaque;
    (void)old;
    if (job != r->job || ev != JOB_EVENT_PROGRESS ||
        !job->progress_total) {
        return;
    }
    img_progress_set_bytes(r->progress, job->progress_current,
                           job->progress_total);
    img_progress_print(r->progress,
                       (float)job->progress_current /
                       (float)job->progress_total * 100.f, 0);
}

/* Run the job to its end; -errno with the message in *errp on failure. */
static int commit_run_job(BlockNode *top, BlockNode *base, int64_t rate,
                          ImgProgress *prog, GError **errp)
{
    CommitRun r = { .progress = prog };
    CommitOptions o = {
        .bs = top,
        .top = top,
        .base = base,
        .creation_flags = JOB_INTERNAL,
        .speed = rate,
        .on_error = BLOCKDEV_ON_ERROR_REPORT,
        .copy_only = true,
        .cb = commit_done,
        .opaque = &r,
    };
    unsigned listener = job_add_listener(commit_job_event, &r);
    BlockJob *job;

    /* Set before the job starts: it may report progress at once. */
    r.job = NULL;
    job = commit_start(&o, errp);
    if (!job) {
        job_remove_listener(listener);
        return -EINVAL;
    }
    r.job = &job->job;
    LOOP_WAIT_WHILE(!r.done);
    job_remove_listener(listener);
    if (r.ret < 0) {
        error_setg_errno(errp, -r.ret, "Block job failed");
    }
    return r.ret;
}

int img_commit(int argc, char **argv)
{
    bool keep_top = false;
    static const struct option long_options[] = {
        { "help", no_argument, NULL, 'h' },
        { "object", required_argument, NULL, IMG_OPTION_OBJECT },
        { "image-opts", no_argument, NULL, IMG_OPTION_IMAGE_OPTS },
        { "progress", required_argument, NULL, IMG_OPTION_PROGRESS },
        { NULL, 0, NULL, 0 },
    };
    ImgOpenSpec spec = { 0 };
    const char *filename, *base_name = NULL, *cache = "writeback";
    bool quiet = false, progress = false, json = false;
    int64_t rate_limit = 0;
    ImgProgress prog;
    BlockBackend *blk;
    BlockNode *top, *base;
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
        case IMG_OPTION_PROGRESS:
            if (!img_progress_parse(optarg, &progress, &json)) {
                return EXIT_FAILURE;
            }
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

    img_progress_init_mode(&prog, progress, json, "commit", 1.f);
    img_progress_print(&prog, 0.f, 100);

    if (base_name) {
        base = node_find_backing_image(top, base_name);
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
    if (commit_run_job(top, base, rate_limit, &prog, &err) < 0) {
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
