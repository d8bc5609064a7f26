/*
 * Ciphers: QEMU's algorithm and mode names mapped onto libgcrypt handles.
 */
#include <errno.h>
#include <string.h>
#include "gcrypt-lib.h"
#include "strata/error.h"
#include "crypto.h"

struct CryptoCipher {
    gcry_cipher_hd_t hd;
    CryptoCipherAlg alg;
    CryptoCipherMode mode;
    size_t blocklen;
};

static const char *const cipher_names[CRYPTO_CIPHER__MAX] = {
    "aes-128", "aes-192", "aes-256", "des", "3des", "cast5-128",
    "serpent-128", "serpent-192", "serpent-256",
    "twofish-128", "twofish-192", "twofish-256", "sm4",
};
static const char *const mode_names[CRYPTO_MODE__MAX] = {
    "ecb", "cbc", "xts", "ctr",
};
static const char *const ivgen_names[CRYPTO_IVGEN__MAX] = {
    "plain", "plain64", "essiv",
};

/* Key and block lengths in bytes, by algorithm. */
static const struct { size_t key, block; } cipher_sizes[CRYPTO_CIPHER__MAX] = {
    [CRYPTO_CIPHER_AES_128] = { 16, 16 },
    [CRYPTO_CIPHER_AES_192] = { 24, 16 },
    [CRYPTO_CIPHER_AES_256] = { 32, 16 },
    [CRYPTO_CIPHER_DES] = { 8, 8 },
    [CRYPTO_CIPHER_3DES] = { 24, 8 },
    [CRYPTO_CIPHER_CAST5_128] = { 16, 8 },
    [CRYPTO_CIPHER_SERPENT_128] = { 16, 16 },
    [CRYPTO_CIPHER_SERPENT_192] = { 24, 16 },
    [CRYPTO_CIPHER_SERPENT_256] = { 32, 16 },
    [CRYPTO_CIPHER_TWOFISH_128] = { 16, 16 },
    [CRYPTO_CIPHER_TWOFISH_192] = { 24, 16 },
    [CRYPTO_CIPHER_TWOFISH_256] = { 32, 16 },
    [CRYPTO_CIPHER_SM4] = { 16, 16 },
};

static int name_lookup(const char *const *names, int n, const char *name)
{
    for (int i = 0; name && i < n; i++) {
        if (!strcmp(names[i], name)) {
            return i;
        }
    }
    return -1;
}

const char *crypto_cipher_alg_name(CryptoCipherAlg alg)
{
    return cipher_names[alg];
}

const char *crypto_cipher_mode_name(CryptoCipherMode mode)
{
    return mode_names[mode];
}

const char *crypto_ivgen_alg_name(CryptoIVGenAlg alg)
{
    return ivgen_names[alg];
}

int crypto_cipher_alg_lookup(const char *name)
{
    return name_lookup(cipher_names, CRYPTO_CIPHER__MAX, name);
}

int crypto_cipher_mode_lookup(const char *name)
{
    return name_lookup(mode_names, CRYPTO_MODE__MAX, name);
}

int crypto_ivgen_alg_lookup(const char *name)
{
    return name_lookup(ivgen_names, CRYPTO_IVGEN__MAX, name);
}

void crypto_init(void)
{
    static gsize done;

    if (g_once_init_enter(&done)) {
        GError *err = NULL;
        if (!gcrypt_lib_load(&err)) {
            /*
             * Callers have no error path: before libgcrypt was loaded on
             * demand, a missing one stopped every strata program at start.
             */
            g_error("libgcrypt could not be loaded: %s", err->message);
        }
        if (!gcry.check_version(GCRYPT_VERSION)) {
            g_error("libgcrypt is older than the headers strata was built "
                    "with");
        }
        /* No secure memory pool: keys live in ordinary memory, as QEMU's. */
        gcry.control(GCRYCTL_DISABLE_SECMEM, 0);
        gcry.control(GCRYCTL_INITIALIZATION_FINISHED, 0);
        g_once_init_leave(&done, 1);
    }
}

void crypto_random_bytes(uint8_t *buf, size_t len)
{
    crypto_init();
    gcry.randomize(buf, len, GCRY_STRONG_RANDOM);
}

/*
 * gcrypt has one Twofish id for 192- and 256-bit keys (the key length
 * decides), hence the same id twice.
 */
static int gcry_algo(CryptoCipherAlg alg)
{
    switch (alg) {
    case CRYPTO_CIPHER_AES_128: return GCRY_CIPHER_AES128;
    case CRYPTO_CIPHER_AES_192: return GCRY_CIPHER_AES192;
    case CRYPTO_CIPHER_AES_256: return GCRY_CIPHER_AES256;
    case CRYPTO_CIPHER_DES: return GCRY_CIPHER_DES;
    case CRYPTO_CIPHER_3DES: return GCRY_CIPHER_3DES;
    case CRYPTO_CIPHER_CAST5_128: return GCRY_CIPHER_CAST5;
    case CRYPTO_CIPHER_SERPENT_128: return GCRY_CIPHER_SERPENT128;
    case CRYPTO_CIPHER_SERPENT_192: return GCRY_CIPHER_SERPENT192;
    case CRYPTO_CIPHER_SERPENT_256: return GCRY_CIPHER_SERPENT256;
    case CRYPTO_CIPHER_TWOFISH_128: return GCRY_CIPHER_TWOFISH128;
    case CRYPTO_CIPHER_TWOFISH_192: return GCRY_CIPHER_TWOFISH;
    case CRYPTO_CIPHER_TWOFISH_256: return GCRY_CIPHER_TWOFISH;
    case CRYPTO_CIPHER_SM4: return GCRY_CIPHER_SM4;
    default: return 0;
    }
}

