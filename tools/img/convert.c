/*
 * strata-img convert [--object objectdef] [--image-opts]
 *   [--target-image-opts] [--target-is-zero] [--bitmaps] [-U] [-C] [-c]
 *   [-p] [-q] [-n] [-f fmt] [-t cache] [-T src_cache] [-O output_fmt]
 *   [-B backing_file [-F backing_fmt]] [-o options] [-l snapshot_param]
 *   [-S sparse_size] [-r rate_limit] [-m num_coroutines] [-W] [--salvage]
 *   filename [filename2 [...]] output_filename
 *
 * qemu-img convert: the checks run in qemu-img's order, because which
 * error a user sees depends on it: option conflicts, then the sources are
 * opened, then the target is created (no "Formatting" line: convert
 * creates quietly), opened and checked, then the copy engine in
 * convert-copy.c runs.
 *
 * --bitmaps copies the source's persistent bitmaps after the data, through
 * the dirty bitmap API (strata/dirty-bitmap.h).  -C (copy
 * offloading) reads and writes, but like an offloaded copy it writes data
 * ranges whole, without looking for zeroes, so the layout is qemu-img's.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include "strata/block-ops.h"
#include "strata/opts.h"
#include "strata/units.h"
#include "strata/dirty-bitmap.h"
#include "strata/error.h"
#include "convert.h"

enum {
    OPTION_TARGET_IMAGE_OPTS = IMG_OPTION_FIRST_PRIVATE,
    OPTION_SALVAGE,
    OPTION_TARGET_IS_ZERO,
    OPTION_BITMAPS,
    OPTION_SKIP_BROKEN,
};

typedef struct ConvertArgs {
    ImgOpenSpec src_spec;
    const char *out_fmt, *out_baseimg, *backing_fmt;
    const char *cache, *src_cache;
    char *options;
    json_t *sn_opts;            /* -l snapshot.id=,snapshot.name= */
    const char *snapshot_name;  /* -l ID_OR_NAME */
    bool tgt_image_opts, skip_create, progress, copy_range, bitmaps;
    bool progress_json;          /* --progress=json */
    bool skip_broken, explicit_min_sparse;
} ConvertArgs;

/*
 * qemu-img loads the snapshot as a temporary read-only view.  We find it
 * the same way, so that the errors for a missing snapshot or a format
 * without snapshots are QEMU's, but cannot read it yet.
 */
/* --bitmaps: every persistent bitmap of the source can be copied. */
static bool check_bitmaps(BlockNode *src, bool skip_broken)
{
    if (!node_supports_persistent_dirty_bitmap(src)) {
        tool_error("Source lacks bitmap support");
        return false;
    }
    for (GList *l = node_dirty_bitmaps(src); l; l = l->next) {
        DirtyBitmap *bm = l->data;
        if (dirty_bitmap_persistent(bm) && !skip_broken &&
            dirty_bitmap_inconsistent(bm)) {
            tool_error("Cannot copy inconsistent bitmap '%s'",
                       dirty_bitmap_name(bm));
            fprintf(stderr, "Try --skip-broken-bitmaps, or use '%s bitmap "
                    "--remove' to delete it\n", tool_name());
            return false;
        }
    }
    return true;
}

/*
 * After the data: each persistent bitmap is added to the target with the
 * same granularity and state and filled by a merge, as qemu-img does; the
 * target's driver stores them when it is closed.
 */
static bool copy_bitmaps(BlockNode *src, BlockNode *dst, bool skip_broken)
{
    for (GList *l = node_dirty_bitmaps(src); l; l = l->next) {
        DirtyBitmap *bm = l->data;
        const char *name = dirty_bitmap_name(bm);
        GError *err = NULL;

        if (!dirty_bitmap_persistent(bm)) {
            continue;
        }
        if (skip_broken && dirty_bitmap_inconsistent(bm)) {
            tool_warn("Skipping inconsistent bitmap '%s'", name);
            continue;
        }
        if (!node_dirty_bitmap_add(dst, name, dirty_bitmap_granularity(bm),
                                   true, !dirty_bitmap_enabled(bm), &err)) {
            tool_error_gerror(err, "Failed to create bitmap %s: ", name);
            return false;
        }
        if (!node_dirty_bitmap_merge(dst, name, src, name, &err)) {
            tool_error_gerror(err, "Failed to populate bitmap %s: ", name);
            node_dirty_bitmap_remove(dst, name, NULL);
            return false;
        }
    }
    return true;
}

