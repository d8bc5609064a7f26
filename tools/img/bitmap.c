/*
 * strata-img bitmap (--merge SOURCE | --add | --remove | --clear |
 *                    --enable | --disable)... [-b source_file
 *                    [-F source_fmt]] [-g granularity] [--object objectdef]
 *                    [--image-opts | -f fmt] filename bitmap
 *
 * qemu-img bitmap: the actions run in command-line order on one bitmap of
 * an image opened read-write without its backing chain, through the same
 * library calls the daemon's block-dirty-bitmap-* commands use; the first
 * failure stops the rest ("Operation OP on bitmap NAME failed: ...").  The
 * format driver stores the persistent bitmaps when the image is closed.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "strata/dirty-bitmap.h"
#include "strata/error.h"
#include "img.h"

enum {
    OPTION_ADD = IMG_OPTION_FIRST_PRIVATE,
    OPTION_REMOVE,
    OPTION_CLEAR,
    OPTION_ENABLE,
    OPTION_DISABLE,
    OPTION_MERGE,
};

typedef struct BitmapAction {
    int act;              /* OPTION_* */
    const char *src;      /* --merge */
} BitmapAction;

static const char *action_name(int act)
{
    switch (act) {
    case OPTION_ADD:
        return "add";
    case OPTION_REMOVE:
        return "remove";
    case OPTION_CLEAR:
        return "clear";
    case OPTION_ENABLE:
        return "enable";
    case OPTION_DISABLE:
        return "disable";
    default:
        return "merge";
    }
}

int img_bitmap(int argc, char **argv)
{
    static const struct option long_options[] = {
        { "help", no_argument, NULL, 'h' },
        { "object", required_argument, NULL, IMG_OPTION_OBJECT },
        { "image-opts", no_argument, NULL, IMG_OPTION_IMAGE_OPTS },
        { "add", no_argument, NULL, OPTION_ADD },
        { "remove", no_argument, NULL, OPTION_REMOVE },
        { "clear", no_argument, NULL, OPTION_CLEAR },
        { "enable", no_argument, NULL, OPTION_ENABLE },
        { "disable", no_argument, NULL, OPTION_DISABLE },
        { "merge", required_argument, NULL, OPTION_MERGE },
        { "granularity", required_argument, NULL, 'g' },
        { "source-file", required_argument, NULL, 'b' },
        { "source-format", required_argument, NULL, 'F' },
        { NULL, 0, NULL, 0 },
    };
    ImgOpenSpec spec = { 0 }, src_spec = { 0 };
    GArray *actions = g_array_new(false, false, sizeof(BitmapAction));
    const char *src_filename = NULL, *src_fmt = NULL;
    const char *filename, *bitmap;
    BlockBackend *blk = NULL, *src = NULL;
    BlockNode *bs, *src_bs;
    int64_t granularity = 0;
    bool add = false, merge = false;
    int ret = EXIT_FAILURE;
    int c;

    while ((c = img_getopt(argc, argv, ":b:f:F:g:h", long_options)) != -1) {
        BitmapAction a = { c, NULL };
        switch (c) {
        case 'b':
            src_filename = optarg;
            break;
        case 'F':
            src_fmt = optarg;
            break;
        case 'g':
            granularity = img_cvtnum("granularity", optarg);
            if (granularity < 0) {
                g_array_free(actions, true);
                return EXIT_FAILURE;
            }
            break;
        case OPTION_MERGE:
            a.src = optarg;
            merge = true;
            g_array_append_val(actions, a);
            break;
        case OPTION_ADD:
            add = true;
            /* fall through */
        case OPTION_REMOVE:
        case OPTION_CLEAR:
        case OPTION_ENABLE:
        case OPTION_DISABLE:
            g_array_append_val(actions, a);
            break;
        default:
            img_open_option(c, optarg, &spec);
        }
    }

    if (actions->len == 0) {
        tool_error("Need at least one of --add, --remove, --clear, "
                   "--enable, --disable, or --merge");
        goto out;
    }
    if (granularity && !add) {
        tool_error("granularity only supported with --add");
        goto out;
    }
    if (src_fmt && !src_filename) {
        tool_error("-F only supported with -b");
        goto out;
    }
    if (src_filename && !merge) {
        tool_error("Merge bitmap source file only supported with --merge");
        goto out;
    }
    if (optind != argc - 2) {
        tool_error("Expecting filename and bitmap name");
        goto out;
    }
    filename = argv[optind];
    bitmap = argv[optind + 1];

    /* Bitmaps belong to this image alone: no backing chain is opened. */
    spec.flags |= NODE_O_RDWR | NODE_O_NO_BACKING;
    blk = img_open(filename, &spec);
    if (!blk) {
        goto out;
    }
    bs = blk_node(blk);
    src_bs = bs;
    if (src_filename) {
        src_spec.fmt = src_fmt;
        src_spec.flags = NODE_O_NO_BACKING;
        src = img_open(src_filename, &src_spec);
        if (!src) {
            goto out;
        }
        src_bs = blk_node(src);
    }

    for (guint i = 0; i < actions->len; i++) {
        BitmapAction *a = &g_array_index(actions, BitmapAction, i);
        GError *err = NULL;
        bool ok;

        switch (a->act) {
        case OPTION_ADD:
            /* QMP's granularity is 32 bits: qemu-img's value is cut. */
            if (granularity && !(uint32_t)granularity) {
                error_setg(&err, "Granularity must be power of 2 and at "
                           "least 512");
                ok = false;
                break;
            }
            ok = node_dirty_bitmap_add(bs, bitmap, (uint32_t)granularity,
                                       true, false, &err);
            break;
        case OPTION_REMOVE:
            ok = node_dirty_bitmap_remove(bs, bitmap, &err);
            break;
        case OPTION_CLEAR:
            ok = node_dirty_bitmap_clear(bs, bitmap, &err);
            break;
        case OPTION_ENABLE:
            ok = node_dirty_bitmap_enable(bs, bitmap, &err);
            break;
        case OPTION_DISABLE:
            ok = node_dirty_bitmap_disable(bs, bitmap, &err);
            break;
        default:
            ok = node_dirty_bitmap_merge(bs, bitmap, src_bs, a->src, &err);
            break;
        }
        if (!ok) {
            tool_error_gerror(err, "Operation %s on bitmap %s failed: ",
                              action_name(a->act), bitmap);
            goto out;
        }
    }
    ret = EXIT_SUCCESS;

out:
    if (src) {
        blk_unref(src);
    }
    if (blk) {
        blk_unref(blk);
    }
    g_array_free(actions, true);
    return ret;
}
