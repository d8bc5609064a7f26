/*
 * Command-line conventions shared by the strata-img subcommands.
 *
 * qemu-img reports usage errors itself (its getopt strings start with ':'
 * so that getopt stays quiet) and names the offending argument as
 * argv[optind - 1]; we call the same getopt_long() the same way so that
 * even odd cases ("-zq" naming the previous argument) come out identical.
 */
#include <errno.h>
#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "strata/block-ops.h"
#include "strata/error.h"
#include "strata/units.h"
#include "strata/opts.h"
#include "img.h"

G_NORETURN void img_error_exit(const char *fmt, ...)
{
    va_list ap;

    fprintf(stderr, "%s: ", tool_name());
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fprintf(stderr, "\nTry '%s --help' for more information\n", tool_name());
    exit(EXIT_FAILURE);
}

int img_getopt(int argc, char **argv, const char *shortopts,
               const struct option *longopts)
{
    int c = getopt_long(argc, argv, shortopts, longopts, NULL);

    switch (c) {
    case ':':
        img_error_exit("missing argument for option '%s'", argv[optind - 1]);
    case '?':
        img_error_exit("unrecognized option '%s'", argv[optind - 1]);
    case 'h':
        img_help();
    default:
        return c;
    }
}

int64_t img_cvtnum_full(const char *name, const char *value, int64_t min,
                        int64_t max)
{
    uint64_t res;
    int err = tool_strtosz(value, NULL, &res);

    if (err < 0 && err != -ERANGE) {
        tool_error("Invalid %s specified. You may use k, M, G, T, P or E "
                   "suffixes for", name);
        tool_error("kilobytes, megabytes, gigabytes, terabytes, petabytes "
                   "and exabytes.");
        return err;
    }
    if (err == -ERANGE || res > (uint64_t)max || (int64_t)res < min) {
        tool_error("Invalid %s specified. Must be between %" PRId64 " and %"
                   PRId64 ".", name, min, max);
        return -ERANGE;
    }
    return (int64_t)res;
}

int64_t img_cvtnum(const char *name, const char *value)
{
    return img_cvtnum_full(name, value, 0, INT64_MAX);
}

bool img_output_format(const char *output, bool *json)
{
    if (output && strcmp(output, "json") && strcmp(output, "human")) {
        tool_error("--output must be used with human or json as argument.");
        return false;
    }
    *json = output && !strcmp(output, "json");
    return true;
}

bool img_strtoi(const char *value, int *out)
{
    char *end;
    long v;

    if (!value) {
        return false;
    }
    errno = 0;
    v = strtol(value, &end, 0);
    if (end == value || *end || errno == ERANGE || v < INT_MIN ||
        v > INT_MAX) {
        return false;
    }
    *out = (int)v;
    return true;
}

/* ---- Opening images ---- */

/*
 * The aio= option belongs to the protocol node.  When the top driver is a
 * format (or will be probed), it goes into the "file" child's options.
 */
static void set_aio_option(json_t *options, const char *aio)
{
    json_t *drvname = json_object_get(options, "driver");
    const BlockDriver *drv = json_is_string(drvname) ?
                             driver_find(json_string_value(drvname)) : NULL;
    json_t *file;

    if (drv && !driver_has(drv, DRIVER_IS_FORMAT)) {
        if (!json_object_get(options, "aio")) {
            json_object_set_new(options, "aio", json_string(aio));
        }
        return;
    }
    file = json_object_get(options, "file");
    if (json_is_string(file)) {
        return; /* a reference to an existing node: keep it as it is */
    }
    if (!file) {
        file = json_object();
        json_object_set_new(options, "file", file);
    }
    if (!json_object_get(file, "aio")) {
        json_object_set_new(file, "aio", json_string(aio));
    }
}

/* QemuOpts give flat "a.b" keys; the block layer wants nested objects. */
static json_t *crumple(json_t *flat, GError **errp)
{
    json_t *nested = json_object();
    const char *key;
    json_t *value;

    json_object_foreach(flat, key, value) {
        if (!opts_set_dotted(nested, key, json_incref(value), errp)) {
            json_decref(nested);
            return NULL;
        }
    }
    return nested;
}

