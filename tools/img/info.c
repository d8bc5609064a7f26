/*
 * strata-img info [--object objectdef] [--image-opts] [-f fmt]
 *                 [--output=ofmt] [--backing-chain] [-U] filename
 *
 * The information about one image is the library's NodeImageInfo (the
 * same that QMP reports); the JSON output is built from it in QAPI
 * ImageInfo member order and sorted the way QEMU's QDict does, and the
 * human output reads the same value, so both show the same facts.
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

/* The format-specific information as QAPI's union (new reference). */
static json_t *specific_json(const NodeImageInfo *info)
{
    json_t *spec = json_object();
    json_object_set_new(spec, "type", json_string(info->format));
    json_object_set(spec, "data", info->format_specific);
    return spec;
}

/* info as QAPI's ImageInfo, members in schema order. */
static json_t *image_info_json(const NodeImageInfo *info)
{
    json_t *j = json_object();

    json_object_set_new(j, "filename", json_string_nocheck(info->filename));
    json_object_set_new(j, "format", json_string(info->format));
    if (info->has_dirty_flag) {
        json_object_set_new(j, "dirty-flag", json_boolean(info->dirty_flag));
    }
    if (info->has_actual_size) {
        json_object_set_new(j, "actual-size", json_integer(info->actual_size));
    }
    json_object_set_new(j, "virtual-size", json_integer(info->virtual_size));
    if (info->cluster_size) {
        json_object_set_new(j, "cluster-size",
                            json_integer(info->cluster_size));
    }
    if (info->encrypted) {
        json_object_set_new(j, "encrypted", json_true());
    }
    if (info->backing_filename) {
        json_object_set_new(j, "backing-filename",
                            json_string_nocheck(info->backing_filename));
    }
    if (info->full_backing_filename) {
        json_object_set_new(j, "full-backing-filename",
                            json_string_nocheck(info->full_backing_filename));
    }
    if (info->backing_filename_format) {
        json_object_set_new(j, "backing-filename-format",
                            json_string(info->backing_filename_format));
    }
    if (info->nb_snapshots) {
        json_t *arr = json_array();
        for (int i = 0; i < info->nb_snapshots; i++) {
            const NodeSnapshot *sn = &info->snapshots[i];
            json_t *e = json_object();
            json_object_set_new(e, "id", json_string(sn->id_str));
            json_object_set_new(e, "name", json_string(sn->name));
            json_object_set_new(e, "vm-state-size",
                                json_integer((json_int_t)sn->vm_state_size));
            json_object_set_new(e, "date-sec", json_integer(sn->date_sec));
            json_object_set_new(e, "date-nsec", json_integer(sn->date_nsec));
            json_object_set_new(e, "vm-clock-sec",
                                json_integer((json_int_t)
                                             (sn->vm_clock_nsec /
                                              1000000000ull)));
            json_object_set_new(e, "vm-clock-nsec",
                                json_integer((json_int_t)
                                             (sn->vm_clock_nsec %
                                              1000000000ull)));
            if (sn->icount != UINT64_MAX) {
                json_object_set_new(e, "icount",
                                    json_integer((json_int_t)sn->icount));
            }
            json_array_append_new(arr, e);
        }
        json_object_set_new(j, "snapshots", arr);
    }
    if (info->format_specific) {
        json_object_set_new(j, "format-specific", specific_json(info));
    }
    return j;
}

/* bdrv_image_info_dump(): the human layout of one image. */
static void dump_human(const NodeImageInfo *info)
{
    char *size_str = size_to_str((uint64_t)info->virtual_size);
    char *dsize_str = info->has_actual_size
                      ? size_to_str((uint64_t)info->actual_size)
                      : g_strdup("unavailable");

    printf("image: %s\n"
           "file format: %s\n"
           "virtual size: %s (%" PRId64 " bytes)\n"
           "disk size: %s\n",
           info->filename, info->format, size_str, info->virtual_size,
           dsize_str);
    g_free(size_str);
    g_free(dsize_str);

    if (info->encrypted) {
        printf("encrypted: yes\n");
    }
    if (info->cluster_size) {
        printf("cluster_size: %" PRId64 "\n", info->cluster_size);
    }
    if (info->has_dirty_flag && info->dirty_flag) {
        printf("cleanly shut down: no\n");
    }
    if (info->backing_filename) {
        const char *full = info->full_backing_filename;

        printf("backing file: %s", info->backing_filename);
        if (!full) {
            printf(" (cannot determine actual path)");
        } else if (strcmp(info->backing_filename, full)) {
            printf(" (actual path: %s)", full);
        }
        printf("\n");
    }
    if (info->backing_filename_format) {
        printf("backing file format: %s\n", info->backing_filename_format);
    }
    if (info->nb_snapshots) {
        printf("Snapshot list:\n");
        img_snapshot_dump_header();
        printf("\n");
        for (int i = 0; i < info->nb_snapshots; i++) {
            img_snapshot_dump(&info->snapshots[i]);
            printf("\n");
        }
    }
    if (info->format_specific) {
        json_t *spec = specific_json(info);
        printf("Format specific information:\n");
        tool_dump_specific_info(spec, 1);
        json_decref(spec);
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
static GPtrArray *collect_info(const char *filename, ImgOpenSpec *spec,
                               bool chain)
{
    GHashTable *names = g_hash_table_new_full(g_str_hash, g_str_equal,
                                              g_free, NULL);
    GArray *ids = g_array_new(false, false, sizeof(FileId));
    GPtrArray *list =
        g_ptr_array_new_with_free_func((GDestroyNotify)node_image_info_free);
    char *name = g_strdup(filename);
    char *fmt = NULL;

    spec->flags |= NODE_O_NO_BACKING;
    while (name) {
        GError *err = NULL;
        BlockBackend *blk;
        NodeImageInfo *info;
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
        info = node_query_image_info(blk_node(blk), &err);
        blk_unref(blk);
        if (!info) {
            tool_error_gerror(err, "%s", "");
            goto fail;
        }
        g_ptr_array_add(list, info);
        g_hash_table_add(names, name);
        name = NULL;
        g_free(fmt);
        fmt = NULL;
        spec->image_opts = false;
        if (chain) {
            if (!info->full_backing_filename && info->backing_filename) {
                /* Its storage has no directory (a quorum): QEMU stops. */
                tool_error("Could not determine absolute backing filename, "
                           "but backing filename '%s' present",
                           info->backing_filename);
                goto fail;
            }
            name = g_strdup(info->full_backing_filename);
            fmt = g_strdup(info->backing_filename_format);
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
    g_ptr_array_free(list, true);
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
    GPtrArray *list;
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
    if (!img_output_format(output, &json)) {
        return EXIT_FAILURE;
    }

    /* Metadata only: encrypted images open without their secret. */
    spec.flags |= NODE_O_NO_IO;
    list = collect_info(filename, &spec, chain);
    if (!list) {
        return EXIT_FAILURE;
    }
    if (json) {
        json_t *j = json_array();
        for (guint i = 0; i < list->len; i++) {
            json_array_append_new(j, image_info_json(list->pdata[i]));
        }
        char *text = json_out_pretty_str(chain ? j : json_array_get(j, 0));
        printf("%s\n", text);
        g_free(text);
        json_decref(j);
    } else {
        for (guint i = 0; i < list->len; i++) {
            if (i) {
                printf("\n");
            }
            dump_human(list->pdata[i]);
        }
    }
    g_ptr_array_free(list, true);
    return EXIT_SUCCESS;
}
