/*
 * LUKS1 (cryptsetup's on-disk format, version 1.2.1 of its specification):
 * header parsing and checks, key slot unlocking, and creation with the
 * layout QEMU and cryptsetup use, so that images move between them.
 *
 * On disk (big-endian): a 592-byte header with 8 key slot descriptors,
 * then per slot the master key split by the AF splitter into 4000 stripes
 * and encrypted with a key derived from the passphrase (PBKDF2), then the
 * payload.  The master key is checked against a PBKDF2 digest.
 */
#include <errno.h>
#include <string.h>
#include "strata/error.h"
#include "crypto-int.h"

enum {
    MIN_SLOT_KEY_ITERS = 1000,
    MIN_MASTER_KEY_ITERS = 1000,
};

static const uint8_t luks_magic[LUKS_MAGIC_LEN] = {
    'L', 'U', 'K', 'S', 0xBA, 0xBE
};

/* The LUKS cipher names and the key sizes each has. */
static const struct {
    const char *name;
    CryptoCipherAlg algs[3];
    int nalgs;
} luks_ciphers[] = {
    { "aes", { CRYPTO_CIPHER_AES_128, CRYPTO_CIPHER_AES_192,
               CRYPTO_CIPHER_AES_256 }, 3 },
    { "cast5", { CRYPTO_CIPHER_CAST5_128 }, 1 },
    { "serpent", { CRYPTO_CIPHER_SERPENT_128, CRYPTO_CIPHER_SERPENT_192,
                   CRYPTO_CIPHER_SERPENT_256 }, 3 },
    { "twofish", { CRYPTO_CIPHER_TWOFISH_128, CRYPTO_CIPHER_TWOFISH_192,
                   CRYPTO_CIPHER_TWOFISH_256 }, 3 },
};

/* ---- byte order ---- */

static uint32_t get_be32(const uint8_t *p)
{
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 |
           p[3];
}

static void put_be32(uint8_t *p, uint32_t v)
{
    p[0] = v >> 24;
    p[1] = v >> 16;
    p[2] = v >> 8;
    p[3] = v;
}

static void header_from_disk(LuksHeader *h, const uint8_t *d)
{
    memcpy(h->magic, d, LUKS_MAGIC_LEN);
    h->version = (uint16_t)(d[6] << 8 | d[7]);
    memcpy(h->cipher_name, d + 8, LUKS_NAME_LEN);
    memcpy(h->cipher_mode, d + 40, LUKS_NAME_LEN);
    memcpy(h->hash_spec, d + 72, LUKS_NAME_LEN);
    h->payload_offset_sector = get_be32(d + 104);
    h->master_key_len = get_be32(d + 108);
    memcpy(h->master_key_digest, d + 112, LUKS_DIGEST_LEN);
    memcpy(h->master_key_salt, d + 132, LUKS_SALT_LEN);
    h->master_key_iterations = get_be32(d + 164);
    memcpy(h->uuid, d + 168, LUKS_UUID_LEN);
    for (int i = 0; i < LUKS_NUM_SLOTS; i++) {
        const uint8_t *s = d + 208 + 48 * i;
        h->slots[i].active = get_be32(s);
        h->slots[i].iterations = get_be32(s + 4);
        memcpy(h->slots[i].salt, s + 8, LUKS_SALT_LEN);
        h->slots[i].key_offset_sector = get_be32(s + 40);
        h->slots[i].stripes = get_be32(s + 44);
    }
}

static void header_to_disk(const LuksHeader *h, uint8_t *d)
{
    memset(d, 0, LUKS_HEADER_SIZE);
    memcpy(d, h->magic, LUKS_MAGIC_LEN);
    d[6] = h->version >> 8;
    d[7] = h->version & 0xff;
    memcpy(d + 8, h->cipher_name, LUKS_NAME_LEN);
    memcpy(d + 40, h->cipher_mode, LUKS_NAME_LEN);
    memcpy(d + 72, h->hash_spec, LUKS_NAME_LEN);
    put_be32(d + 104, h->payload_offset_sector);
    put_be32(d + 108, h->master_key_len);
    memcpy(d + 112, h->master_key_digest, LUKS_DIGEST_LEN);
    memcpy(d + 132, h->master_key_salt, LUKS_SALT_LEN);
    put_be32(d + 164, h->master_key_iterations);
    memcpy(d + 168, h->uuid, LUKS_UUID_LEN);
    for (int i = 0; i < LUKS_NUM_SLOTS; i++) {
        uint8_t *s = d + 208 + 48 * i;
        put_be32(s, h->slots[i].active);
        put_be32(s + 4, h->slots[i].iterations);
        memcpy(s + 8, h->slots[i].salt, LUKS_SALT_LEN);
        put_be32(s + 40, h->slots[i].key_offset_sector);
        put_be32(s + 44, h->slots[i].stripes);
    }
}

