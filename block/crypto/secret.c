/*
 * Secrets as the library sees them.  The tools define secrets with
 * --object secret,... and hand the library a lookup function, so that the
 * library never parses command lines.
 */
#include <string.h>
#include "strata/error.h"
#include "crypto.h"

static CryptoSecretLookup secret_lookup;

void crypto_secret_set_lookup(CryptoSecretLookup fn)
{
    secret_lookup = fn;
}

char *crypto_secret_lookup_utf8(const char *id, GError **errp)
{
    size_t len = 0;
    const uint8_t *data = secret_lookup ? secret_lookup(id, &len) : NULL;

    if (!data) {
        error_setg(errp, "No secret with id '%s'", id);
        return NULL;
    }
    if (!g_utf8_validate((const char *)data, (gssize)len, NULL)) {
        error_setg(errp, "Data from secret %s is not valid UTF-8", id);
        return NULL;
    }
    return g_strndup((const char *)data, len);
}

char *crypto_key_secret_lookup(const char *id, const char *optprefix,
                               GError **errp)
{
    if (!id) {
        error_setg(errp, "Parameter '%skey-secret' is required for cipher",
                   optprefix ? optprefix : "");
        return NULL;
    }
    return crypto_secret_lookup_utf8(id, errp);
}

bool secret_aes256_cbc_decrypt(const uint8_t *key, const uint8_t *iv,
                               uint8_t *buf, size_t len, GError **errp)
{
    CryptoCipher *aes = crypto_cipher_new(CRYPTO_CIPHER_AES_256,
                                          CRYPTO_MODE_CBC, key, 32, errp);
    bool ok = aes && crypto_cipher_setiv(aes, iv, 16, errp) >= 0 &&
              crypto_cipher_decrypt(aes, buf, len, errp) >= 0;

    crypto_cipher_free(aes);
    return ok;
}