/* Creation options of the target, checked and filled as qemu-img does. */
static ImgOpts *target_opts(const ConvertArgs *a, const char *out_filename,
                            int64_t size, const BlockDriver **pdrv,
                            ImgOptDesc **plist)
{
    const BlockDriver *drv, *proto;
    ImgOptDesc *list, *plist2;
    GError *err = NULL;
    ImgOpts *opts;

    drv = driver_find(a->out_fmt);
    if (!drv) {
        tool_error("Unknown file format '%s'", a->out_fmt);
        return NULL;
    }
    proto = img_find_protocol_or_report(out_filename);
    if (!proto) {
        return NULL;
    }
    if (!driver_has(drv, DRIVER_CAN_CREATE)) {
        tool_error("Format driver '%s' does not support image creation",
                   driver_format_name(drv));
        return NULL;
    }
    if (!driver_has(proto, DRIVER_CAN_CREATE)) {
        tool_error("Protocol driver '%s' does not support image creation",
                   driver_format_name(proto));
        return NULL;
    }
    list = img_create_opts_for(drv);
    plist2 = img_create_opts_for(proto);
    list = img_create_opts_append(list, plist2);
    g_free(plist2);
    opts = img_opts_new(list);
    if (a->options && !img_opts_parse(opts, a->options, &err)) {
        tool_error_gerror(err, "%s", "");
        goto fail;
    }
    img_opts_set_number(opts, "size", (uint64_t)size);
    if (a->out_baseimg &&
        !img_opts_set(opts, "backing_file", a->out_baseimg, NULL)) {
        tool_error("Backing file not supported for file format '%s'",
                   a->out_fmt);
        goto fail;
    }
    if (a->backing_fmt &&
        !img_opts_set(opts, "backing_fmt", a->backing_fmt, NULL)) {
        tool_error("Backing file format not supported for file format '%s'",
                   a->out_fmt);
        goto fail;
    }
    *pdrv = drv;
    *plist = list;
    return opts;
fail:
    img_opts_free(opts);
    g_free(list);
    return NULL;
}

static const char *opt_str(ImgOpts *opts, const char *name)
{
    ImgOptValue *v = opts ? img_opts_find(opts, name) : NULL;
    return v ? v->str : NULL;
}

static bool opt_bool(ImgOpts *opts, const char *name)
{
    const char *s = opt_str(opts, name);
    return s && (!strcmp(s, "on") || !strcmp(s, "yes") || !strcmp(s, "true"));
}

static bool can_compress(const BlockDriver *drv)
{
    return driver_has(drv, DRIVER_CAN_COMPRESS);
}

/*
 * Open the new target by filename with its format, as qemu-img does: with
 * the secrets its creation options named (key-secret, encrypt.key-secret),
 * so that an encrypted target can be written.
 */
static BlockBackend *open_new_target(const char *filename, const char *fmt,
                                     ImgOpts *opts, int flags,
                                     bool writethrough, bool unmap)
{
    json_t *options = json_object();
    GError *err = NULL;
    BlockBackend *blk;

    json_object_set_new(options, "driver", json_string(fmt));
    for (guint i = 0; opts && i < opts->values->len; i++) {
        ImgOptValue *v = opts->values->pdata[i];
        if (g_str_has_suffix(v->desc->name, "key-secret")) {
            json_object_set_new(options, v->desc->name, json_string(v->str));
        }
    }
    if (unmap) {
        json_object_set_new(options, "discard", json_string("unmap"));
    }
    blk = blk_new_open(filename, options, flags, &err);
    if (!blk) {
        if (node_error_is_backing_loop(err)) {
            tool_error_gerror(err, "%s", "");
        } else {
            tool_error_gerror(err, "Could not open '%s': ", filename);
        }
        return NULL;
    }
    blk_set_enable_write_cache(blk, !writethrough);
    return blk;
}