bool crypto_luks_has_format(const uint8_t *buf, size_t len)
{
    return len >= 8 && !memcmp(buf, luks_magic, LUKS_MAGIC_LEN) &&
           buf[6] == 0 && buf[7] == 1;
}

/*
 * Sectors of one slot's key material.  As cryptsetup (not the
 * specification): rounded up to whole sectors, then to a multiple of the
 * header's size in sectors.
 */
static uint32_t splitkey_sectors(uint32_t key_len, uint32_t stripes)
{
    uint64_t bytes = (uint64_t)key_len * stripes;
    uint64_t sectors = (bytes + LUKS_SECTOR_SIZE - 1) / LUKS_SECTOR_SIZE;
    uint64_t hs = LUKS_KEY_SLOT_OFFSET / LUKS_SECTOR_SIZE;
    return (uint32_t)((sectors + hs - 1) / hs * hs);
}

/* ---- opening ---- */

static int check_header(const LuksHeader *h, GError **errp)
{
    uint32_t min_sector = LUKS_KEY_SLOT_OFFSET / LUKS_SECTOR_SIZE;

    if (memcmp(h->magic, luks_magic, LUKS_MAGIC_LEN)) {
        error_setg(errp, "Volume is not in LUKS format");
        return -1;
    }
    if (h->version != 1) {
        error_setg(errp, "LUKS version %u is not supported", h->version);
        return -1;
    }
    if (!memchr(h->cipher_name, 0, LUKS_NAME_LEN)) {
        error_setg(errp, "LUKS header cipher name is not NUL terminated");
        return -1;
    }
    if (!memchr(h->cipher_mode, 0, LUKS_NAME_LEN)) {
        error_setg(errp, "LUKS header cipher mode is not NUL terminated");
        return -1;
    }
    if (!memchr(h->hash_spec, 0, LUKS_NAME_LEN)) {
        error_setg(errp, "LUKS header hash spec is not NUL terminated");
        return -1;
    }
    if (h->payload_offset_sector < min_sector) {
        error_setg(errp, "LUKS payload is overlapping with the header");
        return -1;
    }
    if (h->master_key_iterations == 0) {
        error_setg(errp, "LUKS key iteration count is zero");
        return -1;
    }
    for (int i = 0; i < LUKS_NUM_SLOTS; i++) {
        const LuksSlot *s1 = &h->slots[i];
        uint64_t start1 = s1->key_offset_sector;
        uint64_t len1 = splitkey_sectors(h->master_key_len, s1->stripes);

        if (s1->stripes != LUKS_STRIPES) {
            error_setg(errp, "Keyslot %d is corrupted (stripes %d != %d)",
                       i, (int)s1->stripes, LUKS_STRIPES);
            return -1;
        }
        if (s1->active != SLOT_DISABLED && s1->active != SLOT_ENABLED) {
            error_setg(errp, "Keyslot %d state (active/disable) is corrupted",
                       i);
            return -1;
        }
        if (s1->active == SLOT_ENABLED && s1->iterations == 0) {
            error_setg(errp, "Keyslot %d iteration count is zero", i);
            return -1;
        }
        if (start1 < min_sector) {
            error_setg(errp, "Keyslot %d is overlapping with the LUKS header",
                       i);
            return -1;
        }
        if (start1 + len1 > h->payload_offset_sector) {
            error_setg(errp, "Keyslot %d is overlapping with the encrypted "
                       "payload", i);
            return -1;
        }
        for (int j = i + 1; j < LUKS_NUM_SLOTS; j++) {
            const LuksSlot *s2 = &h->slots[j];
            uint64_t start2 = s2->key_offset_sector;
            uint64_t len2 = splitkey_sectors(h->master_key_len, s2->stripes);

            if (start1 + len1 > start2 && start2 + len2 > start1) {
                error_setg(errp, "Keyslots %d and %d are overlapping in the "
                           "header", i, j);
                return -1;
            }
        }
    }
    return 0;
}

