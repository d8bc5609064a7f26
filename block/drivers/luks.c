/*
 * luks: a LUKS1 volume as an image.  The file holds the LUKS header and key
 * material, then the payload; the guest sees the payload, decrypted.  The
 * format itself lives in block/crypto/; this driver only moves data between
 * the guest and the file through a bounce buffer (the caller's buffer must
 * never hold cipher text).
 */
#include <errno.h>
#include <string.h>
#include <unistd.h>
#include "strata/backend.h"
#include "strata/block-driver.h"
#include "strata/coroutine.h"
#include "../crypto/crypto.h"

typedef struct LuksState {
    CryptoBlock *crypto;
} LuksState;

static int luks_probe(const uint8_t *buf, int buf_size, const char *filename)
{
    return crypto_luks_has_format(buf, (size_t)buf_size) ? 100 : 0;
}

static int coroutine_fn header_read(void *opaque, uint64_t offset,
                                    uint8_t *buf, size_t len, GError **errp)
{
    BlockNode *bs = opaque;
    int ret = child_co_pread(bs->file, (int64_t)offset, (int64_t)len, buf, 0);

    if (ret < 0) {
        error_setg_errno(errp, -ret, "Could not read encryption header");
        return ret;
    }
    return 0;
}

static int coroutine_fn header_write(void *opaque, uint64_t offset,
                                     const uint8_t *buf, size_t len,
                                     GError **errp)
{
    BlockNode *bs = opaque;
    int ret = child_co_pwrite(bs->file, (int64_t)offset, (int64_t)len, buf,
                              0);

    if (ret < 0) {
        error_setg_errno(errp, -ret, "Could not write encryption header");
        return ret;
    }
    return 0;
}

typedef struct OpenCo {
    BlockNode *bs;
    char *secret;
    unsigned flags;
    GError *err;
} OpenCo;

static void coroutine_fn open_co(void *opaque)
{
    OpenCo *o = opaque;
    LuksState *s = o->bs->opaque;

    s->crypto = crypto_block_open(CRYPTO_FORMAT_LUKS, o->secret, NULL,
                                  o->flags, header_read, o->bs, &o->err);
}

static int luks_open(BlockNode *bs, json_t *options, int flags, GError **errp)
{
    OpenCo o = { .bs = bs };

    bs->file = node_open_child(bs, options, "file",
                               CHILD_ROLE_IMAGE | CHILD_ROLE_PRIMARY, false,
                               errp);
    if (!bs->file) {
        return -EINVAL;
    }
    if (!opts_take_str(options, "key-secret", &o.secret, errp)) {
        return -EINVAL;
    }
    o.flags = flags & NODE_O_NO_IO ? CRYPTO_OPEN_NO_IO : 0;
    if (in_coroutine()) {
        open_co(&o);
    } else {
        co_run_sync(open_co, &o);
    }
    g_free(o.secret);
    if (o.err) {
        g_propagate_error(errp, o.err);
        return -EIO;
    }
    bs->encrypted = true;
    bs->supported_write_flags =
        REQ_FUA & (bs->file->bs->supported_write_flags |
                   bs->file->bs->drv->supported_write_flags);
    return 0;
}

static void luks_close(BlockNode *bs)
{
    LuksState *s = bs->opaque;

    crypto_block_free(s->crypto);
    s->crypto = NULL;
}

static void luks_refresh_limits(BlockNode *bs)
{
    LuksState *s = bs->opaque;

    /* No sub-sector I/O: a sector is the unit of encryption. */
    bs->bl.request_alignment = MAX(bs->bl.request_alignment,
                                   crypto_block_sector_size(s->crypto));
}

static int64_t luks_getlength(BlockNode *bs)
{
    LuksState *s = bs->opaque;
    int64_t len = node_getlength(bs->file->bs);
    uint64_t off = crypto_block_payload_offset(s->crypto);

    if (len < 0) {
        return len;
    }
    if ((uint64_t)len < off) {
        return -EIO;
    }
    return len - (int64_t)off;
}

static int coroutine_fn luks_co_preadv(BlockNode *bs, int64_t offset,
                                       int64_t bytes, IOVec *qiov,
                                       size_t qoff, int flags)
{
    LuksState *s = bs->opaque;
    uint64_t payload = crypto_block_payload_offset(s->crypto);

    /* IVs count from the start of the payload. */
    return crypto_block_co_preadv(s->crypto, bs->file,
                                  payload + (uint64_t)offset,
                                  (uint64_t)offset, (uint64_t)bytes, qiov,
                                  qoff);
}

