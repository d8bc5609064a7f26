/*
 * strata-img info [--object objectdef] [--image-opts] [-f fmt]
 *                 [--output=ofmt] [--backing-chain] [-U] filename
 *
 * The information about one image is collected into a JSON object built
 * in QAPI ImageInfo member order (filename, format, dirty-flag,
 * actual-size, virtual-size, cluster-size, encrypted, backing-filename,
 * full-backing-filename, backing-filename-format, format-specific): the
 * JSON output sorts it the way QEMU's QDict does, and the human output
 * reads the same object, so both show the same facts.
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

enum {
    OPTION_OUTPUT = IMG_OPTION_FIRST_PRIVATE,
    OPTION_BACKING_CHAIN,
};

/* bdrv_query_image_info(): NULL with *errp on failure. */
static json_t *query_image_info(BlockNode *bs, GError **errp)
{
    int64_t size = node_getlength(bs);
    int64_t allocated;
    BlockDriverInfo bdi;
    json_t *info;

    if (size < 0) {
        error_setg_errno(errp, (int)-size, "Can't get image size '%s'",
                         node_get_filename(bs));
        return NULL;
    }
    info = json_object();
    json_object_set_new(info, "filename",
                        json_string_nocheck(node_get_filename(bs)));
    json_object_set_new(info, "format",
                        json_string(node_get_format_name(bs)));

    memset(&bdi, 0, sizeof(bdi));
    /* As QEMU: a driver that can answer get_info has a dirty flag. */
    bool have_bdi = node_get_info(bs, &bdi) == 0;
    if (have_bdi) {
        json_object_set_new(info, "dirty-flag", json_boolean(bdi.is_dirty));
    }
    allocated = node_get_allocated_file_size(bs);
    if (allocated >= 0) {
        json_object_set_new(info, "actual-size", json_integer(allocated));
    }
    json_object_set_new(info, "virtual-size", json_integer(size));
    if (have_bdi && bdi.cluster_size != 0) {
        json_object_set_new(info, "cluster-size",
                            json_integer(bdi.cluster_size));
    }
    if (node_is_encrypted(bs)) {
        json_object_set_new(info, "encrypted", json_true());
    }
    if (node_backing_file(bs)[0]) {
        /* The full name is always given, even when it is the same. */
        char *full = node_get_full_backing_filename(bs);
        json_object_set_new(info, "backing-filename",
                            json_string_nocheck(node_backing_file(bs)));
        if (full) {
            json_object_set_new(info, "full-backing-filename",
                                json_string_nocheck(full));
        }
        g_free(full);
        if (node_backing_format(bs)[0]) {
            json_object_set_new(info, "backing-filename-format",
                                json_string(node_backing_format(bs)));
        }
    }
    {
        /* QAPI's SnapshotInfo, members in schema order. */
        NodeSnapshot *list = NULL;
        int n = node_snapshot_list(bs, &list);
        if (n > 0) {
            json_t *arr = json_array();
            for (int i = 0; i < n; i++) {
                json_t *e = json_object();
                json_object_set_new(e, "id", json_string(list[i].id_str));
                json_object_set_new(e, "name", json_string(list[i].name));
                json_object_set_new(e, "vm-state-size",
                                    json_integer((json_int_t)
                                                 list[i].vm_state_size));
                json_object_set_new(e, "date-sec",
                                    json_integer(list[i].date_sec));
                json_object_set_new(e, "date-nsec",
                                    json_integer(list[i].date_nsec));
                json_object_set_new(e, "vm-clock-sec",
                                    json_integer((json_int_t)
                                                 (list[i].vm_clock_nsec /
                                                  1000000000ull)));
                json_object_set_new(e, "vm-clock-nsec",
                                    json_integer((json_int_t)
                                                 (list[i].vm_clock_nsec %
                                                  1000000000ull)));
                if (list[i].icount != UINT64_MAX) {
                    json_object_set_new(e, "icount",
                                        json_integer((json_int_t)
                                                     list[i].icount));
                }
                json_array_append_new(arr, e);
            }
            json_object_set_new(info, "snapshots", arr);
        }
        g_free(list);
    }
    {
        GError *err = NULL;
        json_t *data = node_get_specific_info(bs, &err);

        if (err) {
            g_propagate_error(errp, err);
            json_decref(data);
            json_decref(info);
            return NULL;
        }
        if (data) {
            json_t *spec = json_object();
            /* QAPI's union: {"type": format, "data": {...}}. */
            json_object_set_new(spec, "type",
                                json_string(node_get_format_name(bs)));
            json_object_set_new(spec, "data", data);
            json_object_set_new(info, "format-specific", spec);
        }
    }
    return info;
}