static int luks_cipher_lookup(const char *name, CryptoCipherMode mode,
                              uint32_t key_bytes, GError **errp)
{
    if (mode == CRYPTO_MODE_XTS) {
        key_bytes /= 2;
    }
    for (size_t i = 0; i < G_N_ELEMENTS(luks_ciphers); i++) {
        if (strcmp(luks_ciphers[i].name, name)) {
            continue;
        }
        for (int j = 0; j < luks_ciphers[i].nalgs; j++) {
            CryptoCipherAlg alg = luks_ciphers[i].algs[j];
            if (crypto_cipher_key_len(alg) == key_bytes) {
                return alg;
            }
        }
    }
    error_setg(errp, "Algorithm '%s' with key size %d bytes not supported",
               name, (int)key_bytes);
    return -1;
}

static const char *luks_cipher_name(CryptoCipherAlg alg, GError **errp)
{
    for (size_t i = 0; i < G_N_ELEMENTS(luks_ciphers); i++) {
        for (int j = 0; j < luks_ciphers[i].nalgs; j++) {
            if (luks_ciphers[i].algs[j] == alg) {
                return luks_ciphers[i].name;
            }
        }
    }
    error_setg(errp, "Algorithm '%s' not supported",
               crypto_cipher_alg_name(alg));
    return NULL;
}

/*
 * dm-crypt keys the ESSIV cipher with the whole digest, so with AES-128
 * and SHA-256 ESSIV uses AES-256: the same cipher family, sized by the
 * digest.
 */
static int essiv_cipher(CryptoCipherAlg cipher, CryptoHashAlg hash,
                        GError **errp)
{
    size_t dlen = crypto_hash_digest_len(hash);
    static const struct {
        const char *what;
        CryptoCipherAlg a[3];
    } families[] = {
        { "AES", { CRYPTO_CIPHER_AES_128, CRYPTO_CIPHER_AES_192,
                   CRYPTO_CIPHER_AES_256 } },
        { "Serpent", { CRYPTO_CIPHER_SERPENT_128, CRYPTO_CIPHER_SERPENT_192,
                       CRYPTO_CIPHER_SERPENT_256 } },
        { "Twofish", { CRYPTO_CIPHER_TWOFISH_128, CRYPTO_CIPHER_TWOFISH_192,
                       CRYPTO_CIPHER_TWOFISH_256 } },
    };

    if (crypto_cipher_key_len(cipher) == dlen) {
        return cipher;
    }
    for (size_t i = 0; i < G_N_ELEMENTS(families); i++) {
        bool member = false;
        for (int j = 0; j < 3; j++) {
            member |= families[i].a[j] == cipher;
        }
        if (!member) {
            continue;
        }
        for (int j = 0; j < 3; j++) {
            if (crypto_cipher_key_len(families[i].a[j]) == dlen) {
                return families[i].a[j];
            }
        }
        error_setg(errp, "No %s cipher with key size %zu available",
                   families[i].what, dlen);
        return -1;
    }
    error_setg(errp, "Cipher %s not supported with essiv",
               crypto_cipher_alg_name(cipher));
    return -1;
}

/* "<mode>-<ivgen>[:<hash>]" and the other names in the header. */
static int parse_header(CryptoBlock *b, GError **errp)
{
    char *mode = g_strdup(b->hdr.cipher_mode);
    char *ivgen = strchr(mode, '-');
    char *ivhash;
    int v;

    if (!ivgen) {
        error_setg(errp, "Unexpected cipher mode string format '%s'",
                   b->hdr.cipher_mode);
        goto fail;
    }
    *ivgen++ = 0;
    ivhash = strchr(ivgen, ':');
    b->ivgen_hash_alg = -1;
    if (ivhash) {
        *ivhash++ = 0;
        b->ivgen_hash_alg = crypto_hash_alg_lookup(ivhash);
        if (b->ivgen_hash_alg < 0) {
            error_setg(errp, "Hash algorithm '%s' not supported", ivhash);
            goto fail;
        }
    }
    if ((v = crypto_cipher_mode_lookup(mode)) < 0) {
        error_setg(errp, "Cipher mode '%s' not supported", mode);
        goto fail;
    }
    b->cipher_mode = v;
    v = luks_cipher_lookup(b->hdr.cipher_name, b->cipher_mode,
                           b->hdr.master_key_len, errp);
    if (v < 0) {
        goto fail;
    }
    b->cipher_alg = v;
    if ((v = crypto_hash_alg_lookup(b->hdr.hash_spec)) < 0) {
        error_setg(errp, "Hash algorithm '%s' not supported",
                   b->hdr.hash_spec);
        goto fail;
    }
    b->hash_alg = v;
    if ((v = crypto_ivgen_alg_lookup(ivgen)) < 0) {
        error_setg(errp, "IV generator '%s' not supported", ivgen);
        goto fail;
    }
    b->ivgen_alg = v;
    if (b->ivgen_alg == CRYPTO_IVGEN_ESSIV) {
        if (!ivhash) {
            error_setg(errp, "Missing IV generator hash specification");
            goto fail;
        }
        if ((v = essiv_cipher(b->cipher_alg, b->ivgen_hash_alg, errp)) < 0) {
            goto fail;
        }
        b->ivgen_cipher_alg = v;
    } else {
        /* dm-crypt ignores a hash given with plain IVs: so do we. */
        b->ivgen_cipher_alg = b->cipher_alg;
    }
    g_free(mode);
    return 0;

fail:
    g_free(mode);
    return -1;
}

