/*
 * strata-img resize [--object objectdef] [--image-opts] [-f fmt]
 *                   [--preallocation=prealloc] [-q] [--shrink]
 *                   filename [+ | -]size
 *
 * qemu-img resize: the size is always the last argument and is taken off
 * the command line before option parsing, so that "-1M" is a size and not
 * an option.  A leading '+' or '-' makes it relative to the current size.
 * The checks run in qemu-img's order, because which message a user sees
 * depends on it: the size string, then opening the image, then the sign
 * of the result, preallocation, --shrink, and finally the driver's own
 * truncate errors.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "strata/error.h"
#include "img.h"

enum {
    OPTION_PREALLOCATION = IMG_OPTION_FIRST_PRIVATE,
    OPTION_SHRINK,
};

/* qemu-img parses the size as the "size" option of a one-entry list. */
static const ImgOptDesc resize_opts[] = {
    { "size", IMG_OPT_SIZE, "Virtual disk size", NULL },
    { NULL },
};

static bool parse_size(const char *str, uint64_t *size)
{
    ImgOpts *opts = img_opts_new(resize_opts);
    GError *err = NULL;
    bool ok = img_opts_set(opts, "size", str, &err);

    if (ok) {
        *size = img_opts_find(opts, "size")->num;
    } else {
        tool_error_gerror(err, "%s", "");
    }
    img_opts_free(opts);
    return ok;
}

static int parse_prealloc(const char *name)
{
    for (int i = 0; i < PREALLOC_MODE__MAX; i++) {
        if (!strcmp(prealloc_mode_names[i], name)) {
            return i;
        }
    }
    return -1;
}

int img_resize(int argc, char **argv)
{
    static const struct option long_options[] = {
        { "help", no_argument, NULL, 'h' },
        { "object", required_argument, NULL, IMG_OPTION_OBJECT },
        { "image-opts", no_argument, NULL, IMG_OPTION_IMAGE_OPTS },
        { "preallocation", required_argument, NULL, OPTION_PREALLOCATION },
        { "shrink", no_argument, NULL, OPTION_SHRINK },
        { NULL, 0, NULL, 0 },
    };
    ImgOpenSpec spec = { 0 };
    PreallocMode prealloc = PREALLOC_MODE_OFF;
    bool quiet = false, shrink = false;
    const char *size_str, *filename;
    int64_t current, total;
    uint64_t n;
    GError *err = NULL;
    BlockBackend *blk;
    int c, relative;

    if (argc < 3) {
        img_error_exit("Not enough arguments");
    }
    /* The size is never an option, whatever it looks like. */
    size_str = argv[--argc];

    while ((c = img_getopt(argc, argv, ":f:hq", long_options)) != -1) {
        switch (c) {
        case 'q':
            quiet = true;
            break;
        case OPTION_PREALLOCATION: {
            int mode = parse_prealloc(optarg);
            if (mode < 0) {
                tool_error("Invalid preallocation mode '%s'", optarg);
                return EXIT_FAILURE;
            }
            prealloc = (PreallocMode)mode;
            break;
        }
        case OPTION_SHRINK:
            shrink = true;
            break;
        default:
            img_open_option(c, optarg, &spec);
        }
    }
    if (optind != argc - 1) {
        img_error_exit("Expecting image file name and size");
    }
    filename = argv[optind];

    switch (size_str[0]) {
    case '+':
        relative = 1;
        size_str++;
        break;
    case '-':
        relative = -1;
        size_str++;
        break;
    default:
        relative = 0;
    }
    if (!parse_size(size_str, &n)) {
        return EXIT_FAILURE;
    }

    spec.flags = NODE_O_RDWR | NODE_O_RESIZE;
    blk = img_open(filename, &spec);
    if (!blk) {
        return EXIT_FAILURE;
    }
    current = blk_getlength(blk);
    if (current < 0) {
        tool_error("Failed to inquire current image length: %s",
                   g_strerror((int)-current));
        blk_unref(blk);
        return EXIT_FAILURE;
    }

    /*
     * qemu-img computes this in int64_t and lets it wrap: a size of 8E or
     * more, or a sum past 2^63, comes out negative and is refused below.
     */
    if (relative > 0) {
        total = (int64_t)((uint64_t)current + n);
    } else if (relative < 0) {
        total = (int64_t)((uint64_t)current - n);
    } else {
        total = (int64_t)n;
    }
    if (total <= 0) {
        tool_error("New image size must be positive");
        blk_unref(blk);
        return EXIT_FAILURE;
    }
    if (total <= current && prealloc != PREALLOC_MODE_OFF) {
        tool_error("Preallocation can only be used for growing images");
        blk_unref(blk);
        return EXIT_FAILURE;
    }
    if (total < current && !shrink) {
        tool_error("Use the --shrink option to perform a shrink operation.");
        tool_warn("Shrinking an image will delete all data beyond the "
                  "shrunken image's end. Before performing such an "
                  "operation, make sure there is no important data there.");
        blk_unref(blk);
        return EXIT_FAILURE;
    }

    /* exact: a user asking for a size must get that size or an error. */
    if (blk_truncate(blk, total, true, prealloc, &err) < 0) {
        tool_error_gerror(err, "%s", "");
        blk_unref(blk);
        return EXIT_FAILURE;
    }
    if (!quiet) {
        printf("Image resized.\n");
    }
    blk_unref(blk);
    return EXIT_SUCCESS;
}
