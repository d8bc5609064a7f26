/*
 * Image creation: through a driver's create callback by file name
 * (image_create, for strata-img create), and on existing nodes from QMP's
 * BlockdevCreateOptions (blockdev_co_create, for blockdev-create).
 */
#include <errno.h>
#include <string.h>
#include <unistd.h>
#include "block-int.h"
#include "crypto/crypto.h"
#include "qcow2/qcow2-node-create.h"
#include "strata/backend.h"
#include "strata/create.h"

typedef struct {
    const BlockDriver *drv;
    const char *filename;
    json_t *options;
    GError *err;
    int ret;
} CreateCo;

static void create_co(void *opaque)
{
    CreateCo *c = opaque;
    c->ret = c->drv->create(c->filename, c->options, &c->err);
}

bool image_create(const char *fmt, const char *filename, json_t *options,
                  GError **errp)
{
    const BlockDriver *drv = driver_find(fmt);
    /*
     * A format creates its storage as "file"; QEMU's bdrv_create_file()
     * means the protocol the name gives ("nbd://..."), if any.
     */
    size_t plen = strcspn(filename, ":/");
    if (drv && !strcmp(fmt, "file") && filename[plen] == ':') {
        char *proto = g_strndup(filename, plen);
        const BlockDriver *p = driver_find_protocol(proto);
        g_free(proto);
        if (p) {
            drv = p;
        }
    }
    if (!options) {
        options = json_object();
    }
    if (!drv) {
        error_setg(errp, "Unknown file format '%s'", fmt);
        json_decref(options);
        return false;
    }
    if (!drv->create) {
        error_setg(errp, "Format driver '%s' does not support image creation",
                   drv->format_name);
        json_decref(options);
        return false;
    }
    /* Creation may do I/O through the graph: run it as a coroutine. */
    CreateCo c = { .drv = drv, .filename = filename, .options = options };
    if (in_coroutine()) {
        create_co(&c);          /* a format creating its file, say */
    } else {
        co_run_sync(create_co, &c);
    }
    json_decref(options);
    if (c.ret < 0) {
        if (!c.err) {
            error_setg_errno(&c.err, -c.ret, "Could not create '%s'", filename);
        }
        g_propagate_error(errp, c.err);
        return false;
    }
    g_clear_error(&c.err);
    return true;
}

const char *const prealloc_mode_names[PREALLOC_MODE__MAX + 1] = {
    [PREALLOC_MODE_OFF] = "off",
    [PREALLOC_MODE_METADATA] = "metadata",
    [PREALLOC_MODE_FALLOC] = "falloc",
    [PREALLOC_MODE_FULL] = "full",
    [PREALLOC_MODE__MAX] = NULL,
};

/* ---- blockdev-create (QMP's BlockdevCreateOptions, on existing nodes) ---- */

/*
 * Reading QMP arguments: the QMP layer has checked them against the
 * schema already, but this API is public, so the types are checked again
 * with QEMU's messages for the case it has not.
 */
static json_t *arg_get(json_t *o, const char *key, bool required,
                       GError **errp)
{
    json_t *v = json_object_get(o, key);
    if (!v && required) {
        error_setg(errp, "Parameter 'options.%s' is missing", key);
    }
    return v;
}

static bool arg_type_error(const char *key, const char *type, GError **errp)
{
    error_setg(errp, "Invalid parameter type for 'options.%s', expected: %s", key,
               type);
    return false;
}

static bool arg_str(json_t *o, const char *key, bool required,
                    const char **out, GError **errp)
{
    json_t *v = arg_get(o, key, required, errp);
    if (!v) {
        return !required;
    }
    if (!json_is_string(v)) {
        return arg_type_error(key, "string", errp);
    }
    *out = json_string_value(v);
    return true;
}

static bool arg_int(json_t *o, const char *key, bool required,
                    int64_t *out, bool *has, GError **errp)
{
    json_t *v = arg_get(o, key, required, errp);
    if (has) {
        *has = v != NULL;
    }
    if (!v) {
        return !required;
    }
    if (!json_is_integer(v)) {
        return arg_type_error(key, "integer", errp);
    }
    *out = json_integer_value(v);
    return true;
}

/* QAPI's 'size': a non-negative integer. */
static bool arg_size(json_t *o, const char *key, bool required,
                     uint64_t *out, bool *has, GError **errp)
{
    int64_t v;
    bool present = false;
    if (!arg_int(o, key, required, &v, &present, errp)) {
        return false;
    }
    if (has) {
        *has = present;
    }
    if (present) {
        if (v < 0) {
            return arg_type_error(key, "size", errp);
        }
        *out = (uint64_t)v;
    }
    return true;
}

