/*
 * qcow2 image creation: QEMU 7.2's qcow2_co_create_opts() and
 * qcow2_co_create() up to the point where the image gets its layout
 * (qcow2-create-layout.c does that part).
 *
 * The order of the steps is QEMU's, because it decides which error a user
 * sees and whether files are left behind: the encryption alias check, then
 * the image file and the external data file are created (empty) and opened,
 * then the options are read in the order QEMU's QAPI visitor reads them,
 * then qcow2_co_create()'s own checks, the layout, and last the encryption
 * setup.  Any failure after both files were opened deletes them.
 */
#include <errno.h>
#include <string.h>
#include <unistd.h>
#include "strata/backend.h"
#include "strata/block-driver.h"
#include "strata/json-out.h"
#include "qcow2-format.h"
#include "qcow2-create.h"

const char *const qcow2_create_opts[] = {
    "encryption", "encrypt.format", "encrypt.key-secret", "encrypt.cipher-alg",
    "encrypt.cipher-mode", "encrypt.ivgen-alg", "encrypt.ivgen-hash-alg",
    "encrypt.hash-alg", "encrypt.iter-time", "cluster_size", "extended_l2",
    "preallocation", "compression_type", "size", "compat", "backing_file",
    "backing_fmt", "data_file", "data_file_raw", "lazy_refcounts",
    "refcount_bits", NULL,
};

/* The file protocol's creation options, passed on to both files. */
static const char *const protocol_opts[] = {
    "nocow", "extent_size_hint", NULL,
};

/* Names the BlockdevDriver enumeration of QEMU 7.2 (as built by Debian). */
static const char *const blockdev_drivers[] = {
    "blkdebug", "blklogwrites", "blkreplay", "blkverify", "bochs", "cloop",
    "compress", "copy-before-write", "copy-on-read", "dmg", "file",
    "snapshot-access", "ftp", "ftps", "gluster", "host_cdrom", "host_device",
    "http", "https", "iscsi", "luks", "nbd", "nfs", "null-aio", "null-co",
    "nvme", "parallels", "preallocate", "qcow", "qcow2", "qed", "quorum",
    "raw", "rbd", "replication", "ssh", "throttle", "vdi", "vhdx", "vmdk",
    "vpc", "vvfat", NULL,
};

static const char *const cipher_algs[] = {
    "aes-128", "aes-192", "aes-256", "des", "3des", "cast5-128",
    "serpent-128", "serpent-192", "serpent-256", "twofish-128",
    "twofish-192", "twofish-256", NULL,
};
static const char *const cipher_modes[] = { "ecb", "cbc", "xts", "ctr", NULL };
static const char *const ivgen_algs[] = { "plain", "plain64", "essiv", NULL };
static const char *const hash_algs[] = {
    "md5", "sha1", "sha224", "sha256", "sha384", "sha512", "ripemd160", NULL,
};
static const char *const luks_keys[] = {
    "key-secret", "cipher-alg", "cipher-mode", "ivgen-alg", "ivgen-hash-alg",
    "hash-alg", "iter-time", NULL,
};

/* ---- Options ---- */

typedef struct Q2Opts {
    uint64_t size;
    int version;
    char *backing_file, *backing_fmt, *data_file;
    uint64_t cluster_size;
    bool extl2, lazy, data_raw, has_backing_fmt;
    int prealloc;
    int64_t refcount_bits;
    int ctype;
    char *enc_format;           /* "qcow" or "luks"; NULL: not encrypted */
    bool enc_has_secret;
} Q2Opts;

static void q2opts_free(Q2Opts *o)
{
    g_free(o->backing_file);
    g_free(o->backing_fmt);
    g_free(o->data_file);
    g_free(o->enc_format);
}

/* The value of key as text (numbers, booleans spelled out); NULL: absent. */
static char *get_text(json_t *options, const char *key)
{
    json_t *v = json_object_get(options, key);

    if (!v || json_is_null(v)) {
        return NULL;
    }
    if (json_is_string(v)) {
        return g_strdup(json_string_value(v));
    }
    if (json_is_boolean(v)) {
        return g_strdup(json_is_true(v) ? "on" : "off");
    }
    if (json_is_integer(v)) {
        return g_strdup_printf("%" JSON_INTEGER_FORMAT, json_integer_value(v));
    }
    return g_strdup("");
}