/* The payload cipher and IV generator keyed with key. */
static int setup_cipher(const CryptoBlock *b, const uint8_t *key,
                        CryptoCipher **cipher, CryptoIVGen **ivgen,
                        GError **errp)
{
    *cipher = crypto_cipher_new(b->cipher_alg, b->cipher_mode, key,
                                b->hdr.master_key_len, errp);
    if (!*cipher) {
        return -1;
    }
    *ivgen = crypto_ivgen_new(b->ivgen_alg, b->ivgen_cipher_alg,
                              b->ivgen_hash_alg < 0 ? CRYPTO_HASH_SHA256
                                                    : b->ivgen_hash_alg,
                              key, b->hdr.master_key_len, errp);
    if (!*ivgen) {
        crypto_cipher_free(*cipher);
        *cipher = NULL;
        return -1;
    }
    return 0;
}

/* A key slot's cipher and key material, the material wiped first. */
static void slot_work_free(CryptoCipher *cipher, CryptoIVGen *ivgen,
                           uint8_t *slotkey, size_t klen, uint8_t *split,
                           size_t splitlen)
{
    crypto_cipher_free(cipher);
    crypto_ivgen_free(ivgen);
    if (slotkey) {
        memset(slotkey, 0, klen);
    }
    if (split) {
        memset(split, 0, splitlen);
    }
    g_free(slotkey);
    g_free(split);
}

/*
 * Try one slot: 1 if password unlocks it (masterkey filled), 0 if not or
 * the slot is unused, -1 on errors.
 */
int luks_load_key(CryptoBlock *b, int idx, const char *password,
                  uint8_t *masterkey, CryptoReadFunc readfn, void *opaque,
                  GError **errp)
{
    const LuksSlot *slot = &b->hdr.slots[idx];
    size_t klen = b->hdr.master_key_len;
    size_t splitlen = klen * slot->stripes;
    uint8_t *split = NULL, *slotkey = NULL;
    uint8_t digest[LUKS_DIGEST_LEN];
    CryptoCipher *cipher = NULL;
    CryptoIVGen *ivgen = NULL;
    int ret = -1;

    if (slot->active != SLOT_ENABLED) {
        return 0;
    }
    slotkey = g_malloc0(klen);
    split = g_malloc0(splitlen);
    if (crypto_pbkdf2(b->hash_alg, (const uint8_t *)password,
                      strlen(password), slot->salt, LUKS_SALT_LEN,
                      slot->iterations, slotkey, klen, errp) < 0 ||
        readfn(opaque, (uint64_t)slot->key_offset_sector * LUKS_SECTOR_SIZE,
               split, splitlen, errp) < 0 ||
        setup_cipher(b, slotkey, &cipher, &ivgen, errp) < 0 ||
        crypto_sectors_encdec(cipher, ivgen, b->niv, LUKS_SECTOR_SIZE, 0,
                              split, splitlen, false, errp) < 0) {
        goto out;
    }
    crypto_afsplit_decode(b->hash_alg, klen, slot->stripes, split, masterkey);
    /* Any passphrase "decrypts": the digest says whether it was right. */
    if (crypto_pbkdf2(b->hash_alg, masterkey, klen, b->hdr.master_key_salt,
                      LUKS_SALT_LEN, b->hdr.master_key_iterations, digest,
                      LUKS_DIGEST_LEN, errp) < 0) {
        goto out;
    }
    ret = !memcmp(digest, b->hdr.master_key_digest, LUKS_DIGEST_LEN);

out:
    slot_work_free(cipher, ivgen, slotkey, klen, split, splitlen);
    return ret;
}