/*
 * --image-opts strings use QemuOpts syntax with "file" as the implied key
 * of a leading bare word, as qemu-img's "source" option list does.
 */
static char *image_opts_with_implied_file(const char *optstr)
{
    size_t len = strcspn(optstr, "=,");

    if (optstr[len] == '=' || len == 0) {
        return g_strdup(optstr);
    }
    if (!strncmp(optstr, "help", len) && len == 4) {
        return g_strdup(optstr);
    }
    return g_strdup_printf("file=%s", optstr);
}

void img_open_option(int c, const char *arg, ImgOpenSpec *spec)
{
    switch (c) {
    case 'f':
        spec->fmt = arg;
        break;
    case 'U':
        spec->force_share = true;
        break;
    case IMG_OPTION_IMAGE_OPTS:
        spec->image_opts = true;
        break;
    case IMG_OPTION_OBJECT:
        tool_object_process_cmdline(arg);
        break;
    }
}

BlockBackend *img_open(const char *filename, const ImgOpenSpec *spec)
{
    GError *err = NULL;
    json_t *options = NULL;
    BlockBackend *blk;

    if (spec->image_opts) {
        char *optstr;
        bool ok;

        if (spec->fmt) {
            tool_error("--image-opts and --format are mutually exclusive");
            return NULL;
        }
        optstr = image_opts_with_implied_file(filename);
        ok = tool_qemuopts_parse(&options, optstr, false, &err);
        g_free(optstr);
        if (ok) {
            json_t *nested = crumple(options, &err);
            json_decref(options);
            options = nested;
            ok = nested != NULL;
        }
        if (!ok) {
            tool_error_gerror(err, "%s", "");
            json_decref(options);
            return NULL;
        }
        if (spec->force_share) {
            json_t *fs = json_object_get(options, "force-share");
            if (fs && json_is_string(fs) &&
                strcmp(json_string_value(fs), "on") &&
                strcmp(json_string_value(fs), "yes") &&
                strcmp(json_string_value(fs), "true")) {
                tool_error("--force-share/-U conflicts with image options");
                json_decref(options);
                return NULL;
            }
            json_object_set_new(options, "force-share", json_true());
        }
        if (spec->aio) {
            set_aio_option(options, spec->aio);
        }
        blk = blk_new_open(NULL, options, spec->flags, &err);
    } else {
        options = json_object();
        if (spec->fmt) {
            json_object_set_new(options, "driver", json_string(spec->fmt));
        }
        if (spec->force_share) {
            json_object_set_new(options, "force-share", json_true());
        }
        if (spec->aio) {
            set_aio_option(options, spec->aio);
        }
        blk = blk_new_open(filename, options, spec->flags, &err);
    }
    if (!blk) {
        if (node_error_is_backing_loop(err)) {
            tool_error_gerror(err, "%s", "");
        } else {
            tool_error_gerror(err, "Could not open '%s': ", filename);
        }
        return NULL;
    }
    blk_set_enable_write_cache(blk, !spec->writethrough);
    return blk;
}

/* ---- Protocols ---- */

/* The protocol driver named by a "proto:..." prefix, else "file". */
const BlockDriver *img_find_protocol(const char *filename, GError **errp)
{
    size_t len = strcspn(filename, ":/");
    const BlockDriver *found = NULL;
    char *proto;

    if (filename[len] != ':') {
        return driver_find("file");
    }
    proto = g_strndup(filename, len);
    found = driver_find_protocol(proto);
    if (!found) {
        error_setg(errp, "Unknown protocol '%s'", proto);
    }
    g_free(proto);
    return found;
}

const BlockDriver *img_find_protocol_or_report(const char *filename)
{
    GError *err = NULL;
    const BlockDriver *drv = img_find_protocol(filename, &err);

    if (!drv) {
        tool_error("%s", err->message);
        g_error_free(err);
    }
    return drv;
}