static bool get_bool(json_t *options, const char *key, const char *name,
                     bool *out, GError **errp)
{
    g_autofree char *t = get_text(options, key);

    if (!t) {
        return true;
    }
    if (!strcmp(t, "on") || !strcmp(t, "yes") || !strcmp(t, "true") ||
        !strcmp(t, "y")) {
        *out = true;
    } else if (!strcmp(t, "off") || !strcmp(t, "no") || !strcmp(t, "false") ||
               !strcmp(t, "n")) {
        *out = false;
    } else {
        error_setg(errp, "Parameter '%s' expects 'on' or 'off'", name);
        return false;
    }
    return true;
}

static bool get_size(json_t *options, const char *key, const char *name,
                     uint64_t *out, GError **errp)
{
    json_t *v = json_object_get(options, key);
    g_autofree char *t = get_text(options, key);
    char *end;

    if (!t) {
        return true;
    }
    if (json_is_integer(v) && json_integer_value(v) >= 0) {
        *out = (uint64_t)json_integer_value(v);
        return true;
    }
    errno = 0;
    *out = strtoull(t, &end, 10);
    if (errno || end == t || *end || t[0] == '-') {
        error_setg(errp, "Parameter '%s' expects size", name);
        return false;
    }
    return true;
}

/* An int64 as QAPI reads it from text: "-1" and "0x10" are fine. */
static bool get_int(json_t *options, const char *key, const char *name,
                    int64_t *out, GError **errp)
{
    json_t *v = json_object_get(options, key);
    g_autofree char *t = get_text(options, key);
    char *end;

    if (!t) {
        return true;
    }
    if (json_is_integer(v)) {
        *out = json_integer_value(v);
        return true;
    }
    errno = 0;
    *out = strtoll(t, &end, 0);
    if (errno || end == t || *end) {
        error_setg(errp, "Parameter '%s' expects integer", name);
        return false;
    }
    return true;
}

static bool get_enum(json_t *options, const char *key, const char *name,
                     const char *const *values, int *out, GError **errp)
{
    g_autofree char *t = get_text(options, key);

    if (!t) {
        return true;
    }
    for (int i = 0; values[i]; i++) {
        if (!strcmp(values[i], t)) {
            *out = i;
            return true;
        }
    }
    error_setg(errp, "Parameter '%s' does not accept value '%s'", name, t);
    return false;
}

/*
 * What qcow2_co_create_opts() does before the files exist: turn the legacy
 * encryption switches into a format, and refuse both spellings at once.
 */
static bool parse_encryption_alias(json_t *options, Q2Opts *o, GError **errp)
{
    g_autofree char *on = get_text(options, "encryption");
    g_autofree char *fmt = get_text(options, "encrypt.format");
    bool encryption = false;

    if (on && !get_bool(options, "encryption", "encryption", &encryption,
                        errp)) {
        return false;
    }
    if (encryption && fmt) {
        error_setg(errp, "'encrypt.format' and its alias 'encryption' can't "
                   "be used at the same time");
        return false;
    }
    if (fmt) {
        o->enc_format = g_strdup(!strcmp(fmt, "aes") ? "qcow" : fmt);
    } else if (encryption) {
        o->enc_format = g_strdup("qcow");
    }
    return true;
}

static int bucket_cmp(const void *a, const void *b)
{
    unsigned x = json_qdict_bucket(*(const char *const *)a);
    unsigned y = json_qdict_bucket(*(const char *const *)b);

    return x < y ? -1 : x > y;
}

/*
 * Which encrypt.* key QEMU calls unexpected for the qcow format: its
 * visitor copies the keys of the "encrypt" dictionary (in QDict order) into
 * a GHashTable, removes those it knows, and names the first one the table
 * yields.  Our glib is QEMU's, so the same table gives the same answer.
 */