int luks_open(CryptoBlock *b, const char *key_secret, const char *optprefix,
              unsigned flags, CryptoReadFunc readfn, void *opaque,
              GError **errp)
{
    uint8_t raw[LUKS_HEADER_SIZE];
    char *password = NULL;
    uint8_t *masterkey = NULL;
    int ret = -1;

    if (!(flags & CRYPTO_OPEN_NO_IO)) {
        password = crypto_key_secret_lookup(key_secret, optprefix, errp);
        if (!password) {
            return -1;
        }
    }
    if (readfn(opaque, 0, raw, sizeof(raw), errp) < 0) {
        goto out;
    }
    header_from_disk(&b->hdr, raw);
    if (check_header(&b->hdr, errp) < 0 || parse_header(b, errp) < 0) {
        goto out;
    }
    b->niv = crypto_cipher_iv_len(b->cipher_alg, b->cipher_mode);
    if (!(flags & CRYPTO_OPEN_NO_IO)) {
        int i, found = 0;

        masterkey = g_malloc0(b->hdr.master_key_len);
        for (i = 0; i < LUKS_NUM_SLOTS && !found; i++) {
            found = luks_load_key(b, i, password, masterkey, readfn, opaque,
                                  errp);
            if (found < 0) {
                goto out;
            }
        }
        if (!found) {
            error_setg(errp, "Invalid password, cannot unlock any keyslot");
            goto out;
        }
        if (setup_cipher(b, masterkey, &b->cipher, &b->ivgen, errp) < 0) {
            goto out;
        }
    }
    b->sector_size = LUKS_SECTOR_SIZE;
    b->payload_offset = (uint64_t)b->hdr.payload_offset_sector *
                        LUKS_SECTOR_SIZE;
    b->secret_id = g_strdup(key_secret);
    ret = 0;

out:
    if (masterkey) {
        memset(masterkey, 0, b->hdr.master_key_len);
        g_free(masterkey);
    }
    if (password) {
        memset(password, 0, strlen(password));
        g_free(password);
    }
    return ret;
}

/* ---- creation ---- */

/* Scale a one-second iteration count to iter_time ms (and /div). */
static int scale_iters(uint64_t per_sec, int64_t iter_time, unsigned div,
                       uint64_t min, uint32_t *out, GError **errp)
{
    uint64_t iters;

    if (per_sec > UINT64_MAX / (uint64_t)iter_time) {
        error_setg_errno(errp, ERANGE, "PBKDF iterations %llu too large to "
                         "scale", (unsigned long long)per_sec);
        return -1;
    }
    iters = per_sec * (uint64_t)iter_time / 1000 / div;
    if (iters > UINT32_MAX) {
        error_setg_errno(errp, ERANGE, "PBKDF iterations %llu larger than %u",
                         (unsigned long long)iters, UINT32_MAX);
        return -1;
    }
    *out = (uint32_t)MAX(iters, min);
    return 0;
}

int luks_write_header(CryptoBlock *b, CryptoWriteFunc writefn, void *opaque,
                      GError **errp)
{
    uint8_t raw[LUKS_HEADER_SIZE];

    header_to_disk(&b->hdr, raw);
    return writefn(opaque, 0, raw, sizeof(raw), errp) < 0 ? -1 : 0;
}

