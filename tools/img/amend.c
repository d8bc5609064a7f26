/*
 * strata-img amend [--object objectdef] [--image-opts]
 *     [-p | --progress=json|human] [-q] [-f fmt] [-t cache] [--force]
 *     -o options filename
 *
 * qemu-img amend: change options of an existing image in place (version,
 * lazy refcounts, size, data-file settings).  The option list is checked
 * against the format's amend options; an option that only creation knows
 * gets qemu-img's hint.  The work is the driver's (BlockDriver.amend).
 * Messages, their order and the exit codes are qemu-img 7.2's.
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
    OPTION_FORCE = IMG_OPTION_FIRST_PRIVATE,
};

/* qcow2's amend options, in QEMU's list order (help sorts them). */
static const ImgOptDesc qcow2_amend_opts[] = {
    { "encrypt.state", IMG_OPT_STRING,
      "Select new state of affected keyslots (active/inactive)", NULL },
    { "encrypt.keyslot", IMG_OPT_NUMBER,
      "Select a single keyslot to modify explicitly", NULL },
    { "encrypt.old-secret", IMG_OPT_STRING,
      "Select all keyslots that match this password", NULL },
    { "encrypt.new-secret", IMG_OPT_STRING,
      "New secret to set in the matching keyslots. Empty string to erase",
      NULL },
    { "encrypt.iter-time", IMG_OPT_NUMBER,
      "Time to spend in PBKDF in milliseconds", NULL },
    { "size", IMG_OPT_SIZE, "Virtual disk size", NULL },
    { "compat", IMG_OPT_STRING, "Compatibility level (v2 [0.10] or v3 [1.1])",
      NULL },
    { "backing_file", IMG_OPT_STRING, "File name of a base image", NULL },
    { "backing_fmt", IMG_OPT_STRING, "Image format of the base image", NULL },
    { "data_file", IMG_OPT_STRING, "File name of an external data file",
      NULL },
    { "data_file_raw", IMG_OPT_BOOL,
      "The external data file must stay valid as a raw image", NULL },
    { "lazy_refcounts", IMG_OPT_BOOL, "Postpone refcount updates", "off" },
    { "refcount_bits", IMG_OPT_NUMBER,
      "Width of a reference count entry in bits", "16" },
    { NULL },
};

/* block_crypto_amend_opts_luks, in QEMU's order. */
static const ImgOptDesc luks_amend_opts[] = {
    { "state", IMG_OPT_STRING,
      "Select new state of affected keyslots (active/inactive)", NULL },
    { "keyslot", IMG_OPT_NUMBER,
      "Select a single keyslot to modify explicitly", NULL },
    { "old-secret", IMG_OPT_STRING,
      "Select all keyslots that match this password", NULL },
    { "new-secret", IMG_OPT_STRING,
      "New secret to set in the matching keyslots. Empty string to erase",
      NULL },
    { "iter-time", IMG_OPT_NUMBER, "Time to spend in PBKDF in milliseconds",
      NULL },
    { NULL },
};

static const ImgOptDesc *amend_opts_for(const BlockDriver *drv)
{
    const char *name = driver_format_name(drv);

    if (driver_has(drv, DRIVER_CAN_AMEND) && !strcmp(name, "qcow2")) {
        return qcow2_amend_opts;
    }
    if (driver_has(drv, DRIVER_CAN_AMEND) && !strcmp(name, "luks")) {
        return luks_amend_opts;
    }
    return NULL;
}

static int print_amend_option_help(const char *fmt)
{
    const BlockDriver *drv = driver_find(fmt);
    const ImgOptDesc *list;

    if (!drv) {
        tool_error("Unknown file format '%s'", fmt);
        return EXIT_FAILURE;
    }
    list = amend_opts_for(drv);
    if (!list) {
        tool_error("Format driver '%s' does not support option amendment",
                   fmt);
        return EXIT_FAILURE;
    }
    printf("Amend options for '%s':\n", fmt);
    img_create_opts_print_help(list);
    return EXIT_SUCCESS;
}

/* done and total are the driver's units of work (not bytes): the JSON
 * lines report them as they come, with the same percentage as the meter. */
static void amend_status(void *opaque, int64_t done, int64_t total)
{
    if (total > 0 && done >= 0) {
        img_progress_set_bytes(opaque, (uint64_t)MIN(done, total),
                               (uint64_t)total);
    }
    img_progress_print(opaque, total ? 100.f * done / total : 0.f, 0);
}

/*
 * Parse the option list against the amend options; on failure, QEMU
 * tries the creation options too and, if the list is valid there, says
 * the option is for creation only.
 */