static const char *first_unexpected(json_t *options)
{
    const char *names[G_N_ELEMENTS(luks_keys) + 1], *k, *first = NULL;
    size_t n = 0;
    GHashTable *h = g_hash_table_new(g_str_hash, g_str_equal);
    GHashTableIter it;
    gpointer key;

    for (size_t i = 0; luks_keys[i]; i++) {
        g_autofree char *full = g_strconcat("encrypt.", luks_keys[i], NULL);
        if (json_object_get(options, full)) {
            names[n++] = luks_keys[i];
        }
    }
    names[n++] = "format";
    qsort(names, n, sizeof(names[0]), bucket_cmp);
    for (size_t i = 0; i < n; i++) {
        g_hash_table_add(h, (gpointer)names[i]);
    }
    g_hash_table_remove(h, "format");
    g_hash_table_remove(h, "key-secret");
    g_hash_table_iter_init(&it, h);
    if (g_hash_table_iter_next(&it, &key, NULL)) {
        k = key;
        for (size_t i = 0; luks_keys[i]; i++) {
            first = !strcmp(luks_keys[i], k) ? luks_keys[i] : first;
        }
    }
    g_hash_table_destroy(h);
    return first;
}

/* The encrypt.* options as QEMU's visitor checks them. */
static bool parse_encryption(json_t *options, Q2Opts *o, GError **errp)
{
    bool any = o->enc_format != NULL;
    const char *k;
    json_t *v;

    json_object_foreach(options, k, v) {
        any = any || g_str_has_prefix(k, "encrypt.");
    }
    if (!any) {
        return true;
    }
    if (!o->enc_format) {
        error_setg(errp, "Parameter 'encrypt.format' is missing");
        return false;
    }
    if (strcmp(o->enc_format, "qcow") && strcmp(o->enc_format, "luks")) {
        error_setg(errp, "Parameter 'format' does not accept value '%s'",
                   o->enc_format);
        return false;
    }
    o->enc_has_secret = json_object_get(options, "encrypt.key-secret");
    if (!strcmp(o->enc_format, "luks")) {
        int dummy;
        int64_t iter;
        if (!get_enum(options, "encrypt.cipher-alg", "cipher-alg",
                      cipher_algs, &dummy, errp) ||
            !get_enum(options, "encrypt.cipher-mode", "cipher-mode",
                      cipher_modes, &dummy, errp) ||
            !get_enum(options, "encrypt.ivgen-alg", "ivgen-alg", ivgen_algs,
                      &dummy, errp) ||
            !get_enum(options, "encrypt.ivgen-hash-alg", "ivgen-hash-alg",
                      hash_algs, &dummy, errp) ||
            !get_enum(options, "encrypt.hash-alg", "hash-alg", hash_algs,
                      &dummy, errp) ||
            !get_int(options, "encrypt.iter-time", "encrypt.iter-time", &iter,
                     errp)) {
            return false;
        }
        return true;
    }
    /* The qcow (AES) format only has a key. */
    const char *extra = first_unexpected(options);
    if (extra) {
        error_setg(errp, "Parameter 'encrypt.%s' is unexpected", extra);
        return false;
    }
    return true;
}

/*
 * The rest of the options, in the order QEMU's QAPI visitor meets them
 * (BlockdevCreateOptionsQcow2), so that the first bad one is reported.
 */
