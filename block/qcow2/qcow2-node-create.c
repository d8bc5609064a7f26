/*
 * blockdev-create for qcow2: QEMU 7.2's qcow2_co_create() with the image
 * file (and external data file) given as nodes.  The checks run in QEMU's
 * order, so the first bad option is the one reported; the layout is the
 * one qemu-img create uses (qcow2-create-layout.c), so the bytes are
 * QEMU's too.
 */
#include <errno.h>
#include <string.h>
#include "strata/backend.h"
#include "strata/block-driver.h"
#include "strata/create.h"
#include "strata/units.h"
#include "qcow2-format.h"
#include "qcow2-create.h"
#include "qcow2-node-create.h"

static const char *const members[] = {
    "driver", "file", "data-file", "data-file-raw", "extended-l2", "size",
    "version", "backing-file", "backing-fmt", "encrypt", "cluster-size",
    "preallocation", "lazy-refcounts", "refcount-bits", "compression-type",
    NULL,
};

/* QMP's typed members (the schema layer has checked them; this API is
 * public, so the checks are repeated). */
static bool member_ok(json_t *o, const char *key, json_type type,
                      GError **errp)
{
    json_t *v = json_object_get(o, key);
    static const char *const names[] = {
        [JSON_STRING] = "string", [JSON_INTEGER] = "integer",
        [JSON_TRUE] = "boolean", [JSON_OBJECT] = "object",
    };
    if (!v) {
        return true;
    }
    bool ok = type == JSON_TRUE ? json_is_boolean(v) : json_typeof(v) == type;
    if (type == JSON_INTEGER && ok && json_integer_value(v) < 0 &&
        strcmp(key, "refcount-bits")) {
        ok = false;    /* a size */
    }
    if (!ok) {
        error_setg(errp, "Invalid parameter type for 'options.%s', expected: %s", key,
                   names[type]);
    }
    return ok;
}

static const char *str_of(json_t *o, const char *key)
{
    return json_string_value(json_object_get(o, key));
}

static bool bool_of(json_t *o, const char *key)
{
    return json_is_true(json_object_get(o, key));
}

static bool check_members(json_t *o, GError **errp)
{
    const char *k;
    json_t *v;
    json_object_foreach(o, k, v) {
        bool known = false;
        for (int i = 0; members[i] && !known; i++) {
            known = !strcmp(members[i], k);
        }
        if (!known) {
            error_setg(errp, "Parameter 'options.%s' is unexpected", k);
            return false;
        }
    }
    if (!json_object_get(o, "file")) {
        error_setg(errp, "Parameter 'options.file' is missing");
        return false;
    }
    if (!json_object_get(o, "size")) {
        error_setg(errp, "Parameter 'options.size' is missing");
        return false;
    }
    static const struct { const char *key; json_type type; } types[] = {
        { "size", JSON_INTEGER }, { "version", JSON_STRING },
        { "backing-file", JSON_STRING }, { "backing-fmt", JSON_STRING },
        { "cluster-size", JSON_INTEGER }, { "preallocation", JSON_STRING },
        { "lazy-refcounts", JSON_TRUE }, { "refcount-bits", JSON_INTEGER },
        { "compression-type", JSON_STRING }, { "data-file-raw", JSON_TRUE },
        { "extended-l2", JSON_TRUE }, { "encrypt", JSON_OBJECT },
    };
    for (size_t i = 0; i < G_N_ELEMENTS(types); i++) {
        if (!member_ok(o, types[i].key, types[i].type, errp)) {
            return false;
        }
    }
    return true;
}

static bool enum_of(json_t *o, const char *key, const char *const *values,
                    int *out, GError **errp)
{
    const char *s = str_of(o, key);
    if (!s) {
        return true;
    }
    for (int i = 0; values[i]; i++) {
        if (!strcmp(values[i], s)) {
            *out = i;
            return true;
        }
    }
    error_setg(errp, "Parameter 'options.%s' does not accept value '%s'", key, s);
    return false;
}

