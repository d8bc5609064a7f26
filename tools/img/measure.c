/*
 * strata-img measure [--output=ofmt] [-O output_fmt] [-o options]
 *     [--size N | [--object objectdef] [--image-opts] [-f fmt]
 *     [-l snapshot_param] filename]
 *
 * qemu-img measure: how large a new image of the output format would be,
 * either empty with a given virtual size or holding a copy of an existing
 * image.  "required" counts what the copy needs (data the source really
 * has, plus all metadata of a fully allocated image: the estimate errs on
 * the large side as QEMU's does), "fully allocated" what the image would
 * take with every cluster allocated.
 *
 * The arithmetic is the output driver's (node_measure(): qcow2, luks and
 * raw answer); this file parses the command line and prints.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "strata/block-ops.h"
#include "strata/opts.h"
#include "strata/units.h"
#include "strata/error.h"
#include "img.h"

enum {
    OPTION_OUTPUT = IMG_OPTION_FIRST_PRIVATE,
    OPTION_SIZE,
};

static void print_info(const BlockMeasureInfo *info, bool json)
{
    if (!json) {
        printf("required size: %" PRIu64 "\n", info->required);
        printf("fully allocated size: %" PRIu64 "\n", info->fully_allocated);
        if (info->has_bitmaps) {
            printf("bitmaps size: %" PRIu64 "\n", info->bitmaps);
        }
    } else {
        json_t *o = json_object();
        char *text;

        json_object_set_new(o, "required", json_integer(
                            (json_int_t)info->required));
        json_object_set_new(o, "fully-allocated", json_integer(
                            (json_int_t)info->fully_allocated));
        if (info->has_bitmaps) {
            json_object_set_new(o, "bitmaps", json_integer(
                                (json_int_t)info->bitmaps));
        }
        text = json_out_pretty_str(o);
        printf("%s\n", text);
        g_free(text);
        json_decref(o);
    }
}

int img_measure(int argc, char **argv)
{
    static const struct option long_options[] = {
        { "help", no_argument, NULL, 'h' },
        { "image-opts", no_argument, NULL, IMG_OPTION_IMAGE_OPTS },
        { "object", required_argument, NULL, IMG_OPTION_OBJECT },
        { "output", required_argument, NULL, OPTION_OUTPUT },
        { "size", required_argument, NULL, OPTION_SIZE },
        { "force-share", no_argument, NULL, 'U' },
        { NULL, 0, NULL, 0 },
    };
    ImgOpenSpec spec = { 0 };
    const char *filename = NULL, *out_fmt = "raw", *snapshot_name = NULL;
    char *options = NULL;
    json_t *sn_opts = NULL;
    uint64_t img_size = UINT64_MAX;
    bool json = false;
    BlockBackend *in_blk = NULL;
    const BlockDriver *drv, *proto;
    ImgOptDesc *list = NULL, *plist;
    ImgOpts *opts = NULL;
    BlockMeasureInfo info = { 0 };
    json_t *measure_opts;
    GError *err = NULL;
    int ret = EXIT_FAILURE, c;

    /* Unlike most subcommands, getopt reports bad options itself here. */
    while ((c = getopt_long(argc, argv, "hf:O:o:l:U", long_options,
                            NULL)) != -1) {
        switch (c) {
        case '?':
        case 'h':
            img_help();
        case 'O':
            out_fmt = optarg;
            break;
        case 'o':
            if (!img_append_option_list(&options, optarg)) {
                goto out;
            }
            break;
        case 'l':
            if (g_str_has_prefix(optarg, "snapshot.")) {
                if (!img_parse_snapshot_opts(&sn_opts, optarg)) {
                    goto out;
                }
            } else {
                snapshot_name = optarg;
            }
            break;
        case OPTION_OUTPUT:
            if (!img_output_format(optarg, &json)) {
                exit(EXIT_FAILURE);
            }
            break;
        case OPTION_SIZE: {
            int64_t v = img_cvtnum("image size", optarg);
            if (v < 0) {
                goto out;
            }
            img_size = (uint64_t)v;
            break;
        }
        default:
            img_open_option(c, optarg, &spec);
        }
    }

    if (argc - optind > 1) {
        tool_error("At most one filename argument is allowed.");
        goto out;
    } else if (argc - optind == 1) {
        filename = argv[optind];
    }
    if (!filename && (spec.image_opts || spec.fmt || snapshot_name ||
                      sn_opts)) {
        tool_error("--image-opts, -f, and -l require a filename argument.");
        goto out;
    }
    if (filename && img_size != UINT64_MAX) {
        tool_error("--size N cannot be used together with a filename.");
        goto out;
    }
    if (!filename && img_size == UINT64_MAX) {
        tool_error("Either --size N or one filename must be specified.");
        goto out;
    }

    if (filename) {
        in_blk = img_open(filename, &spec);
        if (!in_blk) {
            goto out;
        }
        if ((snapshot_name || sn_opts) &&
            !img_load_snapshot(in_blk, snapshot_name, sn_opts)) {
            goto out;
        }
    }

    drv = driver_find(out_fmt);
    if (!drv) {
        tool_error("Unknown file format '%s'", out_fmt);
        goto out;
    }
    if (!driver_has(drv, DRIVER_CAN_CREATE)) {
        tool_error("Format driver '%s' does not support image creation",
                   driver_format_name(drv));
        goto out;
    }
    proto = driver_find("file");
    list = img_create_opts_for(drv);
    plist = img_create_opts_for(proto);
    list = img_create_opts_append(list, plist);
    g_free(plist);
    opts = img_opts_new(list);
    if (options && !img_opts_parse(opts, options, &err)) {
        tool_error_gerror(err, "%s", "");
        tool_error("Invalid options for file format '%s'", out_fmt);
        goto out;
    }
    if (img_size != UINT64_MAX) {
        img_opts_set_number(opts, "size", img_size);
    }

    measure_opts = img_opts_to_json(opts);
    if (!node_measure(out_fmt, measure_opts, in_blk ? blk_node(in_blk) : NULL,
                      &info, &err)) {
        json_decref(measure_opts);
        tool_error_gerror(err, "%s", "");
        goto out;
    }
    json_decref(measure_opts);
    print_info(&info, json);
    ret = EXIT_SUCCESS;
out:
    img_opts_free(opts);
    g_free(list);
    g_free(options);
    json_decref(sn_opts);
    if (in_blk) {
        blk_unref(in_blk);
    }
    return ret;
}