static bool parse_options(json_t *options, Q2Opts *o, GError **errp)
{
    static const char *const versions[] = { "v2", "v3", NULL };
    static const char *const ctypes[] = { "zlib", "zstd", NULL };
    g_autofree char *compat = get_text(options, "compat");
    int version = 1, dummy;

    if (!get_bool(options, "data_file_raw", "data-file-raw", &o->data_raw,
                  errp) ||
        !get_bool(options, "extended_l2", "extended-l2", &o->extl2, errp) ||
        !get_size(options, "size", "size", &o->size, errp)) {
        return false;
    }
    if (compat) {
        /* 0.10 and 1.1 are qemu-img's spellings of the QAPI v2 and v3. */
        json_t *c = json_string(!strcmp(compat, "0.10") ? "v2" :
                                !strcmp(compat, "1.1") ? "v3" : compat);
        json_t *tmp = json_object();
        bool ok;
        json_object_set_new(tmp, "version", c);
        ok = get_enum(tmp, "version", "version", versions, &version, errp);
        json_decref(tmp);
        if (!ok) {
            return false;
        }
    }
    o->version = version + 2;
    o->backing_file = get_text(options, "backing_file");
    o->has_backing_fmt = json_object_get(options, "backing_fmt") != NULL;
    if (!get_enum(options, "backing_fmt", "backing-fmt", blockdev_drivers,
                  &dummy, errp) ||
        !parse_encryption(options, o, errp) ||
        !get_size(options, "cluster_size", "cluster-size", &o->cluster_size,
                  errp) ||
        !get_enum(options, "preallocation", "preallocation",
                  prealloc_mode_names, &o->prealloc, errp) ||
        !get_bool(options, "lazy_refcounts", "lazy-refcounts", &o->lazy,
                  errp) ||
        !get_int(options, "refcount_bits", "refcount-bits", &o->refcount_bits,
                 errp) ||
        !get_enum(options, "compression_type", "compression-type", ctypes,
                  &o->ctype, errp)) {
        return false;
    }
    o->backing_fmt = get_text(options, "backing_fmt");
    return true;
}

/* qcow2_co_create()'s checks, in its order. */
static bool check_options(Q2Opts *o, GError **errp)
{
    uint64_t cs = o->cluster_size;

    if (o->extl2 && o->version < 3) {
        error_setg(errp, "Extended L2 entries are only supported with "
                   "compatibility level 1.1 and above (use version=v3 or "
                   "greater)");
        return false;
    }
    if (cs < 512 || cs > 2 * MiB || (cs & (cs - 1))) {
        error_setg(errp, "Cluster size must be a power of two between %d and "
                   "%dk", 512, 2048);
        return false;
    }
    if (o->extl2 && cs < 512 * QCOW2_SUBCLUSTERS) {
        error_setg(errp, "Extended L2 entries are only supported with cluster "
                   "sizes of at least %u bytes", 512 * QCOW2_SUBCLUSTERS);
        return false;
    }
    if (o->backing_file && o->prealloc != PREALLOC_MODE_OFF && !o->extl2) {
        error_setg(errp, "Backing file and preallocation can only be used at "
                   "the same time if extended_l2 is on");
        return false;
    }
    if (o->has_backing_fmt && !o->backing_file) {
        error_setg(errp, "Backing format cannot be used without backing file");
        return false;
    }
    if (o->version < 3 && o->lazy) {
        error_setg(errp, "Lazy refcounts only supported with compatibility "
                   "level 1.1 and above (use version=v3 or greater)");
        return false;
    }
    if (o->refcount_bits > 64 || o->refcount_bits <= 0 ||
        (o->refcount_bits & (o->refcount_bits - 1))) {
        error_setg(errp, "Refcount width must be a power of two and may not "
                   "exceed 64 bits");
        return false;
    }
    if (o->version < 3 && o->refcount_bits != 16) {
        error_setg(errp, "Different refcount widths than 16 bits require "
                   "compatibility level 1.1 or above (use version=v3 or "
                   "greater)");
        return false;
    }
    if (o->data_raw && !o->data_file) {
        error_setg(errp, "data-file-raw requires data-file");
        return false;
    }
    if (o->data_raw && o->backing_file) {
        error_setg(errp, "Backing file and data-file-raw cannot be used at "
                   "the same time");
        return false;
    }
    if (o->data_raw && o->prealloc == PREALLOC_MODE_OFF) {
        /* A raw data file must be readable alone: map it all, 1:1. */
        o->prealloc = PREALLOC_MODE_METADATA;
    }
    if (o->data_file && o->version < 3) {
        error_setg(errp, "External data files are only supported with "
                   "compatibility level 1.1 and above (use version=v3 or "
                   "greater)");
        return false;
    }
    if (o->ctype != QCOW2_COMPRESSION_ZLIB && o->version < 3) {
        error_setg(errp, "Non-zlib compression type is only supported with "
                   "compatibility level 1.1 and above (use version=v3 or "
                   "greater)");
        return false;
    }
    return true;
}