static bool arg_bool(json_t *o, const char *key, bool *out, bool *has,
                     GError **errp)
{
    json_t *v = json_object_get(o, key);
    if (has) {
        *has = v != NULL;
    }
    if (!v) {
        return true;
    }
    if (!json_is_boolean(v)) {
        return arg_type_error(key, "boolean", errp);
    }
    *out = json_is_true(v);
    return true;
}

static bool arg_enum(json_t *o, const char *key, const char *const *values,
                     int *out, bool *has, GError **errp)
{
    const char *s = NULL;
    if (!arg_str(o, key, false, &s, errp)) {
        return false;
    }
    if (has) {
        *has = s != NULL;
    }
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

/* Every member must be one the driver's create options know. */
static bool arg_check_known(json_t *o, const char *const *known,
                            GError **errp)
{
    const char *k;
    json_t *v;
    json_object_foreach(o, k, v) {
        bool ok = !strcmp(k, "driver");
        for (int i = 0; known[i] && !ok; i++) {
            ok = !strcmp(known[i], k);
        }
        if (!ok) {
            error_setg(errp, "Parameter 'options.%s' is unexpected", k);
            return false;
        }
    }
    return true;
}

BlockNode *blockdev_ref_open(json_t *ref, GError **errp)
{
    if (json_is_string(ref)) {
        const char *name = json_string_value(ref);
        BlockNode *bs = node_find(name);
        if (!bs) {
            error_setg(errp, "Cannot find device='%s' nor node-name='%s'",
                       name, name);
            return NULL;
        }
        node_ref(bs);
        return bs;
    }
    if (!json_is_object(ref)) {
        error_setg(errp, "Invalid parameter type for 'options.file', expected: "
                   "BlockdevOptions");
        return NULL;
    }
    /* As bdrv_open_blockdev_ref(): writable unless it says read-only. */
    json_t *ro = json_object_get(ref, "read-only");
    int flags = json_is_true(ro) ? 0 : NODE_O_RDWR;
    return node_open(NULL, json_deep_copy(ref), flags, errp);
}

static const char *const file_create_members[] = {
    "filename", "size", "preallocation", "nocow", "extent-size-hint", NULL,
};

/*
 * QEMU's raw_co_create(): the file driver's own creation, with the size
 * as given (qemu-img rounds it up to sectors; blockdev-create does not)
 * and the file name taken literally.
 */
static int coroutine_fn co_create_file(json_t *o, GError **errp)
{
    const char *filename = NULL;
    uint64_t size = 0, hint = 0;
    int prealloc = PREALLOC_MODE_OFF;
    bool nocow = false, has_nocow, has_prealloc, has_hint;

    if (!arg_check_known(o, file_create_members, errp) ||
        !arg_str(o, "filename", true, &filename, errp) ||
        !arg_size(o, "size", true, &size, NULL, errp) ||
        !arg_enum(o, "preallocation", prealloc_mode_names, &prealloc,
                  &has_prealloc, errp) ||
        !arg_bool(o, "nocow", &nocow, &has_nocow, errp) ||
        !arg_size(o, "extent-size-hint", false, &hint, &has_hint, errp)) {
        return -EINVAL;
    }
    const BlockDriver *drv = driver_find("file");
    json_t *opts = json_pack("{sI}", "size", (json_int_t)size);
    if (has_prealloc) {
        json_object_set_new(opts, "preallocation",
                            json_string(prealloc_mode_names[prealloc]));
    }
    if (has_nocow) {
        json_object_set_new(opts, "nocow", json_boolean(nocow));
    }
    if (has_hint) {
        json_object_set_new(opts, "extent_size_hint",
                            json_integer((json_int_t)hint));
    }
    /* The driver strips one "file:" prefix: give it one to strip. */
    char *name = g_strconcat("file:", filename, NULL);
    int ret = drv->create(name, opts, errp);
    g_free(name);
    json_decref(opts);
    if (ret == 0 && (size & 511)) {
        /* It created whole sectors; QEMU keeps the byte count asked for. */
        if (truncate(filename, (off_t)size) < 0) {
            ret = -errno;
            error_setg_errno(errp, errno, "Could not resize file");
        }
    }
    return ret;
}

/* ---- luks on a node (QEMU's block_crypto_co_create_luks) ---- */

static const char *const luks_create_members[] = {
    "file", "size", "preallocation", "key-secret", "cipher-alg",
    "cipher-mode", "ivgen-alg", "ivgen-hash-alg", "hash-alg", "iter-time",
    NULL,
};

typedef struct {
    BlockBackend *blk;
    uint64_t size;
    PreallocMode prealloc;
} LuksNodeCreate;

static int luks_node_init(void *opaque, uint64_t headerlen, GError **errp)
{
    LuksNodeCreate *d = opaque;
    if (d->size > INT64_MAX || headerlen > INT64_MAX - d->size) {
        error_setg(errp, "The requested file size is too large");
        return -EFBIG;
    }
    return blk_truncate(d->blk, (int64_t)(d->size + headerlen), false,
                        d->prealloc, errp);
}

static int luks_node_write(void *opaque, uint64_t offset, const uint8_t *buf,
                           size_t len, GError **errp)
{
    LuksNodeCreate *d = opaque;
    int ret = blk_pwrite(d->blk, (int64_t)offset, (int64_t)len, buf, 0);
    if (ret < 0) {
        error_setg_errno(errp, -ret, "Could not write encryption header");
        return ret;
    }
    return 0;
}

static int coroutine_fn co_create_luks(json_t *o, GError **errp)
{
    LuksNodeCreate d = { .prealloc = PREALLOC_MODE_OFF };
    CryptoLuksCreateOpts lo = { .iter_time = -1 };
    int prealloc = PREALLOC_MODE_OFF;
    bool has_iter;

    if (!arg_check_known(o, luks_create_members, errp) ||
        !arg_get(o, "file", true, errp)) {
        return -EINVAL;
    }
    BlockNode *bs = blockdev_ref_open(json_object_get(o, "file"), errp);
    if (!bs) {
        return -EIO;
    }
    int ret = -EINVAL;
    if (!arg_size(o, "size", true, &d.size, NULL, errp) ||
        !arg_enum(o, "preallocation", prealloc_mode_names, &prealloc, NULL,
                  errp) ||
        !arg_str(o, "key-secret", false, &lo.key_secret, errp) ||
        !arg_str(o, "cipher-alg", false, &lo.cipher_alg, errp) ||
        !arg_str(o, "cipher-mode", false, &lo.cipher_mode, errp) ||
        !arg_str(o, "ivgen-alg", false, &lo.ivgen_alg, errp) ||
        !arg_str(o, "ivgen-hash-alg", false, &lo.ivgen_hash_alg, errp) ||
        !arg_str(o, "hash-alg", false, &lo.hash_alg, errp) ||
        !arg_int(o, "iter-time", false, &lo.iter_time, &has_iter, errp)) {
        goto out;
    }
    /* Metadata preallocation means nothing without metadata. */
    d.prealloc = prealloc == PREALLOC_MODE_METADATA ? PREALLOC_MODE_OFF : prealloc;
    d.blk = blk_new(BLK_PERM_WRITE | BLK_PERM_RESIZE, BLK_PERM_ALL);
    if (!blk_insert_node(d.blk, bs, errp)) {
        ret = -EPERM;
        goto out;
    }
    blk_set_allow_write_beyond_eof(d.blk, true);
    CryptoBlock *crypto = crypto_luks_create(&lo, NULL, luks_node_init,
                                             luks_node_write, &d, errp);
    if (!crypto) {
        ret = -EIO;
        goto out;
    }
    crypto_block_free(crypto);
    ret = 0;
out:
    blk_unref(d.blk);
    node_unref(bs);
    return ret;
}

/* ---- Dispatch ---- */

typedef int coroutine_fn BlockdevCreateFunc(json_t *options, GError **errp);

static const struct {
    const char *driver;
    BlockdevCreateFunc *fn;
} blockdev_creators[] = {
    { "file", co_create_file },
    { "qcow2", qcow2_co_create_on_node },
    { "luks", co_create_luks },
};

json_t *blockdev_encrypt_flat(json_t *encrypt)
{
    json_t *flat = json_object();
    const char *k;
    json_t *v;

    json_object_foreach(encrypt, k, v) {
        if (strcmp(k, "format")) {
            char *key = g_strconcat("encrypt.", k, NULL);
            json_object_set(flat, key, v);
            g_free(key);
        }
    }
    return flat;
}

bool blockdev_create_check_driver(const char *driver, GError **errp)
{
    if (!driver_find(driver)) {
        error_setg(errp, "Block driver '%s' not found or not supported",
                   driver);
        return false;
    }
    for (size_t i = 0; i < G_N_ELEMENTS(blockdev_creators); i++) {
        if (!strcmp(blockdev_creators[i].driver, driver)) {
            return true;
        }
    }
    error_setg(errp, "Driver does not support blockdev-create");
    return false;
}

int coroutine_fn blockdev_co_create(json_t *options, GError **errp)
{
    const char *driver = NULL;
    if (!json_is_object(options)) {
        error_setg(errp, "Invalid parameter type for 'options', expected: "
                   "object");
        return -EINVAL;
    }
    if (!arg_str(options, "driver", true, &driver, errp) ||
        !blockdev_create_check_driver(driver, errp)) {
        return -EINVAL;
    }
    for (size_t i = 0; i < G_N_ELEMENTS(blockdev_creators); i++) {
        if (!strcmp(blockdev_creators[i].driver, driver)) {
            return blockdev_creators[i].fn(options, errp);
        }
    }
    g_assert_not_reached();
}
