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

#endif
