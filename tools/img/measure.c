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
 * The arithmetic is the output driver's business in QEMU (bdrv_measure);
 * strata's drivers have no such callback, so the formats we can create,
 * raw, qcow2 and luks, are measured here with QEMU 7.2's formulas.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "strata/block-ops.h"
#include "strata/opts.h"
#include "strata/units.h"
#include "strata/error.h"
#include "../../block/crypto/crypto.h"
#include "../../block/qcow2/qcow2-format.h"
#include "strata/dirty-bitmap.h"
#include "img.h"

enum {
    OPTION_OUTPUT = IMG_OPTION_FIRST_PRIVATE,
    OPTION_SIZE,
};

#define ROUND_UP_U64(n, d) (((n) + (d) - 1) / (d) * (d))
#define DIV_ROUND_UP_U64(n, d) (((n) + (d) - 1) / (d))

typedef struct MeasureInfo {
    uint64_t required;
    uint64_t fully_allocated;
    bool has_bitmaps;
    uint64_t bitmaps;
} MeasureInfo;

static bool opt_bool(ImgOpts *opts, const char *name, bool def)
{
    ImgOptValue *v = img_opts_find(opts, name);

    if (!v || !v->str) {
        return def;
    }
    return !strcmp(v->str, "on") || !strcmp(v->str, "yes") ||
           !strcmp(v->str, "true");
}

static uint64_t opt_num(ImgOpts *opts, const char *name, uint64_t def)
{
    ImgOptValue *v = img_opts_find(opts, name);
    return v ? v->num : def;
}

static const char *opt_str(ImgOpts *opts, const char *name)
{
    ImgOptValue *v = img_opts_find(opts, name);
    return v ? v->str : NULL;
}

/*
 * Refcount table and blocks needed to count `clusters` clusters plus
 * themselves: iterate to the fixed point where adding the refcount
 * structures no longer needs more of them.
 */
static uint64_t refcount_metadata_size(uint64_t clusters,
                                       uint64_t cluster_size,
                                       int refcount_order)
{
    uint64_t per_table_cluster = cluster_size / 8;
    uint64_t per_block = cluster_size * 8 / (1u << refcount_order);
    uint64_t table = 0, blocks = 0, n = 0, last;

    do {
        last = n;
        blocks = DIV_ROUND_UP_U64(clusters + table + blocks, per_block);
        table = DIV_ROUND_UP_U64(blocks, per_table_cluster);
        n = clusters + blocks + table;
    } while (n != last);
    return (blocks + table) * cluster_size;
}

/* Size of a qcow2 image with every cluster of virtual_size allocated. */
static uint64_t qcow2_prealloc_size(uint64_t virtual_size,
                                    uint64_t cluster_size, int refcount_order,
                                    bool extended_l2)
{
    uint64_t aligned = ROUND_UP_U64(virtual_size, cluster_size);
    uint64_t l2e_size = extended_l2 ? 16 : 8;
    uint64_t meta = cluster_size; /* the header cluster */
    uint64_t nl2e, nl1e;

    nl2e = ROUND_UP_U64(aligned / cluster_size, cluster_size / l2e_size);
    meta += nl2e * l2e_size;
    nl1e = ROUND_UP_U64(nl2e * l2e_size / cluster_size, cluster_size / 8);
    meta += nl1e * 8;
    meta += refcount_metadata_size((meta + aligned) / cluster_size,
                                   cluster_size, refcount_order);
    return meta + aligned;
}

/*
 * The size of the LUKS header creation would write, found as QEMU finds
 * it: by a creation without storage (so the secret must exist and the
 * PBKDF2 benchmark runs).  prefix: "encrypt." for qcow2, "" for luks.
 */
