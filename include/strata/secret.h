/*
 * Secrets (passphrases, keys) the library needs, e.g. to open encrypted
 * images.  The program owns them (--object secret,...) and tells the
 * library how to find one by id.
 */
#ifndef STRATA_SECRET_H
#define STRATA_SECRET_H

#include <stddef.h>
#include <stdint.h>

/* The secret's bytes and length (they may hold NULs); NULL: no such id. */
typedef const uint8_t *(*CryptoSecretLookup)(const char *id, size_t *len);
void crypto_secret_set_lookup(CryptoSecretLookup fn);

#endif
