/*
 * block-stream: QEMU 7.2's argument checks, in its order and words,
 * then the stream job (jobs/stream.c).
 */
#include <limits.h>
#include <stdlib.h>
#include <string.h>

#include "strata/block-ops.h"
#include "strata/block.h"
#include "strata/error.h"
#include "strata/op-blockers.h"
#include "strata/stream.h"
#include "qapi-commands.h"
#include "job-settle.h"
#include "block-job-args.h"

/* The node below bs in its chain: backing image or filtered child. */
static BlockNode *filter_or_cow_bs(BlockNode *bs)
{
    BlockNode *b = node_backing(bs);
    return b ? b : node_filtered_child(bs);
}

static bool chain_contains(BlockNode *top, BlockNode *bs)
{
    for (; top; top = filter_or_cow_bs(top)) {
        if (top == bs) {
            return true;
        }
    }
    return false;
}

static bool path_has_protocol(const char *path)
{
    const char *colon = strchr(path, ':');
    return colon && !memchr(path, '/', (size_t)(colon - path));
}

/*
 * name relative to the directory of bs's image, unless absolute.  The
 * directory is its storage's (a format node's own name may be a json:
 * one), as QEMU's bdrv_dirname().
 */
static char *make_absolute(BlockNode *bs, const char *name)
{
    if (name[0] == '/' || path_has_protocol(name)) {
        return g_strdup(name);
    }
    while (node_file(bs)) {
        bs = node_file(bs);
    }
    char *dir = g_path_get_dirname(node_get_filename(bs));
    char *full = g_build_filename(dir, name, NULL);
    g_free(dir);
    return full;
}

static bool same_file(const char *a, const char *b)
{
    char ra[PATH_MAX], rb[PATH_MAX];
    return a && b && realpath(a, ra) && realpath(b, rb) && !strcmp(ra, rb);
}

/*
 * The image of bs's chain that "base" names (QEMU's
 * bdrv_find_backing_image): where an image's backing node is not the one
 * its header names (given by node, or by another path), only that node's
 * filename; otherwise the name in the header, or any path to the same
 * file (relative names taken from the image's directory).
 */
static BlockNode *find_backing_image(BlockNode *bs, const char *name)
{
    bool proto = path_has_protocol(name);
    for (BlockNode *cur = node_skip_filters(bs); cur && node_backing(cur);
         cur = node_skip_filters(node_backing(cur))) {
        BlockNode *below = node_skip_filters(node_backing(cur));
        const char *hdr = node_backing_file(cur);
        bool match;
        if (strcmp(hdr, node_get_filename(below))) {
            match = !strcmp(name, node_get_filename(below));
        } else if (proto || path_has_protocol(hdr)) {
            char *full = make_absolute(cur, hdr);
            match = !strcmp(name, hdr) || !strcmp(name, full);
            g_free(full);
        } else {
            char *abs = make_absolute(cur, name);
            char *full = make_absolute(cur, hdr);
            match = same_file(abs, full);
            g_free(abs);
            g_free(full);
        }
        if (match) {
            return below;
        }
    }
    return NULL;
}

void qmp_block_stream(const char *job_id, const char *device,
                      const char *base, const char *base_node,
                      const char *backing_file, const char *bottom,
                      bool has_speed, int64_t speed, bool has_on_error,
                      BlockdevOnError on_error, const char *filter_node_name,
                      bool has_auto_finalize, bool auto_finalize,
                      bool has_auto_dismiss, bool auto_dismiss,
                      bool has_x_strata_discard_backing,
                      bool x_strata_discard_backing, GError **errp)
{
    StreamOptions o = {
        .backing_file = backing_file,
        .filter_node_name = filter_node_name,
        .speed = bja_speed(has_speed, speed),
        .on_error = bja_on_error(has_on_error, on_error),
        .discard_backing = has_x_strata_discard_backing &&
                           x_strata_discard_backing,
    };

    if (base && base_node) {
        error_setg(errp, "'base' and 'base-node' cannot be specified at the "
                   "same time");
        return;
    }
    if (base && bottom) {
        error_setg(errp, "'base' and 'bottom' cannot be specified at the "
                   "same time");
        return;
    }
    if (bottom && base_node) {
        error_setg(errp, "'bottom' and 'base-node' cannot be specified at "
                   "the same time");
        return;
    }
    o.bs = bja_lookup_node(device, errp);
    if (!o.bs) {
        return;
    }
    if (base) {
        o.base = find_backing_image(o.bs, base);
        if (!o.base) {
            error_setg(errp, "Can't find '%s' in the backing chain", base);
            return;
        }
    }
    if (base_node) {
        o.base = node_find(base_node);
        if (!o.base) {
            error_setg(errp, "Cannot find device='' nor node-name='%s'",
                       base_node);
            return;
        }
        if (o.bs == o.base || !chain_contains(o.bs, o.base)) {
            error_setg(errp, "Node '%s' is not a backing image of '%s'",
                       base_node, device);
            return;
        }
        node_refresh_filename(o.base);
    }
    if (bottom) {
        o.bottom = node_find(bottom);
        if (!o.bottom) {
            error_setg(errp, "Cannot find device='' nor node-name='%s'",
                       bottom);
            return;
        }
        if (driver_has(node_get_driver(o.bottom), DRIVER_IS_FILTER)) {
            error_setg(errp, "Node '%s' is a filter, use a non-filter node "
                       "as 'bottom'", bottom);
            return;
        }
        if (!chain_contains(o.bs, o.bottom)) {
            error_setg(errp, "Node '%s' is not in a chain starting from "
                       "'%s'", bottom, device);
            return;
        }
    }
    /* QEMU's op blockers, on the nodes the job will use. */
    BlockNode *end = o.bottom ? filter_or_cow_bs(o.bottom) : o.base;
    for (BlockNode *it = o.bs; it && it != end; it = filter_or_cow_bs(it)) {
        if (!node_op_check(it, BLOCK_OP_STREAM, errp)) {
            return;
        }
    }
    /* The whole chain streamed leaves no backing file to name. */
    if (!o.base && backing_file) {
        error_setg(errp, "backing file specified, but streaming the entire "
                   "chain");
        return;
    }
    o.flags = bja_job_flags(has_auto_finalize, auto_finalize,
                            has_auto_dismiss, auto_dismiss);
    /* No job id: block_job_create() applies QEMU's rule. */
    if (stream_start(job_id, &o, errp)) {
        qmp_job_settle(job_id);
    }
}