int luks_store_key(CryptoBlock *b, int idx, const char *password,
                   const uint8_t *masterkey, int64_t iter_time,
                   CryptoWriteFunc writefn, void *opaque, GError **errp)
{
    LuksSlot *slot = &b->hdr.slots[idx];
    size_t klen = b->hdr.master_key_len;
    size_t splitlen = klen * slot->stripes;
    uint8_t *split = g_malloc0(splitlen), *slotkey = g_malloc0(klen);
    CryptoCipher *cipher = NULL;
    CryptoIVGen *ivgen = NULL;
    uint64_t per_sec;
    int ret = -1;

    crypto_random_bytes(slot->salt, LUKS_SALT_LEN);
    per_sec = crypto_pbkdf2_count_iters(b->hash_alg, (const uint8_t *)password,
                                        strlen(password), slot->salt,
                                        LUKS_SALT_LEN, klen, errp);
    if (!per_sec ||
        scale_iters(per_sec, iter_time, 1, MIN_SLOT_KEY_ITERS,
                    &slot->iterations, errp) < 0 ||
        crypto_pbkdf2(b->hash_alg, (const uint8_t *)password,
                      strlen(password), slot->salt, LUKS_SALT_LEN,
                      slot->iterations, slotkey, klen, errp) < 0 ||
        setup_cipher(b, slotkey, &cipher, &ivgen, errp) < 0) {
        goto out;
    }
    crypto_afsplit_encode(b->hash_alg, klen, slot->stripes, masterkey, split);
    if (crypto_sectors_encdec(cipher, ivgen, b->niv, LUKS_SECTOR_SIZE, 0,
                              split, splitlen, true, errp) < 0 ||
        writefn(opaque, (uint64_t)slot->key_offset_sector * LUKS_SECTOR_SIZE,
                split, splitlen, errp) < 0) {
        goto out;
    }
    slot->active = SLOT_ENABLED;
    if (luks_write_header(b, writefn, opaque, errp) < 0) {
        goto out;
    }
    ret = 0;

out:
    slot_work_free(cipher, ivgen, slotkey, klen, split, splitlen);
    return ret;
}

/*
 * An enum option by its QAPI name, or def when not given.  QEMU's visitor
 * sees the options without their prefix: so does the message.
 */
static int enum_opt(const char *given, int def, int (*lookup)(const char *),
                    const char *opt, GError **errp)
{
    int v;

    if (!given) {
        return def;
    }
    v = lookup(given);
    if (v < 0) {
        error_setg(errp, "Parameter '%s' does not accept value '%s'", opt,
                   given);
    }
    return v;
}

static int create_setup(CryptoBlock *b, const CryptoLuksCreateOpts *o,
                        GError **errp)
{
    int v;

    if ((v = enum_opt(o->cipher_alg, CRYPTO_CIPHER_AES_256,
                      crypto_cipher_alg_lookup, "cipher-alg",
                      errp)) < 0) {
        return -1;
    }
    b->cipher_alg = v;
    if ((v = enum_opt(o->cipher_mode, CRYPTO_MODE_XTS,
                      crypto_cipher_mode_lookup, "cipher-mode",
                      errp)) < 0) {
        return -1;
    }
    b->cipher_mode = v;
    if ((v = enum_opt(o->ivgen_alg, CRYPTO_IVGEN_PLAIN64,
                      crypto_ivgen_alg_lookup, "ivgen-alg",
                      errp)) < 0) {
        return -1;
    }
    b->ivgen_alg = v;
    b->ivgen_hash_alg = -1;
    if (o->ivgen_hash_alg || b->ivgen_alg == CRYPTO_IVGEN_ESSIV) {
        if ((v = enum_opt(o->ivgen_hash_alg, CRYPTO_HASH_SHA256,
                          crypto_hash_alg_lookup, "ivgen-hash-alg",
                          errp)) < 0) {
            return -1;
        }
        b->ivgen_hash_alg = v;
    }
    if ((v = enum_opt(o->hash_alg, CRYPTO_HASH_SHA256, crypto_hash_alg_lookup,
                      "hash-alg", errp)) < 0) {
        return -1;
    }
    b->hash_alg = v;
    return 0;
}

