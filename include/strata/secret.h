/*
 * Secrets (passphrases, keys) the library needs, e.g. to open encrypted
 * images.  The program owns them (--object secret,...) and tells the
 * library how to find one by id.
 */
#ifndef STRATA_SECRET_H
#define STRATA_SECRET_H

#include <glib.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* The secret's bytes and length (they may hold NULs); NULL: no such id. */
typedef const uint8_t *(*CryptoSecretLookup)(const char *id, size_t *len);
void crypto_secret_set_lookup(CryptoSecretLookup fn);

/*
 * Decrypt len bytes (a multiple of 16) in place with AES-256-CBC under a
 * 32-byte key and a 16-byte IV: secrets given encrypted under another
 * secret (QEMU's secret object with keyid= and iv=).  Padding is the
 * caller's.
 */
bool secret_aes256_cbc_decrypt(const uint8_t *key, const uint8_t *iv,
                               uint8_t *buf, size_t len, GError **errp);

/*
 * The program's secret objects (--object secret and object-add share
 * them).  The properties as QEMU's secret object takes them; base64 is
 * format=base64.  secret_object_add() loads the data (decoding, reading the
 * file, decrypting under keyid with iv) with QEMU's messages and registers
 * it under id, which the caller has checked is free; the store is then the
 * library's secret lookup.
 */
typedef struct SecretSpec {
    const char *data, *file, *keyid, *iv;
    bool base64;
} SecretSpec;
bool secret_object_add(const char *id, const SecretSpec *spec, GError **errp);
bool secret_object_del(const char *id);
bool secret_object_exists(const char *id);
/* The bytes and length; NULL: no such id (an empty secret is not NULL). */
const uint8_t *secret_object_lookup(const char *id, size_t *len);
void secret_objects_clear(void);

#endif