static int coroutine_fn luks_co_pwritev(BlockNode *bs, int64_t offset,
                                        int64_t bytes, IOVec *qiov,
                                        size_t qoff, int flags)
{
    LuksState *s = bs->opaque;
    uint64_t payload = crypto_block_payload_offset(s->crypto);

    return crypto_block_co_pwritev(s->crypto, bs->file,
                                   payload + (uint64_t)offset,
                                   (uint64_t)offset, (uint64_t)bytes, qiov,
                                   qoff, flags & REQ_FUA);
}

static int coroutine_fn luks_co_truncate(BlockNode *bs, int64_t offset,
                                         bool exact, PreallocMode prealloc,
                                         GError **errp)
{
    LuksState *s = bs->opaque;
    uint64_t payload = crypto_block_payload_offset(s->crypto);

    if (payload > (uint64_t)(INT64_MAX - offset)) {
        error_setg(errp, "The requested file size is too large");
        return -EFBIG;
    }
    return child_co_truncate(bs->file, offset + (int64_t)payload, exact,
                             prealloc, errp);
}

/* The cluster size is the file's (none for plain files). */
static int luks_get_info(BlockNode *bs, BlockDriverInfo *bdi)
{
    BlockNode *file = bs->file->bs;
    BlockDriverInfo sub;
    int ret;

    if (!file->drv->get_info) {
        return -ENOTSUP;
    }
    memset(&sub, 0, sizeof(sub));
    ret = file->drv->get_info(file, &sub);
    if (ret < 0) {
        return ret;
    }
    memset(bdi, 0, sizeof(*bdi));
    bdi->cluster_size = sub.cluster_size;
    return 0;
}

static json_t *luks_get_specific_info(BlockNode *bs, GError **errp)
{
    LuksState *s = bs->opaque;

    return crypto_block_luks_info(s->crypto);
}

/*
 * As QEMU's crypto driver: the LUKS metadata never changes while open, so
 * the file is written or resized only when a user of this node asks to,
 * and what the users share is shared on.
 */
static void luks_child_perm(BlockNode *bs, BlockChild *c, unsigned role,
                            const ReopenState *rs, uint64_t perm,
                            uint64_t shared, uint64_t *nperm,
                            uint64_t *nshared)
{
    node_default_perms(bs, c, role, rs, perm, shared, nperm, nshared);
    *nshared |= shared & (BLK_PERM_WRITE | BLK_PERM_RESIZE);
    *nperm &= ~(BLK_PERM_WRITE | BLK_PERM_RESIZE);
    *nperm |= perm & (BLK_PERM_WRITE | BLK_PERM_RESIZE);
}

static int luks_reopen_prepare(ReopenState *rs, GError **errp)
{
    /*
     * Nothing can change (the key is only read at open): the options stay
     * in rs->options and the core refuses those that differ, key-secret
     * included, as QEMU does.
     */
    (void)rs;
    (void)errp;
    return 0;
}

/* qemu-img amend: key slots (coroutine context). */
static int coroutine_fn luks_amend(BlockNode *bs, json_t *options, bool force,
                                   void (*status)(void *, int64_t, int64_t),
                                   void *opaque, GError **errp)
{
    LuksState *s = bs->opaque;
    CryptoLuksAmendOpts o;

    crypto_luks_amend_opts_parse(options, "", &o);
    return crypto_luks_amend(s->crypto, &o, force, header_read, header_write,
                             bs, errp) < 0 ? -EINVAL : 0;
}

/* ---- creation ---- */

typedef struct CreateData {
    BlockBackend *blk;
    uint64_t size;
    PreallocMode prealloc;
} CreateData;

static int create_init(void *opaque, uint64_t headerlen, GError **errp)
{
    CreateData *d = opaque;

    if (d->size > INT64_MAX || headerlen > INT64_MAX - d->size) {
        error_setg(errp, "The requested file size is too large");
        return -EFBIG;
    }
    return blk_truncate(d->blk, (int64_t)(d->size + headerlen), false,
                        d->prealloc, errp);
}

static int create_write(void *opaque, uint64_t offset, const uint8_t *buf,
                        size_t len, GError **errp)
{
    CreateData *d = opaque;
    int ret = blk_pwrite(d->blk, (int64_t)offset, (int64_t)len, buf, 0);

    if (ret < 0) {
        error_setg_errno(errp, -ret, "Could not write encryption header");
        return ret;
    }
    return 0;
}

static char *take_text(json_t *options, const char *key)
{
    json_t *v = json_object_get(options, key);
    char *t = NULL;

    if (json_is_string(v)) {
        t = g_strdup(json_string_value(v));
    }
    return t;
}

