/*
 * IV generators (dm-crypt's names): plain = 32-bit little-endian sector
 * number, plain64 = 64-bit, essiv = the 64-bit number encrypted (ECB) with
 * a key that is the hash of the data key, so that IVs are not guessable.
 */
#include <string.h>
#include "strata/error.h"
#include "crypto.h"

struct CryptoIVGen {
    CryptoIVGenAlg alg;
    CryptoCipher *essiv;     /* keyed with hash(key) */
    size_t essiv_blocklen;
};

CryptoIVGen *crypto_ivgen_new(CryptoIVGenAlg alg, CryptoCipherAlg cipher,
                              CryptoHashAlg hash, const uint8_t *key,
                              size_t nkey, GError **errp)
{
    CryptoIVGen *g = g_new0(CryptoIVGen, 1);

    g->alg = alg;
    if (alg == CRYPTO_IVGEN_ESSIV) {
        size_t nhash = crypto_hash_digest_len(hash);
        size_t nsalt = crypto_cipher_key_len(cipher);
        uint8_t salt[64];
        const uint8_t *bufs[1] = { key };
        size_t lens[1] = { nkey };

        if (!crypto_hash_supports(hash)) {
            error_setg(errp, "Hash algorithm %s not supported",
                       crypto_hash_alg_name(hash));
            g_free(g);
            return NULL;
        }
        crypto_hash_bytes(hash, bufs, lens, 1, salt);
        /* The salt is cut to the ESSIV cipher's key length. */
        g->essiv = crypto_cipher_new(cipher, CRYPTO_MODE_ECB, salt,
                                     MIN(nhash, nsalt), errp);
        memset(salt, 0, sizeof(salt));
        if (!g->essiv) {
            g_free(g);
            return NULL;
        }
        g->essiv_blocklen = crypto_cipher_block_len(cipher);
    }
    return g;
}

void crypto_ivgen_free(CryptoIVGen *g)
{
    if (g) {
        crypto_cipher_free(g->essiv);
        g_free(g);
    }
}

static void put_le(uint8_t *out, uint64_t v, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        out[i] = (uint8_t)(v >> (8 * i));
    }
}

int crypto_ivgen_calculate(CryptoIVGen *g, uint64_t sector, uint8_t *iv,
                           size_t niv, GError **errp)
{
    memset(iv, 0, niv);
    switch (g->alg) {
    case CRYPTO_IVGEN_PLAIN:
        put_le(iv, sector & 0xffffffff, MIN(niv, 4));
        return 0;
    case CRYPTO_IVGEN_PLAIN64:
        put_le(iv, sector, MIN(niv, 8));
        return 0;
    case CRYPTO_IVGEN_ESSIV: {
        uint8_t data[32] = { 0 };
        size_t n = g->essiv_blocklen;

        put_le(data, sector, MIN(n, 8));
        if (crypto_cipher_encrypt(g->essiv, data, n, errp) < 0) {
            return -1;
        }
        memcpy(iv, data, MIN(n, niv));
        return 0;
    }
    default:
        error_setg(errp, "Unknown IV generator");
        return -1;
    }
}

int crypto_sectors_encdec(CryptoCipher *c, CryptoIVGen *g, size_t niv,
                          size_t sector_size, uint64_t start_sector,
                          uint8_t *buf, size_t len, bool encrypt,
                          GError **errp)
{
    uint8_t iv[32];

    for (size_t done = 0; done < len; done += sector_size) {
        size_t n = MIN(sector_size, len - done);

        if (niv) {
            if (crypto_ivgen_calculate(g, start_sector++, iv, niv, errp) < 0 ||
                crypto_cipher_setiv(c, iv, niv, errp) < 0) {
                return -1;
            }
        }
        if ((encrypt ? crypto_cipher_encrypt(c, buf + done, n, errp)
                     : crypto_cipher_decrypt(c, buf + done, n, errp)) < 0) {
            return -1;
        }
    }
    return 0;
}
