/*
 * CryptoBlock: the encryption layer a format driver puts between guest
 * data and its storage.  LUKS keeps a header (luks.c); qcow2's legacy
 * scheme has none: AES-128-CBC keyed with the passphrase itself (at most
 * 16 bytes of it, zero-padded) and plain64 IVs.  That scheme is weak
 * (no key derivation, guessable IVs): it is kept to read old images.
 */
#include <errno.h>
#include <string.h>
#include "strata/error.h"
#include "crypto-int.h"

enum { QCOW_SECTOR_SIZE = 512 };

static int qcow_init(CryptoBlock *b, const char *key_secret,
                     const char *optprefix, GError **errp)
{
    uint8_t key[16] = { 0 };
    char *password;

    password = crypto_key_secret_lookup(key_secret, optprefix, errp);
    if (!password) {
        return -1;
    }
    memcpy(key, password, MIN(strlen(password), sizeof(key)));
    memset(password, 0, strlen(password));
    g_free(password);
    b->niv = crypto_cipher_iv_len(CRYPTO_CIPHER_AES_128, CRYPTO_MODE_CBC);
    b->ivgen = crypto_ivgen_new(CRYPTO_IVGEN_PLAIN64, 0, 0, NULL, 0, errp);
    b->cipher = crypto_cipher_new(CRYPTO_CIPHER_AES_128, CRYPTO_MODE_CBC, key,
                                  sizeof(key), errp);
    memset(key, 0, sizeof(key));
    return b->cipher ? 0 : -1;
}

CryptoBlock *crypto_block_open(CryptoFormat fmt, const char *key_secret,
                               const char *optprefix, unsigned flags,
                               CryptoReadFunc readfn, void *opaque,
                               GError **errp)
{
    CryptoBlock *b = g_new0(CryptoBlock, 1);
    int ret;

    crypto_init();
    b->format = fmt;
    if (fmt == CRYPTO_FORMAT_LUKS) {
        ret = luks_open(b, key_secret, optprefix, flags, readfn, opaque,
                        errp);
    } else {
        b->sector_size = QCOW_SECTOR_SIZE;
        ret = flags & CRYPTO_OPEN_NO_IO ? 0
                                        : qcow_init(b, key_secret, optprefix,
                                                    errp);
    }
    if (ret < 0) {
        crypto_block_free(b);
        return NULL;
    }
    return b;
}

CryptoBlock *crypto_qcow_create(const char *key_secret, const char *optprefix,
                                GError **errp)
{
    CryptoBlock *b = g_new0(CryptoBlock, 1);

    crypto_init();
    b->format = CRYPTO_FORMAT_QCOW;
    b->sector_size = QCOW_SECTOR_SIZE;
    if (qcow_init(b, key_secret, optprefix, errp) < 0) {
        crypto_block_free(b);
        return NULL;
    }
    return b;
}

void crypto_block_free(CryptoBlock *b)
{
    if (b) {
        crypto_cipher_free(b->cipher);
        crypto_ivgen_free(b->ivgen);
        memset(&b->hdr, 0, sizeof(b->hdr));
        g_free(b->secret_id);
        g_free(b);
    }
}

uint64_t crypto_block_payload_offset(const CryptoBlock *b)
{
    return b->payload_offset;
}

unsigned crypto_block_sector_size(const CryptoBlock *b)
{
    return b->sector_size;
}

bool crypto_block_has_key(const CryptoBlock *b)
{
    return b->cipher != NULL;
}

static int encdec(CryptoBlock *b, uint64_t offset, uint8_t *buf, size_t len,
                  bool encrypt)
{
    GError *err = NULL;

    if (!b->cipher || offset % b->sector_size || len % b->sector_size) {
        return -EIO;
    }
    if (crypto_sectors_encdec(b->cipher, b->ivgen, b->niv, b->sector_size,
                              offset / b->sector_size, buf, len, encrypt,
                              &err) < 0) {
        /* Only a broken library fails here: say why, as an EIO. */
        warn_print("%s", err->message);
        g_error_free(err);
        return -EIO;
    }
    return 0;
}

int crypto_block_encrypt(CryptoBlock *b, uint64_t offset, uint8_t *buf,
                         size_t len)
{
    return encdec(b, offset, buf, len, true);
}

int crypto_block_decrypt(CryptoBlock *b, uint64_t offset, uint8_t *buf,
                         size_t len)
{
    return encdec(b, offset, buf, len, false);
}
