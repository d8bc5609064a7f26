/*
 * strata-img dd [--image-opts] [-U] [-f fmt] [-O output_fmt]
 *               [bs=block_size] [count=blocks] [skip=blocks]
 *               if=input of=output
 *
 * qemu-img dd: operands are read left to right (the first bad one stops
 * everything); the input is opened, the output image is created with only
 * its size set (the format's defaults for the rest, and no "Formatting"
 * line), opened with its format given, and filled block by block with
 * plain reads and writes.  A skip past the end of the input is reported
 * but is not an error: the output is then empty, as dd(1) would leave it.
 */
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "strata/block-ops.h"
#include "strata/opts.h"
#include "strata/units.h"
#include "strata/error.h"
#include "img.h"

enum {
    DD_BS = 1 << 0,
    DD_COUNT = 1 << 1,
    DD_IF = 1 << 2,
    DD_OF = 1 << 3,
    DD_SKIP = 1 << 4,
};

typedef struct DdState {
    unsigned flags;
    int64_t bsz;        /* block size, 1..INT_MAX */
    int64_t count;      /* blocks to copy */
    int64_t skip;       /* input blocks to skip */
    const char *in;
    const char *out;
} DdState;

/* Parse one "name=value" operand; false after reporting an error. */
static bool dd_operand(DdState *dd, const char *arg)
{
    const char *eq = strchr(arg, '=');
    char *name;
    const char *value;
    bool ok = true;

    if (!eq) {
        tool_error("unrecognized operand %s", arg);
        return false;
    }
    name = g_strndup(arg, eq - arg);
    value = eq + 1;
    if (!strcmp(name, "bs")) {
        dd->bsz = img_cvtnum_full("bs", value, 1, INT_MAX);
        ok = dd->bsz >= 0;
        dd->flags |= DD_BS;
    } else if (!strcmp(name, "count")) {
        dd->count = img_cvtnum("count", value);
        ok = dd->count >= 0;
        dd->flags |= DD_COUNT;
    } else if (!strcmp(name, "if")) {
        dd->in = value;
        dd->flags |= DD_IF;
    } else if (!strcmp(name, "of")) {
        dd->out = value;
        dd->flags |= DD_OF;
    } else if (!strcmp(name, "skip")) {
        dd->skip = img_cvtnum("skip", value);
        ok = dd->skip >= 0;
        dd->flags |= DD_SKIP;
    } else {
        tool_error("unrecognized operand %s", name);
        ok = false;
    }
    g_free(name);
    return ok;
}

/* True when skip blocks of bsz bytes lie beyond size (or overflow). */
static bool skip_past_end(const DdState *dd, int64_t size)
{
    return (dd->flags & DD_SKIP) &&
           (dd->skip > INT64_MAX / dd->bsz || size < dd->bsz * dd->skip);
}

/* The output's format and protocol must exist and be able to create. */
static bool check_output(const char *out_fmt, const char *filename)
{
    const BlockDriver *drv = driver_find(out_fmt), *proto;

    if (!drv) {
        tool_error("Unknown file format");
        return false;
    }
    proto = img_find_protocol_or_report(filename);
    if (!proto) {
        return false;
    }
    if (!driver_has(drv, DRIVER_CAN_CREATE)) {
        tool_error("Format driver '%s' does not support image creation",
                   driver_format_name(drv));
        return false;
    }
    if (!driver_has(proto, DRIVER_CAN_CREATE)) {
        tool_error("Protocol driver '%s' does not support image creation",
                   driver_format_name(proto));
        return false;
    }
    return true;
}

/* Only the size is set: the format's defaults do the rest. */
static bool create_output(const char *out_fmt, const char *filename,
                          int64_t size)
{
    json_t *options = json_object();
    GError *err = NULL;

    json_object_set_new(options, "size", json_integer(size));
    if (!image_create(out_fmt, filename, options, &err)) {
        tool_error_gerror(err, "%s: error while creating output image: ",
                          filename);
        return false;
    }
    return true;
}

static int copy_blocks(BlockBackend *in, BlockBackend *out, int64_t in_pos,
                       int64_t size, int64_t bsz)
{
    uint8_t *buf = g_malloc(bsz);
    int64_t out_pos = 0;
    int ret = 0;

    while (in_pos < size) {
        int64_t bytes = MIN(bsz, size - in_pos);

        ret = blk_pread(in, in_pos, bytes, buf, 0);
        if (ret < 0) {
            tool_error("error while reading from input image file: %s",
                       g_strerror(-ret));
            break;
        }
        in_pos += bytes;
        ret = blk_pwrite(out, out_pos, bytes, buf, 0);
        if (ret < 0) {
            tool_error("error while writing to output image file: %s",
                       g_strerror(-ret));
            break;
        }
        out_pos += bytes;
    }
    g_free(buf);
    return ret < 0 ? ret : 0;
}

int img_dd(int argc, char **argv)
{
    static const struct option long_options[] = {
        { "help", no_argument, NULL, 'h' },
        { "image-opts", no_argument, NULL, IMG_OPTION_IMAGE_OPTS },
        { "object", required_argument, NULL, IMG_OPTION_OBJECT },
        { "force-share", no_argument, NULL, 'U' },
        { NULL, 0, NULL, 0 },
    };
    DdState dd = { .bsz = 512 };
    ImgOpenSpec in_spec = { 0 };
    ImgOpenSpec out_spec = { .flags = NODE_O_RDWR };
    const char *out_fmt = "raw";
    BlockBackend *in, *out;
    int64_t size, in_pos;
    int c, ret;

    while ((c = img_getopt(argc, argv, ":hf:O:U", long_options)) != -1) {
        switch (c) {
        case 'O':
            out_fmt = optarg;
            break;
        default:
            img_open_option(c, optarg, &in_spec);
        }
    }
    for (int i = optind; i < argc; i++) {
        if (!dd_operand(&dd, argv[i])) {
            return EXIT_FAILURE;
        }
    }
    if (!(dd.flags & DD_IF) || !(dd.flags & DD_OF)) {
        tool_error("Must specify both input and output files");
        return EXIT_FAILURE;
    }

    in = img_open(dd.in, &in_spec);
    if (!in) {
        return EXIT_FAILURE;
    }
    if (!check_output(out_fmt, dd.out)) {
        blk_unref(in);
        return EXIT_FAILURE;
    }
    size = blk_getlength(in);
    if (size < 0) {
        tool_error("Failed to get size for '%s'", dd.in);
        blk_unref(in);
        return EXIT_FAILURE;
    }
    if ((dd.flags & DD_COUNT) && dd.count <= INT64_MAX / dd.bsz &&
        dd.count * dd.bsz < size) {
        size = dd.count * dd.bsz;
    }
    if (!create_output(out_fmt, dd.out,
                       skip_past_end(&dd, size) ? 0
                                                : size - dd.bsz * dd.skip)) {
        blk_unref(in);
        return EXIT_FAILURE;
    }

    out_spec.fmt = out_fmt;
    out = img_open(dd.out, &out_spec);
    if (!out) {
        blk_unref(in);
        return EXIT_FAILURE;
    }
    if (skip_past_end(&dd, size)) {
        tool_error("%s: cannot skip to specified offset", dd.in);
        in_pos = size;
    } else {
        in_pos = dd.skip * dd.bsz;
    }
    ret = copy_blocks(in, out, in_pos, size, dd.bsz);
    blk_unref(out);
    blk_unref(in);
    return ret < 0 ? EXIT_FAILURE : EXIT_SUCCESS;
}
