/* What block.c and luks.c share: the state of an opened CryptoBlock. */
#ifndef STRATA_BLOCK_CRYPTO_INT_H
#define STRATA_BLOCK_CRYPTO_INT_H

#include "crypto.h"

enum {
    LUKS_MAGIC_LEN = 6,
    LUKS_NAME_LEN = 32,
    LUKS_DIGEST_LEN = 20,
    LUKS_SALT_LEN = 32,
    LUKS_UUID_LEN = 40,
    LUKS_NUM_SLOTS = 8,
    LUKS_STRIPES = 4000,
    LUKS_SECTOR_SIZE = 512,
    LUKS_KEY_SLOT_OFFSET = 4096,   /* key material starts past the header */
    LUKS_HEADER_SIZE = 592,
};

typedef struct LuksSlot {
    uint32_t active;
    uint32_t iterations;
    uint8_t salt[LUKS_SALT_LEN];
    uint32_t key_offset_sector;
    uint32_t stripes;
} LuksSlot;

/* The LUKS1 header in host byte order. */
typedef struct LuksHeader {
    uint8_t magic[LUKS_MAGIC_LEN];
    uint16_t version;
    char cipher_name[LUKS_NAME_LEN];
    char cipher_mode[LUKS_NAME_LEN];
    char hash_spec[LUKS_NAME_LEN];
    uint32_t payload_offset_sector;
    uint32_t master_key_len;
    uint8_t master_key_digest[LUKS_DIGEST_LEN];
    uint8_t master_key_salt[LUKS_SALT_LEN];
    uint32_t master_key_iterations;
    char uuid[LUKS_UUID_LEN];
    LuksSlot slots[LUKS_NUM_SLOTS];
} LuksHeader;

struct CryptoBlock {
    CryptoFormat format;
    CryptoCipher *cipher;        /* NULL when opened without I/O */
    CryptoIVGen *ivgen;
    size_t niv;
    unsigned sector_size;
    uint64_t payload_offset;
    /* LUKS only */
    LuksHeader hdr;
    CryptoCipherAlg cipher_alg, ivgen_cipher_alg;
    CryptoCipherMode cipher_mode;
    CryptoIVGenAlg ivgen_alg;
    int ivgen_hash_alg;          /* -1: none given */
    CryptoHashAlg hash_alg;
    char *secret_id;             /* the key-secret that unlocked it */
};

enum {
    SLOT_DISABLED = 0x0000DEAD,
    SLOT_ENABLED = 0x00AC71F3,
    DEFAULT_ITER_TIME_MS = 2000,
};

/* luks.c, for luks-amend.c: one slot unlocked (1), not (0), error (-1);
 * a slot filled; the header written. */
int luks_load_key(CryptoBlock *b, int idx, const char *password,
                  uint8_t *masterkey, CryptoReadFunc readfn, void *opaque,
                  GError **errp);
int luks_store_key(CryptoBlock *b, int idx, const char *password,
                   const uint8_t *masterkey, int64_t iter_time,
                   CryptoWriteFunc writefn, void *opaque, GError **errp);
int luks_write_header(CryptoBlock *b, CryptoWriteFunc writefn, void *opaque,
                      GError **errp);

int luks_open(CryptoBlock *b, const char *key_secret, const char *optprefix,
              unsigned flags, CryptoReadFunc readfn, void *opaque,
              GError **errp);

#endif