/* A new, empty protocol-level file (bdrv_co_create_file()) opened for us. */
static BlockBackend *coroutine_fn create_file(const char *filename,
                                              json_t *options, GError **errp)
{
    json_t *proto = json_object();
    BlockBackend *blk;

    for (int i = 0; protocol_opts[i]; i++) {
        json_t *v = json_object_get(options, protocol_opts[i]);
        if (v) {
            json_object_set(proto, protocol_opts[i], v);
        }
    }
    if (!image_create("file", filename, proto, errp)) {
        return NULL;
    }
    blk = blk_new_open(filename, NULL,
                       NODE_O_RDWR | NODE_O_RESIZE | NODE_O_PROTOCOL, errp);
    if (blk) {
        blk_set_allow_write_beyond_eof(blk, true);
    }
    return blk;
}

int coroutine_fn qcow2_co_create(const char *filename, json_t *options,
                                 GError **errp)
{
    Q2Opts o = {
        .version = 3,
        .cluster_size = 64 * KiB,
        .prealloc = PREALLOC_MODE_OFF,
        .refcount_bits = 16,
        .ctype = QCOW2_COMPRESSION_ZLIB,
    };
    BlockBackend *blk = NULL, *data_blk = NULL;
    g_autofree char *path = NULL, *data_path = NULL;
    int ret;

    if (!parse_encryption_alias(options, &o, errp)) {
        q2opts_free(&o);
        return -EINVAL;
    }
    blk = create_file(filename, options, errp);
    if (!blk) {
        /* Like QEMU: a file created but not opened is left behind. */
        q2opts_free(&o);
        return -EIO;
    }
    path = g_strdup(node_get_filename(blk_node(blk)));
    o.data_file = get_text(options, "data_file");
    if (o.data_file) {
        data_blk = create_file(o.data_file, options, errp);
        if (!data_blk) {
            ret = -EIO;
            goto fail;
        }
        data_path = g_strdup(node_get_filename(blk_node(data_blk)));
    }
    if (!parse_options(options, &o, errp)) {
        ret = -EINVAL;
        goto fail;
    }
    /* Silently rounded up to whole sectors (wrapping as QEMU's does). */
    o.size = (o.size + 511) & ~511ull;
    if (!check_options(&o, errp)) {
        ret = -EINVAL;
        goto fail;
    }
    Qcow2CreateParams params = {
        .size = o.size,
        .version = o.version,
        .cluster_size = o.cluster_size,
        .refcount_bits = o.refcount_bits,
        .extl2 = o.extl2,
        .lazy = o.lazy,
        .data_raw = o.data_raw,
        .prealloc = o.prealloc,
        .ctype = o.ctype,
        .backing_file = o.backing_file,
        .backing_fmt = o.backing_fmt,
        .data_name = data_path,
    };
    ret = qcow2_create_layout(blk, data_blk, &params, errp);
    if (ret < 0) {
        goto fail;
    }
    if (o.enc_format) {
        /* Last, as QEMU: the image is complete, then gets its key. */
        blk_unref(blk);
        blk_unref(data_blk);
        blk = data_blk = NULL;
        ret = qcow2_crypto_create(path, options, o.enc_format, errp);
        if (ret < 0) {
            goto fail;
        }
    }
    ret = 0;
    goto out;

fail:
    /* QEMU deletes what it created once it has opened it. */
    blk_unref(blk);
    blk_unref(data_blk);
    blk = data_blk = NULL;
    if (path) {
        unlink(path);
    }
    if (data_path) {
        unlink(data_path);
    }
out:
    blk_unref(blk);
    blk_unref(data_blk);
    q2opts_free(&o);
    return ret;
}