static int gcry_mode(CryptoCipherMode mode)
{
    switch (mode) {
    case CRYPTO_MODE_ECB: return GCRY_CIPHER_MODE_ECB;
    case CRYPTO_MODE_CBC: return GCRY_CIPHER_MODE_CBC;
    case CRYPTO_MODE_XTS: return GCRY_CIPHER_MODE_XTS;
    case CRYPTO_MODE_CTR: return GCRY_CIPHER_MODE_CTR;
    default: return 0;
    }
}

size_t crypto_cipher_key_len(CryptoCipherAlg alg)
{
    return cipher_sizes[alg].key;
}

size_t crypto_cipher_block_len(CryptoCipherAlg alg)
{
    return cipher_sizes[alg].block;
}

size_t crypto_cipher_iv_len(CryptoCipherAlg alg, CryptoCipherMode mode)
{
    return mode == CRYPTO_MODE_ECB ? 0 : cipher_sizes[alg].block;
}

bool crypto_cipher_supports(CryptoCipherAlg alg, CryptoCipherMode mode)
{
    crypto_init();
    if ((unsigned)alg >= CRYPTO_CIPHER__MAX ||
        (unsigned)mode >= CRYPTO_MODE__MAX) {
        return false;
    }
    /* XTS is defined for 128-bit block ciphers only. */
    if (mode == CRYPTO_MODE_XTS && cipher_sizes[alg].block != 16) {
        return false;
    }
    return gcry.cipher_algo_info(gcry_algo(alg), GCRYCTL_TEST_ALGO, NULL,
                                 NULL) == 0;
}

CryptoCipher *crypto_cipher_new(CryptoCipherAlg alg, CryptoCipherMode mode,
                                const uint8_t *key, size_t nkey,
                                GError **errp)
{
    gcry_cipher_hd_t hd;
    gcry_error_t err;
    size_t want;

    crypto_init();
    if (!crypto_cipher_supports(alg, mode)) {
        error_setg(errp, "Cipher '%s' mode '%s' not supported",
                   crypto_cipher_alg_name(alg), crypto_cipher_mode_name(mode));
        return NULL;
    }
    want = cipher_sizes[alg].key * (mode == CRYPTO_MODE_XTS ? 2 : 1);
    if (nkey != want) {
        error_setg(errp, "Cipher key length %zu should be %zu", nkey, want);
        return NULL;
    }
    err = gcry.cipher_open(&hd, gcry_algo(alg), gcry_mode(mode), 0);
    if (err) {
        error_setg(errp, "Cannot initialize cipher: %s", gcry.strerror(err));
        return NULL;
    }
    err = gcry.cipher_setkey(hd, key, nkey);
    if (err) {
        error_setg(errp, "Cannot set key: %s", gcry.strerror(err));
        gcry.cipher_close(hd);
        return NULL;
    }
    CryptoCipher *c = g_new0(CryptoCipher, 1);
    c->hd = hd;
    c->alg = alg;
    c->mode = mode;
    c->blocklen = cipher_sizes[alg].block;
    return c;
}

void crypto_cipher_free(CryptoCipher *c)
{
    if (c) {
        gcry.cipher_close(c->hd);
        g_free(c);
    }
}

int crypto_cipher_setiv(CryptoCipher *c, const uint8_t *iv, size_t niv,
                        GError **errp)
{
    gcry_error_t err;

    if (niv != crypto_cipher_iv_len(c->alg, c->mode)) {
        error_setg(errp, "Expected IV size %zu not %zu",
                   crypto_cipher_iv_len(c->alg, c->mode), niv);
        return -1;
    }
    err = c->mode == CRYPTO_MODE_CTR ? gcry.cipher_setctr(c->hd, iv, niv)
                                     : gcry.cipher_setiv(c->hd, iv, niv);
    if (err) {
        error_setg(errp, "Cannot set IV: %s", gcry.strerror(err));
        return -1;
    }
    return 0;
}

static int cipher_run(CryptoCipher *c, uint8_t *buf, size_t len, bool enc,
                      GError **errp)
{
    gcry_error_t err;

    if (len % c->blocklen) {
        error_setg(errp, "Length %zu must be a multiple of block size %zu",
                   len, c->blocklen);
        return -1;
    }
    err = enc ? gcry.cipher_encrypt(c->hd, buf, len, NULL, 0)
              : gcry.cipher_decrypt(c->hd, buf, len, NULL, 0);
    if (err) {
        error_setg(errp, "Cannot %s data: %s", enc ? "encrypt" : "decrypt",
                   gcry.strerror(err));
        return -1;
    }
    return 0;
}

int crypto_cipher_encrypt(CryptoCipher *c, uint8_t *buf, size_t len,
                          GError **errp)
{
    return cipher_run(c, buf, len, true, errp);
}

int crypto_cipher_decrypt(CryptoCipher *c, uint8_t *buf, size_t len,
                          GError **errp)
{
    return cipher_run(c, buf, len, false, errp);
}
