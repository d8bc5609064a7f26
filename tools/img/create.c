/*
 * strata-img create [--object objectdef] [-q] [-f fmt]
 *                   [-b backing_file [-F backing_fmt]] [-u] [-o options]
 *                   filename [size]
 *
 * The order of the steps matters for compatibility, because qemu-img's
 * output depends on which check fails first: the -o list is parsed and
 * type-checked against the merged option list of the format and the
 * protocol, then the size and the backing file are settled, then the
 * "Formatting ..." line is printed, and only then does the driver run (its
 * errors come after that line).
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
    OPTION_OBJECT = 256,
};

/* A relative backing file name is relative to the new image's directory. */
static char *backing_path(const char *filename, const char *backing)
{
    size_t len = strcspn(backing, ":/");
    char *dir, *path;

    if (backing[0] == '/' || backing[len] == ':' || !strchr(filename, '/')) {
        return g_strdup(backing);
    }
    dir = g_path_get_dirname(filename);
    path = g_build_filename(dir, backing, NULL);
    g_free(dir);
    return path;
}

/*
 * Settle the backing file: refuse obvious mistakes and, unless -u, open it
 * to check it and to take the image size from it when none was given.
 * A hint that QEMU prints without a final newline goes to *raw_hint.
 */
static bool check_backing(ImgOpts *opts, const char *filename, bool unsafe,
                          char **raw_hint, GError **errp)
{
    ImgOptValue *bf = img_opts_find(opts, "backing_file");
    ImgOptValue *bfmt = img_opts_find(opts, "backing_fmt");
    ImgOptValue *size = img_opts_find(opts, "size");
    GError *local = NULL;
    json_t *options;
    BlockNode *bs;
    char *path;

    if (!bf) {
        return true;
    }
    if (!strcmp(filename, bf->str)) {
        error_setg(errp, "Error: Trying to create an image with the same "
                   "filename as the backing file");
        return false;
    }
    if (!bf->str[0]) {
        error_setg(errp, "Expected backing file name, got empty string");
        return false;
    }
    if (unsafe) {
        if (!bfmt) {
            error_setg(errp, "Backing file specified without backing format");
            return false;
        }
        return true;
    }
    options = json_object();
    if (bfmt) {
        json_object_set_new(options, "driver", json_string(bfmt->str));
    }
    /* Another user (a running VM) may have the backing file open. */
    json_object_set_new(options, "force-share", json_true());
    path = backing_path(filename, bf->str);
    /* Only its size and format are needed, as in qemu-img (an encrypted
     * one needs no key). */
    bs = node_open(path, options, NODE_O_NO_IO, &local);
    g_free(path);
    if (!bs) {
        error_setg(errp, "%s\nCould not open backing image.", local->message);
        g_error_free(local);
        return false;
    }
    if (!bfmt) {
        error_setg(errp, "Backing file specified without backing format");
        *raw_hint = g_strdup_printf("Detected format of %s.",
                                    node_get_format_name(bs));
        node_unref(bs);
        return false;
    }
    if (!size || size->num == UINT64_MAX) {
        int64_t len = node_getlength(bs);
        if (len < 0) {
            error_setg_errno(errp, (int)-len, "Could not get size of '%s'",
                             bf->str);
            node_unref(bs);
            return false;
        }
        img_opts_set_number(opts, "size", (uint64_t)len);
    }
    node_unref(bs);
    return true;
}

