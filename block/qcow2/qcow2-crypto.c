/*
 * qcow2 encryption: encrypt.format=luks (a LUKS header in clusters named by
 * the CRYPTO header extension; IVs from the host offset) and the legacy
 * encrypt.format=aes / encryption=on (AES-128-CBC, IVs from the guest
 * offset).  Guest data is encrypted per 512-byte sector; metadata never is.
 *
 * The rest of the driver calls in at a few points: open, data reads and
 * writes, info, create, check and the header rewrite.
 */
#include <errno.h>
#include <inttypes.h>
#include <string.h>
#include "strata/backend.h"
#include "strata/block-driver.h"
#include "strata/coroutine.h"
#include "../crypto/crypto.h"
#include "qcow2-format.h"
#include "qcow2.h"
#include "qcow2-create.h"

/* ---- Opening ---- */

/*
 * The crypto header's bytes [offset, offset + len) in its extension area,
 * read into rbuf or written from wbuf.  QEMU says "read" for a failed
 * write too.
 */
static int coroutine_fn hdr_io(BlockNode *bs, uint64_t offset, uint8_t *rbuf,
                               const uint8_t *wbuf, size_t len, GError **errp)
{
    Qcow2State *s = bs->opaque;
    int64_t pos = (int64_t)(s->crypto_header_offset + offset);
    int ret;

    if (offset + len > s->crypto_header_length) {
        error_setg(errp, "Request for data outside of extension header");
        return -1;
    }
    ret = wbuf ? child_co_pwrite(bs->file, pos, (int64_t)len, wbuf, 0)
               : child_co_pread(bs->file, pos, (int64_t)len, rbuf, 0);
    if (ret < 0) {
        error_setg_errno(errp, -ret, "Could not read encryption header");
        return -1;
    }
    return 0;
}

static int coroutine_fn hdr_read(void *opaque, uint64_t offset, uint8_t *buf,
                                 size_t len, GError **errp)
{
    return hdr_io(opaque, offset, buf, NULL, len, errp);
}

/*
 * The "encrypt" options against the header: the format named must be the
 * image's ("aes" is the qcow2 name of QEMU's "qcow" scheme).  Takes the
 * options; *secret gets encrypt.key-secret.
 */
static int take_options(Qcow2State *s, json_t *options, char **secret,
                        GError **errp)
{
    json_t *enc = opts_take_subtree(options, "encrypt");
    char *fmt = NULL;
    const char *want = s->crypt_method == QCOW2_CRYPT_AES ? "aes" : "luks";
    int ret = -EINVAL;

    *secret = NULL;
    if (enc && (!opts_take_str(enc, "format", &fmt, errp) ||
                !opts_take_str(enc, "key-secret", secret, errp))) {
        goto out;
    }
    if (enc && json_object_size(enc)) {
        char *k = opts_first_key(enc);
        error_setg(errp, "Parameter 'encrypt.%s' is unexpected", k);
        g_free(k);
        goto out;
    }
    if (fmt && s->crypt_method == QCOW2_CRYPT_NONE) {
        error_setg(errp, "No encryption in image header, but options "
                   "specified format '%s'", fmt);
        goto out;
    }
    if (fmt && s->crypt_method != QCOW2_CRYPT_NONE && strcmp(fmt, want)) {
        error_setg(errp, "Header reported '%s' encryption format but options "
                   "specify '%s'", want, fmt);
        goto out;
    }
    ret = 0;
out:
    if (ret < 0) {
        g_free(*secret);
        *secret = NULL;
    }
    g_free(fmt);
    json_decref(enc);
    return ret;
}

