/*
 * Disk encryption for the block layer: the LUKS1 format (the `luks` driver
 * and qcow2's encrypt.format=luks) and qcow2's legacy AES-CBC scheme.
 *
 * Every cipher, hash and key derivation comes from libgcrypt; this code only
 * arranges them the way the on-disk formats (and QEMU) expect.  Names of
 * algorithms are QEMU's QAPI names ("aes-256", "xts", "plain64", "sha256")
 * so that options, headers and `info` output read as QEMU's do.
 */
#ifndef STRATA_BLOCK_CRYPTO_H
#define STRATA_BLOCK_CRYPTO_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <glib.h>
#include <jansson.h>
#include "strata/secret.h"

/* QEMU's QCryptoCipherAlgorithm, in its order (the values are ours). */
typedef enum {
    CRYPTO_CIPHER_AES_128, CRYPTO_CIPHER_AES_192, CRYPTO_CIPHER_AES_256,
    CRYPTO_CIPHER_DES, CRYPTO_CIPHER_3DES, CRYPTO_CIPHER_CAST5_128,
    CRYPTO_CIPHER_SERPENT_128, CRYPTO_CIPHER_SERPENT_192,
    CRYPTO_CIPHER_SERPENT_256, CRYPTO_CIPHER_TWOFISH_128,
    CRYPTO_CIPHER_TWOFISH_192, CRYPTO_CIPHER_TWOFISH_256,
    CRYPTO_CIPHER_SM4,
    CRYPTO_CIPHER__MAX
} CryptoCipherAlg;

typedef enum {
    CRYPTO_MODE_ECB, CRYPTO_MODE_CBC, CRYPTO_MODE_XTS, CRYPTO_MODE_CTR,
    CRYPTO_MODE__MAX
} CryptoCipherMode;

typedef enum {
    CRYPTO_IVGEN_PLAIN, CRYPTO_IVGEN_PLAIN64, CRYPTO_IVGEN_ESSIV,
    CRYPTO_IVGEN__MAX
} CryptoIVGenAlg;

typedef enum {
    CRYPTO_HASH_MD5, CRYPTO_HASH_SHA1, CRYPTO_HASH_SHA224,
    CRYPTO_HASH_SHA256, CRYPTO_HASH_SHA384, CRYPTO_HASH_SHA512,
    CRYPTO_HASH_RIPEMD160,
    CRYPTO_HASH__MAX
} CryptoHashAlg;

/* Name <-> value (QAPI names); lookups return -1 for unknown names. */
const char *crypto_cipher_alg_name(CryptoCipherAlg alg);
const char *crypto_cipher_mode_name(CryptoCipherMode mode);
const char *crypto_ivgen_alg_name(CryptoIVGenAlg alg);
const char *crypto_hash_alg_name(CryptoHashAlg alg);
int crypto_cipher_alg_lookup(const char *name);
int crypto_cipher_mode_lookup(const char *name);
int crypto_ivgen_alg_lookup(const char *name);
int crypto_hash_alg_lookup(const char *name);

/* Initialise libgcrypt once (safe to call from anywhere, any time). */
void crypto_init(void);
/* Fill buf with random bytes from libgcrypt's strong generator. */
void crypto_random_bytes(uint8_t *buf, size_t len);

/* ---- cipher.c: one keyed cipher in one mode ---- */
typedef struct CryptoCipher CryptoCipher;

size_t crypto_cipher_key_len(CryptoCipherAlg alg);
size_t crypto_cipher_block_len(CryptoCipherAlg alg);
/* IV length the mode needs (0 for ECB). */
size_t crypto_cipher_iv_len(CryptoCipherAlg alg, CryptoCipherMode mode);
bool crypto_cipher_supports(CryptoCipherAlg alg, CryptoCipherMode mode);
/* XTS takes two keys: nkey is then twice crypto_cipher_key_len(). */
CryptoCipher *crypto_cipher_new(CryptoCipherAlg alg, CryptoCipherMode mode,
                                const uint8_t *key, size_t nkey,
                                GError **errp);
void crypto_cipher_free(CryptoCipher *c);
int crypto_cipher_setiv(CryptoCipher *c, const uint8_t *iv, size_t niv,
                        GError **errp);