/* bdrv_image_info_dump(): the human layout of one image. */
static void dump_human(json_t *info)
{
    json_t *actual = json_object_get(info, "actual-size");
    json_t *v;
    int64_t vsize = json_integer_value(json_object_get(info, "virtual-size"));
    char *size_str = size_to_str((uint64_t)vsize);
    char *dsize_str = actual ? size_to_str(json_integer_value(actual))
                             : g_strdup("unavailable");

    printf("image: %s\n"
           "file format: %s\n"
           "virtual size: %s (%" PRId64 " bytes)\n"
           "disk size: %s\n",
           json_string_value(json_object_get(info, "filename")),
           json_string_value(json_object_get(info, "format")),
           size_str, vsize, dsize_str);
    g_free(size_str);
    g_free(dsize_str);

    if (json_is_true(json_object_get(info, "encrypted"))) {
        printf("encrypted: yes\n");
    }
    if ((v = json_object_get(info, "cluster-size"))) {
        printf("cluster_size: %" JSON_INTEGER_FORMAT "\n",
               json_integer_value(v));
    }
    if (json_is_true(json_object_get(info, "dirty-flag"))) {
        printf("cleanly shut down: no\n");
    }
    if ((v = json_object_get(info, "backing-filename"))) {
        json_t *full = json_object_get(info, "full-backing-filename");

        printf("backing file: %s", json_string_value(v));
        if (!full) {
            printf(" (cannot determine actual path)");
        } else if (strcmp(json_string_value(v), json_string_value(full))) {
            printf(" (actual path: %s)", json_string_value(full));
        }
        printf("\n");
    }
    if ((v = json_object_get(info, "backing-filename-format"))) {
        printf("backing file format: %s\n", json_string_value(v));
    }
    if ((v = json_object_get(info, "snapshots"))) {
        size_t i;
        json_t *e;

        printf("Snapshot list:\n");
        img_snapshot_dump_header();
        printf("\n");
        json_array_foreach(v, i, e) {
            NodeSnapshot sn = { 0 };
            json_t *ic = json_object_get(e, "icount");
            g_strlcpy(sn.id_str, json_string_value(json_object_get(e, "id")),
                      sizeof(sn.id_str));
            g_strlcpy(sn.name, json_string_value(json_object_get(e, "name")),
                      sizeof(sn.name));
            sn.vm_state_size = (uint64_t)json_integer_value(
                json_object_get(e, "vm-state-size"));
            sn.date_sec = (uint32_t)json_integer_value(
                json_object_get(e, "date-sec"));
            sn.date_nsec = (uint32_t)json_integer_value(
                json_object_get(e, "date-nsec"));
            sn.vm_clock_nsec =
                (uint64_t)json_integer_value(json_object_get(e,
                                                             "vm-clock-sec")) *
                1000000000ull +
                (uint64_t)json_integer_value(json_object_get(e,
                                                             "vm-clock-nsec"));
            sn.icount = ic ? (uint64_t)json_integer_value(ic) : UINT64_MAX;
            img_snapshot_dump(&sn);
            printf("\n");
        }
    }
    if ((v = json_object_get(info, "format-specific"))) {
        printf("Format specific information:\n");
        tool_dump_specific_info(v, 1);
    }
}

typedef struct FileId {
    uint64_t dev, ino;
} FileId;

static void report_loop(const char *filename)
{
    tool_error("Backing file '%s' creates an infinite loop.", filename);
}

/*
 * The information about filename and, with chain, each image below it, as
 * qemu-img collects it: every image is opened by itself without its
 * backing file (so that a broken backing file is reported by its own name),
 * and the next one is the full backing name the image records, in the
 * format it records; the options given apply to the top image only.  All
 * of it is gathered before anything is printed.  A name seen before is
 * a loop (QEMU's test); so is a file seen before under another name
 * ("a", "./a"), which QEMU would only notice once the names repeat, or
 * never when they keep growing ("../d/a" from d/a).
 */