static int64_t pow2floor(int64_t v)
{
    int64_t p = 1;

    if (v <= 0) {
        return 0;
    }
    while (p * 2 <= v) {
        p *= 2;
    }
    return p;
}

/* The part of img_convert() after the options: 0 or -1. */
static int convert_run(ConvertArgs *a, ConvertState *s, char **files,
                       const char *out_filename, ImgProgress *progress)
{
    const BlockDriver *drv = NULL;
    ImgOptDesc *create_list = NULL;
    ImgOpts *opts = NULL;
    BlockNode *out_bs;
    const char *out_baseimg = a->out_baseimg;
    BlockDriverInfo bdi;
    BlockLimits out_bl;
    bool writethrough, have_bdi;
    int flags, ret = -1;
    int src_flags = 0;
    bool src_writethrough = false;

    tool_parse_cache_mode(a->src_cache, &src_flags, &src_writethrough);
    /* As qemu-img: nobody may write the sources while they are copied. */
    a->src_spec.flags = src_flags | NODE_O_NO_SHARE;
    a->src_spec.writethrough = src_writethrough;

    s->src = g_new0(BlockBackend *, s->src_num);
    s->src_sectors = g_new0(int64_t, s->src_num);
    s->src_alignment = g_new0(int, s->src_num);
    for (int i = 0; i < s->src_num; i++) {
        int64_t len;
        uint32_t align;

        s->src[i] = img_open(files[i], &a->src_spec);
        if (!s->src[i]) {
            goto out;
        }
        len = blk_getlength(s->src[i]);
        if (len < 0) {
            tool_error("Could not get size of %s: %s", files[i],
                       g_strerror((int)-len));
            goto out;
        }
        s->src_sectors[i] = DIV_ROUND_UP(len, CONVERT_SECTOR);
        BlockLimits bl;
        node_get_limits(blk_node(s->src[i]), &bl);
        align = bl.request_alignment;
        s->src_alignment[i] = MAX(1, DIV_ROUND_UP(align, CONVERT_SECTOR));
        s->total_sectors += s->src_sectors[i];
    }

    if (a->snapshot_name && s->src_num > 1) {
        tool_error("No support for concatenating multiple snapshot");
        goto out;
    }
    if ((a->sn_opts || a->snapshot_name) && !img_load_snapshot(s->src[0], a->snapshot_name, a->sn_opts)) {
        goto out;
    }

    if (!a->skip_create) {
        opts = target_opts(a, out_filename, s->total_sectors * CONVERT_SECTOR,
                           &drv, &create_list);
        if (!opts) {
            goto out;
        }
        if (opt_str(opts, "backing_file")) {
            out_baseimg = opt_str(opts, "backing_file");
        }
    }
    s->target_has_backing = out_baseimg != NULL;

    if (s->has_zero_init && s->target_has_backing) {
        /* qemu-img reports this but exits with success. */
        tool_error("Cannot use --target-is-zero when the destination image "
                   "has a backing file");
        ret = 0;
        goto out;
    }
    if (s->src_num > 1 && out_baseimg) {
        tool_error("Having a backing file for the target makes no sense when "
                   "concatenating multiple input images");
        goto out;
    }
    if (opts && opt_str(opts, "backing_file") &&
        !opt_str(opts, "backing_fmt")) {
        tool_error("Use of backing file requires explicit backing format");
        goto out;
    }

    if (s->compressed) {
        const char *prealloc = opt_str(opts, "preallocation");

        if (drv && !can_compress(drv)) {
            tool_error("Compression not supported for this file format");
            goto out;
        }
        if (opt_bool(opts, "encryption") || opt_str(opts, "encrypt.format")) {
            tool_error("Compression and encryption not supported at the same "
                       "time");
            goto out;
        }
        if (prealloc && strcmp(prealloc, "off")) {
            tool_error("Compression and preallocation not supported at the "
                       "same time");
            goto out;
        }
    }

    if (a->bitmaps) {
        if (s->src_num > 1) {
            tool_error("Copying bitmaps only possible with single source");
            goto out;
        }
        if (!check_bitmaps(blk_node(s->src[0]), a->skip_broken)) {
            goto out;
        }
    }

    if (!a->skip_create) {
        GError *err = NULL;

        if (!image_create(a->out_fmt, out_filename, img_opts_to_json(opts),
                          &err)) {
            tool_error_gerror(err, "%s: error while converting %s: ",
                              out_filename, a->out_fmt);
            goto out;
        }
    }
    s->target_is_new = !a->skip_create;

    flags = NODE_O_RDWR;
    if (tool_parse_cache_mode(a->cache, &flags, &writethrough) < 0) {
        tool_error("Invalid cache option: %s", a->cache);
        goto out;
    }
    if (flags & NODE_O_NOCACHE) {
        /* O_DIRECT may need the file grown to the sector size. */
        flags |= NODE_O_RESIZE;
    }
    if (a->skip_create) {
        ImgOpenSpec spec = {
            .image_opts = a->tgt_image_opts, .fmt = a->out_fmt,
            .flags = flags, .writethrough = writethrough,
        };
        s->target = img_open(out_filename, &spec);
    } else {
        s->target = open_new_target(out_filename, a->out_fmt, opts, flags,
                                    writethrough, s->min_sparse != 0);
    }
    if (!s->target) {
        goto out;
    }
    out_bs = node_skip_filters(blk_node(s->target));

    if (a->bitmaps && !node_supports_persistent_dirty_bitmap(out_bs)) {
        tool_error("Format driver '%s' does not support bitmaps",
                   node_get_format_name(out_bs));
        goto out;
    }
    if (s->compressed && !can_compress(node_get_driver(out_bs))) {
        tool_error("Compression not supported for this file format");
        goto out;
    }

    node_get_limits(out_bs, &out_bl);
    s->buf_sectors = MIN(CONVERT_MAX_BUF_SECTORS,
                         MAX(CONVERT_BUF_SECTORS,
                             (int64_t)MAX(out_bl.opt_transfer,
                                          out_bl.pdiscard_alignment) /
                             CONVERT_SECTOR));
    s->alignment = (int)MAX(pow2floor(s->min_sparse),
                            MAX(1, DIV_ROUND_UP(out_bl.request_alignment,
                                                CONVERT_SECTOR)));

    if (a->skip_create) {
        int64_t out_len = blk_getlength(s->target);

        if (out_len < 0) {
            tool_error("unable to get output image length: %s",
                       g_strerror((int)-out_len));
            goto out;
        }
        if (DIV_ROUND_UP(out_len, CONVERT_SECTOR) < s->total_sectors) {
            tool_error("output file is smaller than input file");
            goto out;
        }
    }

    s->target_backing_sectors = -1;
    if (s->target_has_backing && s->target_is_new && node_backing(out_bs)) {
        int64_t blen = node_getlength(node_backing(out_bs));
        if (blen >= 0) {
            s->target_backing_sectors = DIV_ROUND_UP(blen, CONVERT_SECTOR);
        }
    }

    have_bdi = node_get_info(out_bs, &bdi) == 0;
    if (!have_bdi) {
        if (s->compressed) {
            tool_error("could not get block driver info");
            goto out;
        }
    } else {
        s->cluster_sectors = bdi.cluster_size / CONVERT_SECTOR;
    }

    if (!s->has_zero_init && s->target_is_new && s->min_sparse &&
        !s->target_has_backing && !a->tgt_image_opts) {
        /* A freshly created image on a regular file reads as zeroes. */
        struct stat st;
        const char *prealloc = opt_str(opts, "preallocation");
        s->has_zero_init = stat(out_filename, &st) == 0 && S_ISREG(st.st_mode);
        /*
         * Encrypted data reads as zeroes only where a qcow2 image has no
         * clusters yet (QEMU's has_zero_init for luks and qcow2).
         */
        if (node_is_encrypted(out_bs) &&
            (strcmp(node_get_format_name(out_bs), "qcow2") ||
             (prealloc && strcmp(prealloc, "off")))) {
            s->has_zero_init = false;
        }
    }

    {
        const char *fmt = node_get_format_name(node_skip_filters(out_bs));
        s->target_has_allocation = !fmt || (strcmp(fmt, "raw") &&
                                            strcmp(fmt, "file") &&
                                            strcmp(fmt, "host_device"));
    }
    s->copy_range = a->copy_range;
    s->progress = progress;
    ret = convert_do_copy(s) < 0 ? -1 : 0;
    if (a->bitmaps && ret == 0 &&
        !copy_bitmaps(blk_node(s->src[0]), out_bs, a->skip_broken)) {
        ret = -1;
    }

out:
    img_opts_free(opts);
    g_free(create_list);
    return ret;
}