/* A BlockBackend writing the new image into bs, as QEMU's. */
static BlockBackend *open_writer(BlockNode *bs, GError **errp)
{
    BlockBackend *blk = blk_new(BLK_PERM_WRITE | BLK_PERM_RESIZE,
                                BLK_PERM_ALL);
    if (!blk_insert_node(blk, bs, errp)) {
        blk_unref(blk);
        return NULL;
    }
    blk_set_allow_write_beyond_eof(blk, true);
    return blk;
}

/*
 * QEMU's last step, qcow2_set_up_encryption(): the complete image, opened
 * as qcow2 over the same nodes, gets its encryption header.
 */
static int coroutine_fn set_up_encryption(BlockNode *bs, BlockNode *data_bs,
                                          json_t *encrypt, GError **errp)
{
    const char *format = str_of(encrypt, "format");
    if (!format) {
        error_setg(errp, "Parameter 'options.encrypt.format' is missing");
        return -EINVAL;
    }
    if (strcmp(format, "qcow") && strcmp(format, "luks")) {
        error_setg(errp, "Parameter 'options.encrypt.format' does not accept value '%s'",
                   format);
        return -EINVAL;
    }
    /* The crypto setup reads qemu-img's flat "encrypt.*" names. */
    json_t *flat = blockdev_encrypt_flat(encrypt);
    json_t *ref = json_pack("{ss}", "file", node_get_name(bs));
    if (data_bs) {
        json_object_set_new(ref, "data-file",
                            json_string(node_get_name(data_bs)));
    }
    char *text = json_dumps(ref, JSON_COMPACT);
    char *path = g_strconcat("json:", text, NULL);
    int ret = qcow2_crypto_create(path, flat, format, errp);
    g_free(path);
    free(text);
    json_decref(ref);
    json_decref(flat);
    return ret;
}