/* In place; len a multiple of the block length. */
int crypto_cipher_encrypt(CryptoCipher *c, uint8_t *buf, size_t len,
                          GError **errp);
int crypto_cipher_decrypt(CryptoCipher *c, uint8_t *buf, size_t len,
                          GError **errp);

/* ---- hash.c: digests and PBKDF2 ---- */
size_t crypto_hash_digest_len(CryptoHashAlg alg);
bool crypto_hash_supports(CryptoHashAlg alg);
void crypto_hash_bytes(CryptoHashAlg alg, const uint8_t *const *bufs,
                       const size_t *lens, size_t n, uint8_t *digest);
int crypto_pbkdf2(CryptoHashAlg hash, const uint8_t *key, size_t nkey,
                  const uint8_t *salt, size_t nsalt, uint64_t iterations,
                  uint8_t *out, size_t nout, GError **errp);
/* Iterations of PBKDF2 this thread computes in one second of CPU time. */
uint64_t crypto_pbkdf2_count_iters(CryptoHashAlg hash, const uint8_t *key,
                                   size_t nkey, const uint8_t *salt,
                                   size_t nsalt, size_t nout, GError **errp);

/* ---- afsplit.c: LUKS anti-forensic splitter ---- */
void crypto_afsplit_encode(CryptoHashAlg hash, size_t blocklen,
                           uint32_t stripes, const uint8_t *in, uint8_t *out);
void crypto_afsplit_decode(CryptoHashAlg hash, size_t blocklen,
                           uint32_t stripes, const uint8_t *in, uint8_t *out);

/* ---- ivgen.c: per-sector initialisation vectors ---- */
typedef struct CryptoIVGen CryptoIVGen;

/* cipher and hash are used by essiv only (its cipher is keyed by
 * hash(key)). */
CryptoIVGen *crypto_ivgen_new(CryptoIVGenAlg alg, CryptoCipherAlg cipher,
                              CryptoHashAlg hash, const uint8_t *key,
                              size_t nkey, GError **errp);
void crypto_ivgen_free(CryptoIVGen *g);
int crypto_ivgen_calculate(CryptoIVGen *g, uint64_t sector, uint8_t *iv,
                           size_t niv, GError **errp);

/*
 * Encrypt or decrypt len bytes (whole sectors) whose first sector has
 * number start_sector, re-keying the IV at every sector.
 */
int crypto_sectors_encdec(CryptoCipher *c, CryptoIVGen *g, size_t niv,
                          size_t sector_size, uint64_t start_sector,
                          uint8_t *buf, size_t len, bool encrypt,
                          GError **errp);

/* ---- secret.c: the secrets that --object secret defined ---- */
/* The secret as a UTF-8 string, QEMU's errors when missing or invalid. */
char *crypto_secret_lookup_utf8(const char *id, GError **errp);
/*
 * The same for the key-secret option a cipher needs: QEMU's "Parameter
 * '<optprefix>key-secret' is required for cipher" when id is NULL.
 */
char *crypto_key_secret_lookup(const char *id, const char *optprefix,
                               GError **errp);

/* ---- block.c: an encryption layer over a block format ---- */
typedef enum { CRYPTO_FORMAT_QCOW, CRYPTO_FORMAT_LUKS } CryptoFormat;

typedef struct CryptoBlock CryptoBlock;

/* Read or write header bytes at offset (relative to the header start). */
typedef int (*CryptoReadFunc)(void *opaque, uint64_t offset, uint8_t *buf,
                              size_t len, GError **errp);
typedef int (*CryptoWriteFunc)(void *opaque, uint64_t offset,
                               const uint8_t *buf, size_t len, GError **errp);
/* Make room for a header of headerlen bytes (create only). */
typedef int (*CryptoInitFunc)(void *opaque, uint64_t headerlen,
                              GError **errp);

/* LUKS creation choices; NULL / negative members take QEMU's defaults. */
typedef struct CryptoLuksCreateOpts {
    const char *key_secret;
    const char *cipher_alg;     /* aes-256 */
    const char *cipher_mode;    /* xts */
    const char *ivgen_alg;      /* plain64 */
    const char *ivgen_hash_alg; /* sha256 with essiv, else none */
    const char *hash_alg;       /* sha256 */
    int64_t iter_time;          /* ms; 2000 */
} CryptoLuksCreateOpts;