static bool luks_header_size(ImgOpts *opts, const char *prefix,
                             uint64_t *len, GError **errp)
{
    char *names[7];
    static const char *const keys[7] = {
        "key-secret", "cipher-alg", "cipher-mode", "ivgen-alg",
        "ivgen-hash-alg", "hash-alg", "iter-time",
    };
    const char *vals[7];
    CryptoLuksCreateOpts o;
    bool ok;

    for (int i = 0; i < 7; i++) {
        names[i] = g_strconcat(prefix, keys[i], NULL);
        vals[i] = opt_str(opts, names[i]);
    }
    o = (CryptoLuksCreateOpts){
        .key_secret = vals[0], .cipher_alg = vals[1], .cipher_mode = vals[2],
        .ivgen_alg = vals[3], .ivgen_hash_alg = vals[4], .hash_alg = vals[5],
        .iter_time = vals[6] ? (int64_t)opt_num(opts, names[6], 0) : -1,
    };
    ok = crypto_luks_payload_size(&o, *prefix ? prefix : NULL, len, errp);
    for (int i = 0; i < 7; i++) {
        g_free(names[i]);
    }
    return ok;
}

/* Unallocated sectors are encrypted all the same: everything counts. */
static bool measure_luks(ImgOpts *opts, BlockNode *in_bs, MeasureInfo *info,
                         GError **errp)
{
    uint64_t size = opt_num(opts, "size", 0), header;

    if (in_bs) {
        int64_t len = node_getlength(in_bs);
        if (len < 0) {
            error_setg_errno(errp, (int)-len,
                             "Unable to get image virtual_size");
            return false;
        }
        size = (uint64_t)len;
    }
    if (!luks_header_size(opts, "", &header, errp)) {
        return false;
    }
    info->required = info->fully_allocated = header + size;
    return true;
}

static bool measure_qcow2(ImgOpts *opts, BlockNode *in_bs, MeasureInfo *info,
                          GError **errp)
{
    uint64_t luks_size = 0;
    bool extended_l2 = opt_bool(opts, "extended_l2", false);
    uint64_t cluster_size = opt_num(opts, "cluster_size", 65536);
    const char *compat = opt_str(opts, "compat");
    const char *prealloc = opt_str(opts, "preallocation");
    const char *enc = opt_str(opts, "encrypt.format");
    uint64_t refcount_bits, virtual_size, l2_tables, required = 0;
    int version = 3, refcount_order;
    bool full;

    if (cluster_size < 512 || cluster_size > 2 * 1024 * 1024 ||
        (cluster_size & (cluster_size - 1))) {
        error_setg(errp, "Cluster size must be a power of two between %d "
                   "and %dk", 512, 2048);
        return false;
    }
    if (extended_l2 && cluster_size < 16384) {
        error_setg(errp, "Extended L2 entries are only supported with "
                   "cluster sizes of at least %d bytes", 16384);
        return false;
    }
    if (compat && !strcmp(compat, "0.10")) {
        version = 2;
    } else if (compat && strcmp(compat, "1.1")) {
        error_setg(errp, "Invalid compatibility level: '%s'", compat);
        return false;
    }
    refcount_bits = opt_num(opts, "refcount_bits", 16);
    if (refcount_bits > 64 || !refcount_bits ||
        (refcount_bits & (refcount_bits - 1))) {
        error_setg(errp, "Refcount width must be a power of two and may not "
                   "exceed 64 bits");
        return false;
    }
    if (version < 3 && refcount_bits != 16) {
        error_setg(errp, "Different refcount widths than 16 bits require "
                   "compatibility level 1.1 or above (use compat=1.1 or "
                   "greater)");
        return false;
    }
    refcount_order = __builtin_ctzll(refcount_bits);
    if (prealloc && strcmp(prealloc, "off") && strcmp(prealloc, "metadata") &&
        strcmp(prealloc, "falloc") && strcmp(prealloc, "full")) {
        error_setg(errp, "invalid parameter value: %s", prealloc);
        return false;
    }
    full = prealloc && (!strcmp(prealloc, "falloc") ||
                        !strcmp(prealloc, "full"));
    if (enc && !strcmp(enc, "luks")) {
        if (!luks_header_size(opts, "encrypt.", &luks_size, errp)) {
            return false;
        }
        luks_size = ROUND_UP_U64(luks_size, cluster_size);
    }

    virtual_size = ROUND_UP_U64(opt_num(opts, "size", 0), cluster_size);
    l2_tables = DIV_ROUND_UP_U64(virtual_size / cluster_size,
                                 cluster_size / (extended_l2 ? 16 : 8));
    if (l2_tables * 8 > QCOW2_MAX_L1_BYTES) {
        error_setg(errp, "The image size is too large (try using a larger "
                   "cluster size)");
        return false;
    }

    if (in_bs) {
        int64_t ssize = node_getlength(in_bs);

        if (ssize < 0) {
            error_setg_errno(errp, (int)-ssize,
                             "Unable to get image virtual_size");
            return false;
        }
        virtual_size = ROUND_UP_U64((uint64_t)ssize, cluster_size);
        if (opt_str(opts, "backing_file")) {
            /* The new backing file may share nothing with the source. */
            required = virtual_size;
        } else {
            for (int64_t offset = 0, pnum = 0; offset < ssize;
                 offset += pnum) {
                int st = node_block_status_above(in_bs, NULL, false, true,
                                                 offset, ssize - offset,
                                                 &pnum, NULL, NULL, NULL);
                if (st < 0) {
                    error_setg_errno(errp, -st, "Unable to get block status");
                    return false;
                }
                if (st & BLOCK_ZERO) {
                    continue;
                }
                if ((st & (BLOCK_DATA | BLOCK_ALLOCATED)) ==
                    (BLOCK_DATA | BLOCK_ALLOCATED)) {
                    /* Whole clusters: round the run up to the next one. */
                    pnum = (int64_t)ROUND_UP_U64((uint64_t)(offset + pnum),
                                                 cluster_size) - offset;
                    required += (uint64_t)offset % cluster_size +
                                (uint64_t)pnum;
                }
            }
        }
    }
    if (full) {
        required = virtual_size;
    }
    info->fully_allocated = luks_size +
                            qcow2_prealloc_size(virtual_size, cluster_size,
                                                refcount_order, extended_l2);
    info->required = info->fully_allocated - virtual_size + required;
    /* The source's persistent bitmaps, as loaded when it was opened. */
    if (version >= 3 && in_bs && node_supports_persistent_dirty_bitmap(in_bs)) {
        info->has_bitmaps = true;
        info->bitmaps = dirty_bitmaps_qcow2_size(in_bs, cluster_size);
    }
    return true;
}