int coroutine_fn qcow2_crypto_open(BlockNode *bs, json_t *options, int flags,
                                   GError **errp)
{
    Qcow2State *s = bs->opaque;
    unsigned cflags = flags & NODE_O_NO_IO ? CRYPTO_OPEN_NO_IO : 0;
    char *secret;
    int ret = take_options(s, options, &secret, errp);

    if (ret < 0 || s->crypt_method == QCOW2_CRYPT_NONE) {
        g_free(secret);
        return ret;
    }
    if (s->crypt_method == QCOW2_CRYPT_LUKS) {
        if (!s->has_crypto_ext) {
            error_setg(errp, "Missing CRYPTO header for crypt method %u",
                       s->crypt_method);
            g_free(secret);
            return -EINVAL;
        }
        s->crypto = crypto_block_open(CRYPTO_FORMAT_LUKS, secret, "encrypt.",
                                      cflags, hdr_read, bs, errp);
    } else {
        s->crypto = crypto_block_open(CRYPTO_FORMAT_QCOW, secret, "encrypt.",
                                      cflags, NULL, NULL, errp);
    }
    g_free(secret);
    if (!s->crypto) {
        return -EIO;
    }
    bs->encrypted = true;
    return 0;
}

int qcow2_crypto_reopen_options(BlockNode *bs, json_t *options,
                                GError **errp)
{
    char *secret;
    int ret = take_options(bs->opaque, options, &secret, errp);

    /* The key stays as it was unlocked at open. */
    g_free(secret);
    return ret;
}

void qcow2_crypto_close(Qcow2State *s)
{
    crypto_block_free(s->crypto);
    s->crypto = NULL;
}

unsigned qcow2_crypto_sector_size(const Qcow2State *s)
{
    return s->crypto ? crypto_block_sector_size(s->crypto) : 1;
}

/* LUKS derives IVs from where the data lies in the file, AES from the
 * guest offset. */
static uint64_t iv_offset(const Qcow2State *s, uint64_t host, uint64_t guest)
{
    return s->crypt_method == QCOW2_CRYPT_LUKS ? host : guest;
}

/* ---- Data ---- */

int coroutine_fn qcow2_data_preadv(BlockNode *bs, uint64_t host,
                                   uint64_t guest, uint64_t bytes,
                                   IOVec *qiov, size_t qoff)
{
    Qcow2State *s = bs->opaque;

    if (!s->crypto) {
        return child_co_preadv(s->data_file, (int64_t)host, (int64_t)bytes,
                               qiov, qoff, 0);
    }
    return crypto_block_co_preadv(s->crypto, s->data_file, host,
                                  iv_offset(s, host, guest), bytes, qiov,
                                  qoff);
}

int coroutine_fn qcow2_data_pwritev(BlockNode *bs, uint64_t host,
                                    uint64_t guest, uint64_t bytes,
                                    IOVec *qiov, size_t qoff)
{
    Qcow2State *s = bs->opaque;

    if (!s->crypto) {
        return child_co_pwritev(s->data_file, (int64_t)host, (int64_t)bytes,
                                qiov, qoff, 0);
    }
    return crypto_block_co_pwritev(s->crypto, s->data_file, host,
                                   iv_offset(s, host, guest), bytes, qiov,
                                   qoff, 0);
}

/* ---- Information ---- */

json_t *qcow2_crypto_info(const Qcow2State *s)
{
    json_t *o;

    if (!s->crypto) {
        return NULL;
    }
    if (s->crypt_method == QCOW2_CRYPT_AES) {
        o = json_object();
    } else {
        o = crypto_block_luks_info(s->crypto);
    }
    json_object_set_new(o, "format",
                        json_string(s->crypt_method == QCOW2_CRYPT_AES ? "aes"
                                                                       : "luks"));
    return o;
}

/* ---- Key slots (qemu-img amend) ---- */

static int coroutine_fn hdr_write(void *opaque, uint64_t offset,
                                  const uint8_t *buf, size_t len,
                                  GError **errp);

int coroutine_fn qcow2_crypto_amend(BlockNode *bs, json_t *options,
                                    bool force, GError **errp)
{
    Qcow2State *s = bs->opaque;
    CryptoLuksAmendOpts o;

    crypto_luks_amend_opts_parse(options, "encrypt.", &o);
    return crypto_luks_amend(s->crypto, &o, force, hdr_read, hdr_write, bs,
                             errp) < 0 ? -EINVAL : 0;
}