CryptoBlock *crypto_luks_create(const CryptoLuksCreateOpts *o,
                                const char *optprefix, CryptoInitFunc initfn,
                                CryptoWriteFunc writefn, void *opaque,
                                GError **errp)
{
    CryptoBlock *b = g_new0(CryptoBlock, 1);
    int64_t iter_time = o->iter_time >= 0 ? o->iter_time
                                          : DEFAULT_ITER_TIME_MS;
    LuksHeader *h = &b->hdr;
    char *password = NULL, *mode_spec = NULL, *uuid;
    uint8_t *masterkey = NULL;
    const char *cname;
    uint32_t hs, split_sectors;
    uint64_t per_sec;
    int v;

    crypto_init();
    b->format = CRYPTO_FORMAT_LUKS;
    if (create_setup(b, o, errp) < 0) {
        goto fail;
    }
    password = crypto_key_secret_lookup(o->key_secret, optprefix, errp);
    if (!password) {
        goto fail;
    }
    memcpy(h->magic, luks_magic, LUKS_MAGIC_LEN);
    h->version = 1;
    uuid = g_uuid_string_random();
    g_strlcpy(h->uuid, uuid, sizeof(h->uuid));
    g_free(uuid);
    cname = luks_cipher_name(b->cipher_alg, errp);
    if (!cname) {
        goto fail;
    }
    if (b->ivgen_hash_alg >= 0) {
        mode_spec = g_strdup_printf("%s-%s:%s",
                                    crypto_cipher_mode_name(b->cipher_mode),
                                    crypto_ivgen_alg_name(b->ivgen_alg),
                                    crypto_hash_alg_name(b->ivgen_hash_alg));
    } else {
        mode_spec = g_strdup_printf("%s-%s",
                                    crypto_cipher_mode_name(b->cipher_mode),
                                    crypto_ivgen_alg_name(b->ivgen_alg));
    }
    if (strlen(mode_spec) >= LUKS_NAME_LEN) {
        error_setg(errp, "Cipher mode '%s' is too long for LUKS header",
                   mode_spec);
        goto fail;
    }
    if (b->ivgen_alg == CRYPTO_IVGEN_ESSIV) {
        if ((v = essiv_cipher(b->cipher_alg, b->ivgen_hash_alg, errp)) < 0) {
            goto fail;
        }
        b->ivgen_cipher_alg = v;
    } else {
        b->ivgen_cipher_alg = b->cipher_alg;
    }
    g_strlcpy(h->cipher_name, cname, LUKS_NAME_LEN);
    g_strlcpy(h->cipher_mode, mode_spec, LUKS_NAME_LEN);
    g_strlcpy(h->hash_spec, crypto_hash_alg_name(b->hash_alg), LUKS_NAME_LEN);
    h->master_key_len = (uint32_t)crypto_cipher_key_len(b->cipher_alg) *
                        (b->cipher_mode == CRYPTO_MODE_XTS ? 2 : 1);
    crypto_random_bytes(h->master_key_salt, LUKS_SALT_LEN);
    masterkey = g_malloc(h->master_key_len);
    crypto_random_bytes(masterkey, h->master_key_len);
    b->niv = crypto_cipher_iv_len(b->cipher_alg, b->cipher_mode);
    if (setup_cipher(b, masterkey, &b->cipher, &b->ivgen, errp) < 0) {
        goto fail;
    }
    /*
     * As cryptsetup: the digest check costs an eighth of the slot
     * unlock, so that trying all 8 slots costs about iter_time.
     */
    per_sec = crypto_pbkdf2_count_iters(b->hash_alg, masterkey,
                                        h->master_key_len, h->master_key_salt,
                                        LUKS_SALT_LEN, LUKS_DIGEST_LEN, errp);
    if (!per_sec ||
        scale_iters(per_sec, iter_time, 8, MIN_MASTER_KEY_ITERS,
                    &h->master_key_iterations, errp) < 0 ||
        crypto_pbkdf2(b->hash_alg, masterkey, h->master_key_len,
                      h->master_key_salt, LUKS_SALT_LEN,
                      h->master_key_iterations, h->master_key_digest,
                      LUKS_DIGEST_LEN, errp) < 0) {
        goto fail;
    }
    hs = LUKS_KEY_SLOT_OFFSET / LUKS_SECTOR_SIZE;
    split_sectors = splitkey_sectors(h->master_key_len, LUKS_STRIPES);
    for (int i = 0; i < LUKS_NUM_SLOTS; i++) {
        h->slots[i].active = SLOT_DISABLED;
        h->slots[i].key_offset_sector = hs + i * split_sectors;
        h->slots[i].stripes = LUKS_STRIPES;
    }
    h->payload_offset_sector = hs + LUKS_NUM_SLOTS * split_sectors;
    b->sector_size = LUKS_SECTOR_SIZE;
    b->payload_offset = (uint64_t)h->payload_offset_sector * LUKS_SECTOR_SIZE;
    if (initfn(opaque, b->payload_offset, errp) < 0 ||
        luks_store_key(b, 0, password, masterkey, iter_time, writefn, opaque,
                       errp) < 0) {
        goto fail;
    }
    memset(masterkey, 0, h->master_key_len);
    g_free(masterkey);
    memset(password, 0, strlen(password));
    g_free(password);
    g_free(mode_spec);
    b->secret_id = g_strdup(o->key_secret);
    return b;

fail:
    if (masterkey) {
        memset(masterkey, 0, h->master_key_len);
        g_free(masterkey);
    }
    if (password) {
        memset(password, 0, strlen(password));
        g_free(password);
    }
    g_free(mode_spec);
    crypto_block_free(b);
    return NULL;
}

