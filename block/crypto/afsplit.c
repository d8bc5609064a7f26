/*
 * The LUKS anti-forensic splitter: a key of blocklen bytes becomes
 * `stripes` blocks, all of which are needed to recover it, so that
 * destroying any part of the stored key material destroys the key.
 *
 * Every stripe but the last is random; a running value d is XORed with
 * each stripe and then "diffused" (hashed piecewise); the last stripe is
 * d XOR key.  Decoding repeats the walk over the stored stripes.
 */
#include <string.h>
#include "crypto.h"

/*
 * Replace block by hash(be32(i) || piece_i) for each digest-sized piece
 * (the last piece may be shorter: its hash is truncated).
 */
static void diffuse(CryptoHashAlg hash, uint8_t *block, size_t len)
{
    size_t dlen = crypto_hash_digest_len(hash);
    uint8_t digest[64];

    for (size_t i = 0, done = 0; done < len; i++, done += dlen) {
        size_t n = MIN(dlen, len - done);
        uint8_t iv[4] = { i >> 24, i >> 16, i >> 8, i };
        const uint8_t *bufs[2] = { iv, block + done };
        size_t lens[2] = { sizeof(iv), n };

        crypto_hash_bytes(hash, bufs, lens, 2, digest);
        memcpy(block + done, digest, n);
    }
}

static void xor_into(uint8_t *dst, const uint8_t *src, size_t len)
{
    for (size_t i = 0; i < len; i++) {
        dst[i] ^= src[i];
    }
}

void crypto_afsplit_encode(CryptoHashAlg hash, size_t blocklen,
                           uint32_t stripes, const uint8_t *in, uint8_t *out)
{
    uint8_t *d = g_malloc0(blocklen);

    crypto_random_bytes(out, blocklen * (stripes - 1));
    for (uint32_t i = 0; i < stripes - 1; i++) {
        xor_into(d, out + (size_t)i * blocklen, blocklen);
        diffuse(hash, d, blocklen);
    }
    memcpy(out + (size_t)(stripes - 1) * blocklen, d, blocklen);
    xor_into(out + (size_t)(stripes - 1) * blocklen, in, blocklen);
    memset(d, 0, blocklen);
    g_free(d);
}

void crypto_afsplit_decode(CryptoHashAlg hash, size_t blocklen,
                           uint32_t stripes, const uint8_t *in, uint8_t *out)
{
    uint8_t *d = g_malloc0(blocklen);

    for (uint32_t i = 0; i < stripes - 1; i++) {
        xor_into(d, in + (size_t)i * blocklen, blocklen);
        diffuse(hash, d, blocklen);
    }
    memcpy(out, in + (size_t)(stripes - 1) * blocklen, blocklen);
    xor_into(out, d, blocklen);
    memset(d, 0, blocklen);
    g_free(d);
}