/* ---- Creation ---- */

static int coroutine_fn hdr_init(void *opaque, uint64_t headerlen,
                                 GError **errp)
{
    BlockNode *bs = opaque;
    Qcow2State *s = bs->opaque;
    uint64_t off, clusters = qcow2_size_to_clusters(s, headerlen);
    int ret;

    co_mutex_lock(&s->lock);
    ret = qcow2_alloc_clusters(bs, clusters, &off);
    co_mutex_unlock(&s->lock);
    if (ret < 0) {
        error_setg_errno(errp, -ret, "Cannot allocate cluster for LUKS header "
                         "size %" PRIu64, headerlen);
        return -1;
    }
    s->crypto_header_offset = off;
    s->crypto_header_length = headerlen;
    /* Key slots left unused must read as zeroes, as QEMU leaves them. */
    ret = child_co_pwrite_zeroes(bs->file, (int64_t)off,
                                 (int64_t)(clusters * s->cluster_size), 0);
    if (ret < 0) {
        error_setg_errno(errp, -ret, "Could not zero fill encryption header");
        return -1;
    }
    return 0;
}

static int coroutine_fn hdr_write(void *opaque, uint64_t offset,
                                  const uint8_t *buf, size_t len,
                                  GError **errp)
{
    return hdr_io(opaque, offset, NULL, buf, len, errp);
}

static const char *opt_str(json_t *options, const char *key)
{
    json_t *v = json_object_get(options, key);
    return json_is_string(v) ? json_string_value(v) : NULL;
}

int coroutine_fn qcow2_crypto_create(const char *path, json_t *options,
                                     const char *enc_format, GError **errp)
{
    json_t *open_opts = json_pack("{ss}", "driver", "qcow2");
    const char *secret = opt_str(options, "encrypt.key-secret");
    CryptoBlock *crypto;
    BlockBackend *blk;
    BlockNode *bs;
    Qcow2State *s;
    int ret;

    /* The image is whole and unencrypted now: open it as QEMU does. */
    blk = blk_new_open(path, open_opts,
                       NODE_O_RDWR | NODE_O_RESIZE | NODE_O_NO_BACKING, errp);
    if (!blk) {
        return -EIO;
    }
    bs = blk_node(blk);
    s = bs->opaque;
    if (!strcmp(enc_format, "luks")) {
        json_t *it = json_object_get(options, "encrypt.iter-time");
        CryptoLuksCreateOpts o = {
            .key_secret = secret,
            .cipher_alg = opt_str(options, "encrypt.cipher-alg"),
            .cipher_mode = opt_str(options, "encrypt.cipher-mode"),
            .ivgen_alg = opt_str(options, "encrypt.ivgen-alg"),
            .ivgen_hash_alg = opt_str(options, "encrypt.ivgen-hash-alg"),
            .hash_alg = opt_str(options, "encrypt.hash-alg"),
            .iter_time = json_is_integer(it) ? json_integer_value(it) : -1,
        };
        s->crypt_method = QCOW2_CRYPT_LUKS;
        crypto = crypto_luks_create(&o, "encrypt.", hdr_init, hdr_write, bs,
                                    errp);
    } else {
        s->crypt_method = QCOW2_CRYPT_AES;
        crypto = crypto_qcow_create(secret, "encrypt.", errp);
    }
    if (!crypto) {
        s->crypt_method = QCOW2_CRYPT_NONE;
        blk_unref(blk);
        return -EINVAL;
    }
    crypto_block_free(crypto);
    co_mutex_lock(&s->lock);
    ret = qcow2_update_header(bs);
    co_mutex_unlock(&s->lock);
    if (ret < 0) {
        error_setg_errno(errp, -ret, "Could not write encryption header");
    }
    blk_unref(blk);
    return ret;
}