static int size_init(void *opaque, uint64_t headerlen, GError **errp)
{
    *(uint64_t *)opaque = headerlen;
    return 0;
}

static int size_write(void *opaque, uint64_t offset, const uint8_t *buf,
                      size_t len, GError **errp)
{
    return 0;
}

/* As QEMU: a creation without storage, for its errors and its size. */
bool crypto_luks_payload_size(const CryptoLuksCreateOpts *o,
                              const char *optprefix, uint64_t *size,
                              GError **errp)
{
    CryptoBlock *b = crypto_luks_create(o, optprefix, size_init, size_write,
                                        size, errp);
    crypto_block_free(b);
    return b != NULL;
}

bool crypto_luks_measure_header(json_t *options, const char *prefix,
                                uint64_t *size, GError **errp)
{
    static const char *const keys[7] = {
        "key-secret", "cipher-alg", "cipher-mode", "ivgen-alg",
        "ivgen-hash-alg", "hash-alg", "iter-time",
    };
    const char *vals[6];
    json_t *it;
    CryptoLuksCreateOpts o;
    char *name;

    for (int i = 0; i < 6; i++) {
        name = g_strconcat(prefix, keys[i], NULL);
        vals[i] = json_string_value(json_object_get(options, name));
        g_free(name);
    }
    name = g_strconcat(prefix, keys[6], NULL);
    it = json_object_get(options, name);
    g_free(name);
    o = (CryptoLuksCreateOpts){
        .key_secret = vals[0], .cipher_alg = vals[1], .cipher_mode = vals[2],
        .ivgen_alg = vals[3], .ivgen_hash_alg = vals[4], .hash_alg = vals[5],
        .iter_time = json_is_integer(it) ? json_integer_value(it) :
                     json_is_string(it) ?
                     (int64_t)g_ascii_strtoull(json_string_value(it), NULL, 10)
                     : -1,
    };
    return crypto_luks_payload_size(&o, *prefix ? prefix : NULL, size, errp);
}

json_t *crypto_block_luks_info(const CryptoBlock *b)
{
    json_t *info, *slots;

    if (b->format != CRYPTO_FORMAT_LUKS) {
        return NULL;
    }
    info = json_object();
    json_object_set_new(info, "cipher-alg",
                        json_string(crypto_cipher_alg_name(b->cipher_alg)));
    json_object_set_new(info, "cipher-mode",
                        json_string(crypto_cipher_mode_name(b->cipher_mode)));
    json_object_set_new(info, "ivgen-alg",
                        json_string(crypto_ivgen_alg_name(b->ivgen_alg)));
    if (b->ivgen_alg == CRYPTO_IVGEN_ESSIV) {
        json_object_set_new(info, "ivgen-hash-alg",
                            json_string(crypto_hash_alg_name(
                                b->ivgen_hash_alg)));
    }
    json_object_set_new(info, "hash-alg",
                        json_string(crypto_hash_alg_name(b->hash_alg)));
    json_object_set_new(info, "payload-offset",
                        json_integer((json_int_t)b->payload_offset));
    json_object_set_new(info, "master-key-iters",
                        json_integer(b->hdr.master_key_iterations));
    json_object_set_new(info, "uuid",
                        json_stringn_nocheck(b->hdr.uuid,
                                             strnlen(b->hdr.uuid,
                                                     LUKS_UUID_LEN)));
    slots = json_array();
    for (int i = 0; i < LUKS_NUM_SLOTS; i++) {
        const LuksSlot *s = &b->hdr.slots[i];
        json_t *e = json_object();
        bool active = s->active == SLOT_ENABLED;

        json_object_set_new(e, "active", json_boolean(active));
        if (active) {
            json_object_set_new(e, "iters", json_integer(s->iterations));
            json_object_set_new(e, "stripes", json_integer(s->stripes));
        }
        json_object_set_new(e, "key-offset",
                            json_integer((json_int_t)s->key_offset_sector *
                                         LUKS_SECTOR_SIZE));
        json_array_append_new(slots, e);
    }
    json_object_set_new(info, "slots", slots);
    return info;
}