static json_t *collect_info(const char *filename, ImgOpenSpec *spec,
                            bool chain)
{
    GHashTable *names = g_hash_table_new_full(g_str_hash, g_str_equal,
                                              g_free, NULL);
    GArray *ids = g_array_new(false, false, sizeof(FileId));
    json_t *list = json_array();
    char *name = g_strdup(filename);
    char *fmt = NULL;

    spec->flags |= NODE_O_NO_BACKING;
    while (name) {
        GError *err = NULL;
        BlockBackend *blk;
        json_t *info;
        FileId id;

        if (g_hash_table_contains(names, name)) {
            report_loop(name);
            goto fail;
        }
        blk = img_open(name, spec);
        if (!blk) {
            goto fail;
        }
        if (node_get_file_id(blk_node(blk), &id.dev, &id.ino)) {
            for (guint i = 0; i < ids->len; i++) {
                FileId *o = &g_array_index(ids, FileId, i);
                if (o->dev == id.dev && o->ino == id.ino) {
                    report_loop(name);
                    blk_unref(blk);
                    goto fail;
                }
            }
            g_array_append_val(ids, id);
        }
        info = query_image_info(blk_node(blk), &err);
        blk_unref(blk);
        if (!info) {
            tool_error_gerror(err, "%s", "");
            goto fail;
        }
        json_array_append_new(list, info);
        g_hash_table_add(names, name);
        name = NULL;
        g_free(fmt);
        fmt = NULL;
        spec->image_opts = false;
        if (chain) {
            json_t *full = json_object_get(info, "full-backing-filename");
            json_t *bfmt = json_object_get(info, "backing-filename-format");
            json_t *bname = json_object_get(info, "backing-filename");

            if (!full && bname) {
                /* Its storage has no directory (a quorum): QEMU stops. */
                tool_error("Could not determine absolute backing filename, "
                           "but backing filename '%s' present",
                           json_string_value(bname));
                goto fail;
            }
            name = full ? g_strdup(json_string_value(full)) : NULL;
            fmt = bfmt ? g_strdup(json_string_value(bfmt)) : NULL;
        }
        spec->fmt = fmt;
    }
    g_free(fmt);
    g_hash_table_destroy(names);
    g_array_free(ids, true);
    return list;

fail:
    g_free(name);
    g_free(fmt);
    g_hash_table_destroy(names);
    g_array_free(ids, true);
    json_decref(list);
    return NULL;
}

int img_info(int argc, char **argv)
{
    static const struct option long_options[] = {
        { "help", no_argument, NULL, 'h' },
        { "format", required_argument, NULL, 'f' },
        { "output", required_argument, NULL, OPTION_OUTPUT },
        { "backing-chain", no_argument, NULL, OPTION_BACKING_CHAIN },
        { "object", required_argument, NULL, IMG_OPTION_OBJECT },
        { "image-opts", no_argument, NULL, IMG_OPTION_IMAGE_OPTS },
        { "force-share", no_argument, NULL, 'U' },
        { NULL, 0, NULL, 0 },
    };
    ImgOpenSpec spec = { 0 };
    const char *output = NULL, *filename;
    bool chain = false, json;
    json_t *list;
    int c;

    while ((c = img_getopt(argc, argv, ":f:hU", long_options)) != -1) {
        switch (c) {
        case OPTION_OUTPUT:
            output = optarg;
            break;
        case OPTION_BACKING_CHAIN:
            chain = true;
            break;
        default:
            img_open_option(c, optarg, &spec);
        }
    }
    if (optind != argc - 1) {
        img_error_exit("Expecting one image file name");
    }
    filename = argv[optind];
    if (output && strcmp(output, "json") && strcmp(output, "human")) {
        tool_error("--output must be used with human or json as argument.");
        return EXIT_FAILURE;
    }
    json = output && !strcmp(output, "json");

    /* Metadata only: encrypted images open without their secret. */
    spec.flags |= NODE_O_NO_IO;
    list = collect_info(filename, &spec, chain);
    if (!list) {
        return EXIT_FAILURE;
    }
    if (json) {
        char *text = json_out_pretty_str(chain ? list : json_array_get(list, 0));
        printf("%s\n", text);
        g_free(text);
    } else {
        size_t i;
        json_t *info;

        json_array_foreach(list, i, info) {
            if (i) {
                printf("\n");
            }
            dump_human(info);
        }
    }
    json_decref(list);
    return EXIT_SUCCESS;
}