static ImgOpts *parse_amend_options(const BlockDriver *drv,
                                    const ImgOptDesc *list,
                                    const char *options)
{
    ImgOpts *opts = img_opts_new(list);
    GError *err = NULL;

    if (!img_opts_parse(opts, options, &err)) {
        ImgOptDesc *create = img_create_opts_for(drv);
        ImgOptDesc *all = img_create_opts_append(
            img_create_opts_append(g_new0(ImgOptDesc, 1), list), create);
        ImgOpts *copts = img_opts_new(all);
        GError *cerr = NULL;

        if (img_opts_parse(copts, options, &cerr)) {
            tool_error("%s\nThis option is only supported for image "
                       "creation", err->message);
        } else {
            tool_error("%s", err->message);
        }
        g_clear_error(&cerr);
        g_error_free(err);
        img_opts_free(copts);
        g_free(all);
        g_free(create);
        img_opts_free(opts);
        return NULL;
    }
    return opts;
}

int img_amend(int argc, char **argv)
{
    static const struct option long_options[] = {
        { "help", no_argument, NULL, 'h' },
        { "object", required_argument, NULL, IMG_OPTION_OBJECT },
        { "image-opts", no_argument, NULL, IMG_OPTION_IMAGE_OPTS },
        { "force", no_argument, NULL, OPTION_FORCE },
        { "progress", required_argument, NULL, IMG_OPTION_PROGRESS },
        { NULL, 0, NULL, 0 },
    };
    ImgOpenSpec spec = { 0 };
    const char *cache = "writeback", *filename, *fmt;
    char *options = NULL;
    bool progress = false, quiet = false, force = false, json = false;
    BlockBackend *blk = NULL;
    ImgOpts *opts = NULL;
    const ImgOptDesc *list;
    ImgProgress prog;
    BlockNode *bs;
    json_t *amend_opts;
    GError *err = NULL;
    int c, ret = EXIT_FAILURE;

    while ((c = img_getopt(argc, argv, ":ho:f:t:pq", long_options)) != -1) {
        switch (c) {
        case 'o':
            if (!img_append_option_list(&options, optarg)) {
                g_free(options);
                return EXIT_FAILURE;
            }
            break;
        case 't':
            cache = optarg;
            break;
        case 'p':
            progress = true;
            break;
        case IMG_OPTION_PROGRESS:
            if (!img_progress_parse(optarg, &progress, &json)) {
                g_free(options);
                return EXIT_FAILURE;
            }
            break;
        case 'q':
            quiet = true;
            break;
        case OPTION_FORCE:
            force = true;
            break;
        default:
            img_open_option(c, optarg, &spec);
        }
    }
    if (!options) {
        img_error_exit("Must specify options (-o)");
    }
    if (quiet) {
        progress = false;
    }
    img_progress_init_mode(&prog, progress, json, "amend", 1.0);
    filename = optind == argc - 1 ? argv[argc - 1] : NULL;

    /* With -f, "-o help" needs no image (nor even a file name). */
    if (spec.fmt && img_has_help_option(options)) {
        ret = print_amend_option_help(spec.fmt);
        goto out;
    }
    if (!filename) {
        tool_error("Expecting one image file name");
        goto out;
    }
    spec.flags = NODE_O_RDWR | NODE_O_RESIZE;
    if (tool_parse_cache_mode(cache, &spec.flags, &spec.writethrough) < 0) {
        tool_error("Invalid cache option: %s", cache);
        goto out;
    }
    blk = img_open(filename, &spec);
    if (!blk) {
        goto out;
    }
    bs = blk_node(blk);
    fmt = node_get_format_name(bs);
    if (img_has_help_option(options)) {
        ret = print_amend_option_help(fmt);
        goto out;
    }
    list = amend_opts_for(node_get_driver(bs));
    if (!list) {
        tool_error("Format driver '%s' does not support option amendment",
                   fmt);
        goto out;
    }
    opts = parse_amend_options(node_get_driver(bs), list, options);
    if (!opts) {
        goto out;
    }

    /* Reported here in case the driver never reports. */
    img_progress_print(&prog, 0.f, 0);
    amend_opts = img_opts_to_json(opts);
    c = node_amend(bs, amend_opts, force, amend_status, &prog, &err);
    json_decref(amend_opts);
    /* qemu-img's meter shows 100 even after a failure; a JSON reader takes
     * done == total for success, so it gets no such line. */
    if (c >= 0 || !prog.json_op) {
        img_progress_print(&prog, 100.f, 0);
    }
    if (c < 0) {
        if (err && !strcmp(err->message, "Cannot amend the backing file")) {
            tool_error("%s\nYou can use '%s rebase' instead.",
                       err->message, tool_name());
        } else if (err) {
            tool_error("%s", err->message);
        } else {
            tool_error("Error while amending options: %s", g_strerror(-c));
        }
        g_clear_error(&err);
        goto out;
    }
    ret = EXIT_SUCCESS;
out:
    img_progress_end(&prog);
    if (opts) {
        img_opts_free(opts);
    }
    if (blk) {
        blk_unref(blk);
    }
    g_free(options);
    return ret;
}