int coroutine_fn qcow2_co_create_on_node(json_t *o, GError **errp)
{
    static const char *const versions[] = { "v2", "v3", NULL };
    static const char *const ctypes[] = { "zlib", "zstd", NULL };
    BlockNode *bs = NULL, *data_bs = NULL;
    BlockBackend *blk = NULL, *data_blk = NULL;
    int version = 1, prealloc = PREALLOC_MODE_OFF, ctype = QCOW2_COMPRESSION_ZLIB;
    int ret = -EINVAL;

    if (!check_members(o, errp)) {
        return -EINVAL;
    }
    bs = blockdev_ref_open(json_object_get(o, "file"), errp);
    if (!bs) {
        return -EIO;
    }
    uint64_t size = (uint64_t)json_integer_value(json_object_get(o, "size"));
    json_t *cs_v = json_object_get(o, "cluster-size");
    uint64_t cs = cs_v ? (uint64_t)json_integer_value(cs_v) : 64 * KiB;
    bool extl2 = bool_of(o, "extended-l2");
    bool lazy = bool_of(o, "lazy-refcounts");
    bool data_raw = bool_of(o, "data-file-raw");
    json_t *rb_v = json_object_get(o, "refcount-bits");
    int64_t refcount_bits = rb_v ? json_integer_value(rb_v) : 16;
    const char *backing_file = str_of(o, "backing-file");
    const char *backing_fmt = str_of(o, "backing-fmt");
    json_t *data_ref = json_object_get(o, "data-file");

    if (!enum_of(o, "version", versions, &version, errp) ||
        !enum_of(o, "preallocation", prealloc_mode_names, &prealloc, errp) ||
        !enum_of(o, "compression-type", ctypes, &ctype, errp)) {
        goto out;
    }
    version += 2;
    if (size % 512) {
        error_setg(errp, "Image size must be a multiple of %u bytes", 512u);
        goto out;
    }
    if (extl2 && version < 3) {
        error_setg(errp, "Extended L2 entries are only supported with "
                   "compatibility level 1.1 and above (use version=v3 or "
                   "greater)");
        goto out;
    }
    if (cs < 512 || cs > 2 * MiB || (cs & (cs - 1))) {
        error_setg(errp, "Cluster size must be a power of two between %d and "
                   "%dk", 512, 2048);
        goto out;
    }
    if (extl2 && cs < 512 * QCOW2_SUBCLUSTERS) {
        error_setg(errp, "Extended L2 entries are only supported with cluster "
                   "sizes of at least %u bytes", 512 * QCOW2_SUBCLUSTERS);
        goto out;
    }
    if (backing_file && prealloc != PREALLOC_MODE_OFF && !extl2) {
        error_setg(errp, "Backing file and preallocation can only be used at "
                   "the same time if extended_l2 is on");
        goto out;
    }
    if (backing_fmt && !backing_file) {
        error_setg(errp, "Backing format cannot be used without backing file");
        goto out;
    }
    if (version < 3 && lazy) {
        error_setg(errp, "Lazy refcounts only supported with compatibility "
                   "level 1.1 and above (use version=v3 or greater)");
        goto out;
    }
    if (refcount_bits > 64 || refcount_bits <= 0 ||
        (refcount_bits & (refcount_bits - 1))) {
        error_setg(errp, "Refcount width must be a power of two and may not "
                   "exceed 64 bits");
        goto out;
    }
    if (version < 3 && refcount_bits != 16) {
        error_setg(errp, "Different refcount widths than 16 bits require "
                   "compatibility level 1.1 or above (use version=v3 or "
                   "greater)");
        goto out;
    }
    if (data_raw && !data_ref) {
        error_setg(errp, "data-file-raw requires data-file");
        goto out;
    }
    if (data_raw && backing_file) {
        error_setg(errp, "Backing file and data-file-raw cannot be used at "
                   "the same time");
        goto out;
    }
    if (data_raw && prealloc == PREALLOC_MODE_OFF) {
        /* A raw data file must read right alone: map it all, 1:1. */
        prealloc = PREALLOC_MODE_METADATA;
    }
    if (data_ref) {
        if (version < 3) {
            error_setg(errp, "External data files are only supported with "
                       "compatibility level 1.1 and above (use version=v3 "
                       "or greater)");
            goto out;
        }
        data_bs = blockdev_ref_open(data_ref, errp);
        if (!data_bs) {
            ret = -EIO;
            goto out;
        }
    }
    if (ctype != QCOW2_COMPRESSION_ZLIB && version < 3) {
        error_setg(errp, "Non-zlib compression type is only supported with "
                   "compatibility level 1.1 and above (use version=v3 or "
                   "greater)");
        goto out;
    }

    blk = open_writer(bs, errp);
    if (!blk) {
        ret = -EPERM;
        goto out;
    }
    if (data_bs) {
        data_blk = open_writer(data_bs, errp);
        if (!data_blk) {
            ret = -EPERM;
            goto out;
        }
    }
    /*
     * The layout code builds the image in an empty file; QEMU writes over
     * whatever is there and leaves the rest as unreferenced clusters, so
     * an emptied file gives the same image where it matters.
     */
    ret = blk_co_truncate(blk, 0, false, PREALLOC_MODE_OFF, errp);
    if (ret == 0 && data_blk) {
        ret = blk_co_truncate(data_blk, 0, false, PREALLOC_MODE_OFF, errp);
    }
    if (ret < 0) {
        goto out;
    }
    Qcow2CreateParams params = {
        .size = size,
        .version = version,
        .cluster_size = cs,
        .refcount_bits = refcount_bits,
        .extl2 = extl2,
        .lazy = lazy,
        .data_raw = data_raw,
        .prealloc = prealloc,
        .ctype = ctype,
        .backing_file = backing_file,
        .backing_fmt = backing_fmt,
        .data_name = data_bs ? node_get_filename(data_bs) : NULL,
    };
    ret = qcow2_create_layout(blk, data_blk, &params, errp);
    if (ret == 0) {
        ret = blk_co_flush(blk);
        if (ret == 0 && data_blk) {
            ret = blk_co_flush(data_blk);
        }
        if (ret < 0) {
            error_setg_errno(errp, -ret, "Could not flush the new image");
        }
    }
    blk_unref(blk);
    blk_unref(data_blk);
    blk = data_blk = NULL;
    if (ret == 0 && json_object_get(o, "encrypt")) {
        ret = set_up_encryption(bs, data_bs, json_object_get(o, "encrypt"),
                                errp);
    }
out:
    blk_unref(blk);
    blk_unref(data_blk);
    if (data_bs) {
        node_unref(data_bs);
    }
    node_unref(bs);
    return ret;
}