/* qemu-img's bdrv_img_create(): returns false with *errp set. */
static bool create_image(const char *filename, const char *fmt,
                         const char *base_filename, const char *base_fmt,
                         const char *options, int64_t img_size, bool unsafe,
                         bool quiet, char **raw_hint, GError **errp)
{
    const BlockDriver *drv, *proto;
    ImgOptDesc *list = NULL, *plist;
    ImgOpts *opts = NULL;
    ImgOptValue *size;
    bool ok = false;

    drv = driver_find(fmt);
    if (!drv) {
        error_setg(errp, "Unknown file format '%s'", fmt);
        return false;
    }
    proto = img_find_protocol(filename, errp);
    if (!proto) {
        return false;
    }
    if (!driver_has(drv, DRIVER_CAN_CREATE)) {
        error_setg(errp, "Format driver '%s' does not support image creation",
                   driver_format_name(drv));
        return false;
    }
    if (!driver_has(proto, DRIVER_CAN_CREATE)) {
        error_setg(errp, "Protocol driver '%s' does not support image "
                   "creation", driver_format_name(proto));
        return false;
    }
    list = img_create_opts_for(drv);
    plist = img_create_opts_for(proto);
    list = img_create_opts_append(list, plist);
    g_free(plist);
    opts = img_opts_new(list);

    if (options && !img_opts_parse(opts, options, errp)) {
        goto out;
    }
    if (!img_opts_find(opts, "size")) {
        img_opts_set_number(opts, "size", (uint64_t)img_size);
    } else if (img_size != -1) {
        error_setg(errp, "The image size must be specified only once");
        goto out;
    }
    if (base_filename &&
        !img_opts_set(opts, "backing_file", base_filename, NULL)) {
        error_setg(errp, "Backing file not supported for file format '%s'",
                   fmt);
        goto out;
    }
    if (base_fmt && !img_opts_set(opts, "backing_fmt", base_fmt, NULL)) {
        error_setg(errp, "Backing file format not supported for file "
                   "format '%s'", fmt);
        goto out;
    }
    if (!check_backing(opts, filename, unsafe, raw_hint, errp)) {
        goto out;
    }
    size = img_opts_find(opts, "size");
    if (!size || size->num == UINT64_MAX) {
        error_setg(errp, "Image creation needs a size parameter");
        goto out;
    }

    if (!quiet) {
        char *line = img_opts_to_string(opts);
        printf("Formatting '%s', fmt=%s%s\n", filename, fmt, line);
        fflush(stdout);
        g_free(line);
    }
    /* QEMU parses hex sizes with a suffix once more inside the driver. */
    for (guint i = 0; i < opts->values->len; i++) {
        ImgOptValue *v = opts->values->pdata[i];
        if (v->hex_suffix) {
            tool_warn("Using a multiplier suffix on hex numbers is "
                      "deprecated: %s", v->str);
        }
    }
    ok = image_create(fmt, filename, img_opts_to_json(opts), errp);
    if (!ok && errp && *errp &&
        g_str_has_suffix((*errp)->message, g_strerror(EFBIG))) {
        /*
         * qemu-img replaces whatever a driver said about -EFBIG, which only
         * the message still carries here; the hint when the format has a
         * cluster size (qcow2's default counts).
         */
        ImgOptValue *cs = img_opts_find(opts, "cluster_size");
        const ImgOptDesc *d;
        bool hint = cs ? cs->num != 0 : false;

        for (d = list; !cs && d->name; d++) {
            hint = hint || (!strcmp(d->name, "cluster_size") && d->def_value &&
                            strcmp(d->def_value, "0"));
        }
        g_clear_error(errp);
        error_setg(errp, "The image size is too large for file format '%s'%s",
                   fmt, hint ? " (try using a larger cluster size)" : "");
    }
out:
    img_opts_free(opts);
    g_free(list);
    return ok;
}

int img_create(int argc, char **argv)
{
    static const struct option long_options[] = {
        { "help", no_argument, NULL, 'h' },
        { "object", required_argument, NULL, OPTION_OBJECT },
        { NULL, 0, NULL, 0 },
    };
    const char *fmt = "raw", *base_fmt = NULL, *base_filename = NULL;
    const char *filename;
    char *options = NULL, *raw_hint = NULL;
    bool quiet = false, unsafe = false;
    int64_t img_size = -1;
    GError *err = NULL;
    int c, ret;

    while ((c = img_getopt(argc, argv, ":F:b:f:ho:qu", long_options)) != -1) {
        switch (c) {
        case 'F':
            base_fmt = optarg;
            break;
        case 'b':
            base_filename = optarg;
            break;
        case 'f':
            fmt = optarg;
            break;
        case 'o':
            if (!img_append_option_list(&options, optarg)) {
                g_free(options);
                return EXIT_FAILURE;
            }
            break;
        case 'q':
            quiet = true;
            break;
        case 'u':
            unsafe = true;
            break;
        case OPTION_OBJECT:
            tool_object_process_cmdline(optarg);
            break;
        }
    }

    /* "-o help" works without a filename: it then lists the format only. */
    filename = optind < argc ? argv[optind] : NULL;
    if (options && img_has_help_option(options)) {
        g_free(options);
        return img_print_create_help(filename, fmt);
    }
    if (optind >= argc) {
        img_error_exit("Expecting image file name");
    }
    optind++;
    if (optind < argc) {
        int64_t sval = img_cvtnum("image size", argv[optind++]);
        if (sval < 0) {
            g_free(options);
            return EXIT_FAILURE;
        }
        img_size = sval;
    }
    if (optind != argc) {
        img_error_exit("Unexpected argument: %s", argv[optind]);
    }

    ret = EXIT_SUCCESS;
    if (!create_image(filename, fmt, base_filename, base_fmt, options,
                      img_size, unsafe, quiet, &raw_hint, &err)) {
        tool_error_gerror(err, "%s: ", filename);
        if (raw_hint) {
            /* qemu-img ends this hint without a newline. */
            fputs(raw_hint, stderr);
        }
        ret = EXIT_FAILURE;
    }
    g_free(raw_hint);
    g_free(options);
    return ret;
}
