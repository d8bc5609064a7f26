/*
 * libgcrypt, loaded on the first use of a cipher, digest or random bytes
 * (crypto_init) rather than at start.
 *
 * Most runs of a strata program never encrypt or hash anything, yet
 * linking libgcrypt (and its libgpg-error) made each of them map and
 * relocate both at start.  cipher.c and hash.c call it through gcry, a
 * table of the functions they use, typed from <gcrypt.h> so that the
 * compiler checks every call as before.
 */
#ifndef STRATA_GCRYPT_LIB_H
#define STRATA_GCRYPT_LIB_H

#include <stdbool.h>
#include <glib.h>
#include <gcrypt.h>

/* Every libgcrypt function strata calls. */
#define GCRYPT_LIB_FUNCTIONS(F)                                               \
    F(check_version) F(control) F(strerror) F(randomize)                      \
    F(cipher_open) F(cipher_close) F(cipher_setkey) F(cipher_setiv)           \
    F(cipher_setctr) F(cipher_encrypt) F(cipher_decrypt)                      \
    F(cipher_algo_info)                                                       \
    F(md_open) F(md_close) F(md_write) F(md_read) F(md_algo_info)             \
    F(md_get_algo_dlen) F(kdf_derive)

typedef struct GcryptLib {
#define GCRYPT_LIB_MEMBER(name) __typeof__(gcry_##name) *name;
    GCRYPT_LIB_FUNCTIONS(GCRYPT_LIB_MEMBER)
#undef GCRYPT_LIB_MEMBER
} GcryptLib;

/* Filled by gcrypt_lib_load(); used only after crypto_init(). */
extern GcryptLib gcry;

/*
 * Load libgcrypt (once: crypto_init calls it under its own once-guard).
 * False with errp set if it cannot be loaded or lacks a function.
 */
bool gcrypt_lib_load(GError **errp);

#endif