int img_convert(int argc, char **argv)
{
    static const struct option long_options[] = {
        { "help", no_argument, NULL, 'h' },
        { "object", required_argument, NULL, IMG_OPTION_OBJECT },
        { "image-opts", no_argument, NULL, IMG_OPTION_IMAGE_OPTS },
        { "force-share", no_argument, NULL, 'U' },
        { "target-image-opts", no_argument, NULL, OPTION_TARGET_IMAGE_OPTS },
        { "salvage", no_argument, NULL, OPTION_SALVAGE },
        { "target-is-zero", no_argument, NULL, OPTION_TARGET_IS_ZERO },
        { "bitmaps", no_argument, NULL, OPTION_BITMAPS },
        { "skip-broken-bitmaps", no_argument, NULL, OPTION_SKIP_BROKEN },
        { "progress", required_argument, NULL, IMG_OPTION_PROGRESS },
        { NULL, 0, NULL, 0 },
    };
    ConvertArgs a = { .cache = "unsafe", .src_cache = "writeback" };
    ConvertState s = {
        .min_sparse = 8, .num_coroutines = 8, .wr_in_order = true,
        .buf_sectors = CONVERT_BUF_SECTORS,
    };
    ImgProgress progress;
    const char *out_filename;
    int64_t val;
    int c, ret = -1;
    bool quiet = false;

    while ((c = img_getopt(argc, argv, ":hf:O:B:CcF:o:l:S:pt:T:qnm:WUr:",
                           long_options)) != -1) {
        switch (c) {
        case 'O':
            a.out_fmt = optarg;
            break;
        case 'B':
            a.out_baseimg = optarg;
            break;
        case 'C':
            a.copy_range = true;
            break;
        case 'c':
            s.compressed = true;
            break;
        case 'F':
            a.backing_fmt = optarg;
            break;
        case 'o':
            if (!img_append_option_list(&a.options, optarg)) {
                goto fail_getopt;
            }
            break;
        case 'l':
            if (g_str_has_prefix(optarg, "snapshot.")) {
                if (!img_parse_snapshot_opts(&a.sn_opts, optarg)) {
                    goto fail_getopt;
                }
            } else {
                a.snapshot_name = optarg;
            }
            break;
        case 'S':
            val = img_cvtnum("buffer size for sparse output", optarg);
            if (val < 0) {
                goto fail_getopt;
            }
            if (val % CONVERT_SECTOR ||
                val / CONVERT_SECTOR > CONVERT_MAX_BUF_SECTORS) {
                tool_error("Invalid buffer size for sparse output specified. "
                           "Valid sizes are multiples of %d up to %d. Select "
                           "0 to disable sparse detection (fully allocates "
                           "output).", CONVERT_SECTOR,
                           CONVERT_MAX_BUF_SECTORS * CONVERT_SECTOR);
                goto fail_getopt;
            }
            s.min_sparse = (int)(val / CONVERT_SECTOR);
            a.explicit_min_sparse = true;
            break;
        case 'p':
            a.progress = true;
            break;
        case IMG_OPTION_PROGRESS:
            if (!img_progress_parse(optarg, &a.progress, &a.progress_json)) {
                return EXIT_FAILURE;
            }
            break;
        case 't':
            a.cache = optarg;
            break;
        case 'T':
            a.src_cache = optarg;
            break;
        case 'q':
            quiet = true;
            break;
        case 'n':
            a.skip_create = true;
            break;
        case 'm': {
            int m;
            if (!img_strtoi(optarg, &m) || m < 1 ||
                m > CONVERT_MAX_COROUTINES) {
                tool_error("Invalid number of coroutines. Allowed number of "
                           "coroutines is between 1 and %d",
                           CONVERT_MAX_COROUTINES);
                goto fail_getopt;
            }
            s.num_coroutines = m;
            break;
        }
        case 'W':
            s.wr_in_order = false;
            break;
        case 'r':
            val = img_cvtnum("rate limit", optarg);
            if (val < 0) {
                goto fail_getopt;
            }
            s.rate_limit = val;
            break;
        case OPTION_TARGET_IMAGE_OPTS:
            a.tgt_image_opts = true;
            break;
        case OPTION_SALVAGE:
            s.salvage = true;
            break;
        case OPTION_TARGET_IS_ZERO:
            s.has_zero_init = true;
            break;
        case OPTION_BITMAPS:
            a.bitmaps = true;
            break;
        case OPTION_SKIP_BROKEN:
            a.skip_broken = true;
            break;
        default:
            img_open_option(c, optarg, &a.src_spec);
        }
    }

    if (!a.out_fmt && !a.tgt_image_opts) {
        a.out_fmt = "raw";
    }
    if (a.skip_broken && !a.bitmaps) {
        tool_error("Use of --skip-broken-bitmaps requires --bitmaps");
        goto fail_getopt;
    }
    if (s.compressed && a.copy_range) {
        tool_error("Cannot enable copy offloading when -c is used");
        goto fail_getopt;
    }
    if (a.explicit_min_sparse && a.copy_range) {
        tool_error("Cannot enable copy offloading when -S is used");
        goto fail_getopt;
    }
    if (a.copy_range && s.salvage) {
        tool_error("Cannot use copy offloading in salvaging mode");
        goto fail_getopt;
    }
    if (a.tgt_image_opts && !a.skip_create) {
        tool_error("--target-image-opts requires use of -n flag");
        goto fail_getopt;
    }
    if (a.skip_create && a.options) {
        tool_error("-o has no effect when skipping image creation");
        goto fail_getopt;
    }
    if (s.has_zero_init && !a.skip_create) {
        tool_error("--target-is-zero requires use of -n flag");
        goto fail_getopt;
    }

    s.src_num = argc - optind - 1;
    out_filename = s.src_num >= 1 ? argv[argc - 1] : NULL;
    if (a.options && img_has_help_option(a.options)) {
        if (a.out_fmt) {
            ret = img_print_create_help(out_filename, a.out_fmt) ? -1 : 0;
        } else {
            tool_error("Option help requires a format be specified");
        }
        goto fail_getopt;
    }
    if (s.src_num < 1) {
        tool_error("Must specify image file name");
        goto fail_getopt;
    }
    {
        int f = 0;
        bool wt;
        if (tool_parse_cache_mode(a.src_cache, &f, &wt) < 0) {
            tool_error("Invalid source cache option: %s", a.src_cache);
            goto fail_getopt;
        }
    }

    s.quiet = quiet;
    img_progress_init_mode(&progress, a.progress && !quiet, a.progress_json,
                           "convert", 1.0);
    img_progress_print(&progress, 0, 100);

    ret = convert_run(&a, &s, argv + optind, out_filename, &progress);
    if (ret == 0) {
        img_progress_print(&progress, 100, 0);
    }
    img_progress_end(&progress);

    if (s.target) {
        blk_unref(s.target);
    }
    for (int i = 0; s.src && i < s.src_num; i++) {
        if (s.src[i]) {
            blk_unref(s.src[i]);
        }
    }
    g_free(s.src);
    g_free(s.src_sectors);
    g_free(s.src_alignment);
fail_getopt:
    json_decref(a.sn_opts);
    g_free(a.options);
    return ret ? EXIT_FAILURE : EXIT_SUCCESS;
}