static bool measure_raw(ImgOpts *opts, BlockNode *in_bs, MeasureInfo *info,
                        GError **errp)
{
    uint64_t required;

    if (in_bs) {
        int64_t len = node_getlength(in_bs);
        if (len < 0) {
            error_setg_errno(errp, (int)-len, "Unable to get image size");
            return false;
        }
        required = (uint64_t)len;
    } else {
        required = ROUND_UP_U64(opt_num(opts, "size", 0), 512);
    }
    /* Unallocated sectors still take room in a raw file. */
    info->required = info->fully_allocated = required;
    return true;
}

/* -l as in convert.c: the snapshot replaces the source's current data. */
static void print_info(const MeasureInfo *info, bool json)
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
    MeasureInfo info = { 0 };
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
            if (!strcmp(optarg, "json")) {
                json = true;
            } else if (!strcmp(optarg, "human")) {
                json = false;
            } else {
                tool_error("--output must be used with human or json as "
                           "argument.");
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

    if (!strcmp(driver_format_name(drv), "qcow2")) {
        if (!measure_qcow2(opts, in_blk ? blk_node(in_blk) : NULL, &info,
                           &err)) {
            tool_error_gerror(err, "%s", "");
            goto out;
        }
    } else if (!strcmp(driver_format_name(drv), "luks")) {
        if (!measure_luks(opts, in_blk ? blk_node(in_blk) : NULL, &info,
                          &err)) {
            tool_error_gerror(err, "%s", "");
            goto out;
        }
    } else if (!strcmp(driver_format_name(drv), "raw")) {
        if (!measure_raw(opts, in_blk ? blk_node(in_blk) : NULL, &info,
                         &err)) {
            tool_error_gerror(err, "%s", "");
            goto out;
        }
    } else {
        tool_error("Block driver '%s' does not support size measurement",
                   driver_format_name(drv));
        goto out;
    }
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