static int coroutine_fn luks_create(const char *filename, json_t *options,
                                    GError **errp)
{
    CryptoLuksCreateOpts o = { .iter_time = -1 };
    CreateData d = { .prealloc = PREALLOC_MODE_OFF };
    char *strs[6] = { NULL };
    CryptoBlock *crypto = NULL;
    json_t *proto, *v;
    int ret = -EINVAL;
    int p;

    v = json_object_get(options, "size");
    d.size = json_is_integer(v) ? (uint64_t)json_integer_value(v) : 0;
    if (json_object_get(options, "preallocation")) {
        if (!opts_take_enum(options, "preallocation", prealloc_mode_names, &p,
                            errp)) {
            return -EINVAL;
        }
        d.prealloc = p;
    }
    /* Metadata preallocation means nothing here: the header is written. */
    if (d.prealloc == PREALLOC_MODE_METADATA) {
        d.prealloc = PREALLOC_MODE_OFF;
    }
    o.key_secret = strs[0] = take_text(options, "key-secret");
    o.cipher_alg = strs[1] = take_text(options, "cipher-alg");
    o.cipher_mode = strs[2] = take_text(options, "cipher-mode");
    o.ivgen_alg = strs[3] = take_text(options, "ivgen-alg");
    o.ivgen_hash_alg = strs[4] = take_text(options, "ivgen-hash-alg");
    o.hash_alg = strs[5] = take_text(options, "hash-alg");
    v = json_object_get(options, "iter-time");
    if (json_is_integer(v)) {
        o.iter_time = json_integer_value(v);
    }

    /* The file's own options (nocow, extent_size_hint) go to the file. */
    proto = json_object();
    for (const char *const *k = (const char *const[]){ "nocow",
                                                        "extent_size_hint",
                                                        NULL }; *k; k++) {
        if ((v = json_object_get(options, *k))) {
            json_object_set(proto, *k, v);
        }
    }
    if (!image_create("file", filename, proto, errp)) {
        goto out;
    }
    d.blk = blk_new_open(filename, NULL,
                         NODE_O_RDWR | NODE_O_RESIZE | NODE_O_PROTOCOL, errp);
    if (!d.blk) {
        goto out;
    }
    blk_set_allow_write_beyond_eof(d.blk, true);
    crypto = crypto_luks_create(&o, NULL, create_init, create_write, &d, errp);
    if (!crypto) {
        /* As QEMU: the file was made unusable, so it goes. */
        char *path = g_strdup(node_get_filename(blk_node(d.blk)));
        blk_unref(d.blk);
        d.blk = NULL;
        unlink(path);
        g_free(path);
        goto out;
    }
    ret = 0;

out:
    crypto_block_free(crypto);
    blk_unref(d.blk);
    for (size_t i = 0; i < G_N_ELEMENTS(strs); i++) {
        g_free(strs[i]);
    }
    return ret;
}

/* Unallocated sectors are encrypted all the same: everything counts. */
static bool luks_measure(json_t *opts, BlockNode *in_bs,
                         BlockMeasureInfo *info, GError **errp)
{
    json_t *v = json_object_get(opts, "size");
    uint64_t size = json_is_integer(v) ? (uint64_t)json_integer_value(v) :
                    json_is_string(v) ?
                    g_ascii_strtoull(json_string_value(v), NULL, 10) : 0;
    uint64_t header;

    if (in_bs) {
        int64_t len = node_getlength(in_bs);
        if (len < 0) {
            error_setg_errno(errp, (int)-len,
                             "Unable to get image virtual_size");
            return false;
        }
        size = (uint64_t)len;
    }
    if (!crypto_luks_measure_header(opts, "", &header, errp)) {
        return false;
    }
    info->required = info->fully_allocated = header + size;
    return true;
}

static const char *const luks_create_opts[] = {
    "size", "key-secret", "cipher-alg", "cipher-mode", "ivgen-alg",
    "ivgen-hash-alg", "hash-alg", "iter-time", NULL,
};

const BlockDriver bdrv_luks = {
    .format_name = "luks",
    .instance_size = sizeof(LuksState),
    .is_format = true,
    .probe = luks_probe,
    .open = luks_open,
    .close = luks_close,
    .refresh_limits = luks_refresh_limits,
    .create = luks_create,
    .create_opts = luks_create_opts,
    .measure = luks_measure,
    .child_perm = luks_child_perm,
    .reopen_prepare = luks_reopen_prepare,
    .co_preadv = luks_co_preadv,
    .co_pwritev = luks_co_pwritev,
    .co_truncate = luks_co_truncate,
    .getlength = luks_getlength,
    .get_info = luks_get_info,
    .get_specific_info = luks_get_specific_info,
    .amend = luks_amend,
};
