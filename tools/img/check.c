/*
 * strata-img check [--object objectdef] [--image-opts] [-q] [-f fmt]
 *                  [--output=ofmt] [-r [leaks | all]] [-T src_cache] [-U]
 *                  filename
 *
 * qemu-img check: the driver counts references and compares them with the
 * stored refcounts (printing each problem to stderr as it goes); with -r
 * it repairs and then checks the image again.  Output and exit codes are
 * qemu-img's: 0 clean, 1 check failed, 2 corruptions, 3 leaks only, 63
 * the format has no check.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "strata/block-ops.h"
#include "strata/error.h"
#include "strata/opts.h"
#include "strata/units.h"
#include "img.h"

enum { OPTION_OUTPUT = IMG_OPTION_FIRST_PRIVATE };

static void dump_human(const BlockCheckResult *r, bool quiet)
{
    if (quiet) {
        return;
    }
    if (!r->corruptions && !r->leaks && !r->check_errors) {
        printf("No errors were found on the image.\n");
    } else {
        if (r->corruptions) {
            printf("\n%" PRId64 " errors were found on the image.\n"
                   "Data may be corrupted, or further writes to the image "
                   "may corrupt it.\n", r->corruptions);
        }
        if (r->leaks) {
            printf("\n%" PRId64 " leaked clusters were found on the image.\n"
                   "This means waste of disk space, but no harm to data.\n",
                   r->leaks);
        }
        if (r->check_errors) {
            printf("\n%" PRId64 " internal errors have occurred during the "
                   "check.\n", r->check_errors);
        }
    }
    if (r->total_clusters && r->allocated_clusters) {
        printf("%" PRId64 "/%" PRId64 " = %0.2f%% allocated, %0.2f%% "
               "fragmented, %0.2f%% compressed clusters\n",
               r->allocated_clusters, r->total_clusters,
               r->allocated_clusters * 100.0 / r->total_clusters,
               r->fragmented_clusters * 100.0 / r->allocated_clusters,
               r->compressed_clusters * 100.0 / r->allocated_clusters);
    }
    if (r->image_end_offset) {
        printf("Image end offset: %" PRId64 "\n", r->image_end_offset);
    }
}

/* QAPI ImageCheck, members in schema order; absent when zero. */
static void dump_json(const BlockCheckResult *r, const char *filename,
                      const char *format, bool quiet)
{
    json_t *o = json_object();
    const struct { const char *name; int64_t v; bool always; } f[] = {
        { "check-errors", r->check_errors, true },
        { "image-end-offset", r->image_end_offset, false },
        { "corruptions", r->corruptions, false },
        { "leaks", r->leaks, false },
        { "corruptions-fixed", r->corruptions_fixed, false },
        { "leaks-fixed", r->leaks_fixed, false },
        { "total-clusters", r->total_clusters, false },
        { "allocated-clusters", r->allocated_clusters, false },
        { "fragmented-clusters", r->fragmented_clusters, false },
        { "compressed-clusters", r->compressed_clusters, false },
    };

    if (quiet) {
        json_decref(o);
        return;
    }
    json_object_set_new(o, "filename", json_string_nocheck(filename));
    json_object_set_new(o, "format", json_string(format));
    for (size_t i = 0; i < G_N_ELEMENTS(f); i++) {
        if (f[i].always || f[i].v) {
            json_object_set_new(o, f[i].name, json_integer(f[i].v));
        }
    }
    char *text = json_out_pretty_str(o);
    printf("%s\n", text);
    g_free(text);
    json_decref(o);
}

/* The check's findings, as qemu-img prints them while it checks. */
static void print_problem(void *opaque, const char *line)
{
    (void)opaque;
    fprintf(stderr, "%s\n", line);
}

int img_check(int argc, char **argv)
{
    static const struct option long_options[] = {
        { "help", no_argument, NULL, 'h' },
        { "format", required_argument, NULL, 'f' },
        { "repair", required_argument, NULL, 'r' },
        { "output", required_argument, NULL, OPTION_OUTPUT },
        { "object", required_argument, NULL, IMG_OPTION_OBJECT },
        { "image-opts", no_argument, NULL, IMG_OPTION_IMAGE_OPTS },
        { "force-share", no_argument, NULL, 'U' },
        { NULL, 0, NULL, 0 },
    };
    ImgOpenSpec spec = { 0 };
    const char *output = NULL, *cache = "writeback", *filename;
    bool quiet = false, json;
    BlockCheckResult res;
    BlockBackend *blk;
    int c, fix = 0, ret;

    while ((c = img_getopt(argc, argv, ":hf:r:T:qU", long_options)) != -1) {
        switch (c) {
        case 'r':
            if (!strcmp(optarg, "leaks")) {
                fix = CHECK_FIX_LEAKS;
            } else if (!strcmp(optarg, "all")) {
                fix = CHECK_FIX_LEAKS | CHECK_FIX_ERRORS;
            } else {
                img_error_exit("Unknown option value for -r (expecting "
                               "'leaks' or 'all'): %s", optarg);
            }
            break;
        case 'T':
            cache = optarg;
            break;
        case 'q':
            quiet = true;
            break;
        case OPTION_OUTPUT:
            output = optarg;
            break;
        default:
            img_open_option(c, optarg, &spec);
        }
    }
    if (optind != argc - 1) {
        img_error_exit("Expecting one image file name");
    }
    filename = argv[optind];
    if (!img_output_format(output, &json)) {
        return 1;
    }
    if (tool_parse_cache_mode(cache, &spec.flags, &spec.writethrough) < 0) {
        tool_error("Invalid source cache option: %s", cache);
        return 1;
    }
    spec.flags |= NODE_O_CHECK | (fix ? NODE_O_RDWR : 0);

    blk = img_open(filename, &spec);
    if (!blk) {
        return 1;
    }
    BlockNode *bs = blk_node(blk);
    ret = node_check(bs, &res, fix, print_problem, NULL);
    if (ret == -ENOTSUP) {
        tool_error("This image format does not support checks");
        blk_unref(blk);
        return 63;
    }
    if (ret >= 0 && (res.corruptions_fixed || res.leaks_fixed)) {
        int64_t cf = res.corruptions_fixed, lf = res.leaks_fixed;
        if (!json && !quiet) {
            printf("The following inconsistencies were found and repaired:"
                   "\n\n    %" PRId64 " leaked clusters\n    %" PRId64
                   " corruptions\n\nDouble checking the fixed image now...\n",
                   lf, cf);
        }
        ret = node_check(bs, &res, 0, print_problem, NULL);
        res.corruptions_fixed = cf;
        res.leaks_fixed = lf;
    }
    if (ret >= 0) {
        if (json) {
            dump_json(&res, filename, node_get_format_name(bs), quiet);
        } else {
            dump_human(&res, quiet);
        }
    }
    if (ret < 0 || res.check_errors) {
        if (ret < 0) {
            tool_error("Check failed: %s", g_strerror(-ret));
        } else {
            tool_error("Check failed");
        }
        blk_unref(blk);
        return 1;
    }
    blk_unref(blk);
    return res.corruptions ? 2 : res.leaks ? 3 : 0;
}