enum { CRYPTO_OPEN_NO_IO = 1 };

bool crypto_luks_has_format(const uint8_t *buf, size_t len);

/*
 * Open: read and check the header, and unless CRYPTO_OPEN_NO_IO, unlock
 * the master key with the secret's passphrase.  optprefix is put before
 * option names in messages ("encrypt." for qcow2).
 */
CryptoBlock *crypto_block_open(CryptoFormat fmt, const char *key_secret,
                               const char *optprefix, unsigned flags,
                               CryptoReadFunc readfn, void *opaque,
                               GError **errp);
CryptoBlock *crypto_luks_create(const CryptoLuksCreateOpts *o,
                                const char *optprefix, CryptoInitFunc initfn,
                                CryptoWriteFunc writefn, void *opaque,
                                GError **errp);
CryptoBlock *crypto_qcow_create(const char *key_secret, const char *optprefix,
                                GError **errp);
/* Check options and compute the header size LUKS creation would use. */
bool crypto_luks_payload_size(const CryptoLuksCreateOpts *o,
                              const char *optprefix, uint64_t *size,
                              GError **errp);
/*
 * The same from creation options in JSON (size measurement): the keys
 * are "key-secret", "cipher-alg", ... after prefix ("encrypt." for qcow2).
 */
bool crypto_luks_measure_header(json_t *options, const char *prefix,
                                uint64_t *size, GError **errp);
void crypto_block_free(CryptoBlock *b);

uint64_t crypto_block_payload_offset(const CryptoBlock *b);
unsigned crypto_block_sector_size(const CryptoBlock *b);
/* Whether the block holds a key (not opened with CRYPTO_OPEN_NO_IO). */
bool crypto_block_has_key(const CryptoBlock *b);
/*
 * In place, offset and len multiples of the sector size.  offset is the
 * byte offset the IVs are derived from (sector = offset / sector_size).
 * Returns 0 or -EIO.
 */
int crypto_block_encrypt(CryptoBlock *b, uint64_t offset, uint8_t *buf,
                         size_t len);
int crypto_block_decrypt(CryptoBlock *b, uint64_t offset, uint8_t *buf,
                         size_t len);
/*
 * bytes of encrypted data at offset of child (IVs counted from iv_offset),
 * read into or written from qiov at qoff through a bounce buffer; flags
 * go to the child's write.  Coroutine context; 0 or -errno.
 */
struct BlockChild;
struct IOVec;
int crypto_block_co_preadv(CryptoBlock *b, struct BlockChild *child,
                           uint64_t offset, uint64_t iv_offset,
                           uint64_t bytes, struct IOVec *qiov, size_t qoff);
int crypto_block_co_pwritev(CryptoBlock *b, struct BlockChild *child,
                            uint64_t offset, uint64_t iv_offset,
                            uint64_t bytes, struct IOVec *qiov, size_t qoff,
                            int flags);
/*
 * qemu-img amend for LUKS: state=active adds new_secret to a key slot
 * (keyslot, or the first free one), unlocking the master key with the
 * secret the block was opened with; state=inactive erases the slot given
 * or every slot old_secret opens.  Strings NULL and numbers negative when
 * not given; state must be "active" or "inactive".
 */
typedef struct CryptoLuksAmendOpts {
    const char *state;
    const char *new_secret;
    const char *old_secret;
    int64_t keyslot;
    bool has_keyslot;
    int64_t iter_time;
} CryptoLuksAmendOpts;

/* The amend options from qemu-img's (prefix "encrypt." for qcow2); the
 * strings point into options. */
void crypto_luks_amend_opts_parse(json_t *options, const char *prefix,
                                  CryptoLuksAmendOpts *o);
int crypto_luks_amend(CryptoBlock *b, const CryptoLuksAmendOpts *o,
                      bool force, CryptoReadFunc readfn,
                      CryptoWriteFunc writefn, void *opaque, GError **errp);

/* QAPI QCryptoBlockInfoLUKS members (NULL for qcow). */
json_t *crypto_block_luks_info(const CryptoBlock *b);

#endif
