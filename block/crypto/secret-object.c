/*
 * The secret objects of a program: loaded once, when created (as QEMU's
 * secret object loads on completion), kept by id, and offered to the
 * library as its secret lookup.  Both the tools' --object and the daemon's
 * object-add come here, so the two accept and refuse the same things with
 * QEMU 7.2's messages.
 */
#include <string.h>
#include "strata/error.h"
#include "strata/secret.h"

static GHashTable *secrets; /* id -> GBytes */

static uint8_t *base64_decode(const char *in, size_t *len, GError **errp)
{
    static const char valid[] =
        "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/=\n";

    if (strspn(in, valid) != strlen(in)) {
        error_setg(errp, "Base64 data contains invalid characters");
        return NULL;
    }
    return g_base64_decode(in, len);
}

/*
 * keyid=: the data is AES-256-CBC cipher text (base64 with format=base64)
 * under the 32-byte secret keyid and the base64 iv, padded PKCS#7-style.
 * Takes raw.
 */
static GBytes *secret_decrypt(const SecretSpec *p, uint8_t *raw, size_t len,
                              GError **errp)
{
    size_t keylen, ivlen;
    const uint8_t *key = secret_object_lookup(p->keyid, &keylen);
    uint8_t *iv = NULL, *text = raw;
    GBytes *out = NULL;
    uint8_t pad;

    if (!key) {
        error_setg(errp, "No secret with id '%s'", p->keyid);
        goto out;
    }
    if (keylen != 32) {
        error_setg(errp, "Key should be 32 bytes in length");
        goto out;
    }
    if (!p->iv) {
        error_setg(errp, "IV is required to decrypt secret");
        goto out;
    }
    iv = base64_decode(p->iv, &ivlen, errp);
    if (!iv) {
        goto out;
    }
    if (ivlen != 16) {
        error_setg(errp, "IV should be 16 bytes in length not %zu", ivlen);
        goto out;
    }
    if (p->base64) {
        text = base64_decode((const char *)raw, &len, errp);
        if (!text) {
            goto out;
        }
    }
    if (!secret_aes256_cbc_decrypt(key, iv, text, len, errp)) {
        goto out;
    }
    pad = len ? text[len - 1] : 0;
    if (!len || pad > 16 || pad > len) {
        error_setg(errp, "Incorrect number of padding bytes (%d) found on "
                   "decrypted data", (int)pad);
        goto out;
    }
    out = g_bytes_new(text, len - pad);
out:
    if (text != raw) {
        g_free(text);
    }
    g_free(raw);
    g_free(iv);
    return out;
}

static GBytes *secret_load(const SecretSpec *p, GError **errp)
{
    uint8_t *raw;
    size_t len;

    if (p->data && p->file) {
        error_setg(errp, "'file' and 'data' are mutually exclusive");
        return NULL;
    }
    if (p->data) {
        len = strlen(p->data);
        raw = (uint8_t *)g_strdup(p->data);
    } else if (p->file) {
        GError *gerr = NULL;
        gchar *contents;
        gsize n;

        if (!g_file_get_contents(p->file, &contents, &n, &gerr)) {
            error_setg(errp, "Unable to read %s: %s", p->file, gerr->message);
            g_error_free(gerr);
            return NULL;
        }
        raw = (uint8_t *)contents;
        len = n;
    } else {
        error_setg(errp, "Either 'file' or 'data' must be provided");
        return NULL;
    }

    if (p->keyid) {
        return secret_decrypt(p, raw, len, errp);
    }
    if (p->base64) {
        uint8_t *dec = base64_decode((const char *)raw, &len, errp);
        g_free(raw);
        if (!dec) {
            return NULL;
        }
        raw = dec;
    }
    return g_bytes_new_take(raw, len);
}

bool secret_object_add(const char *id, const SecretSpec *spec, GError **errp)
{
    GBytes *bytes = secret_load(spec, errp);

    if (!bytes) {
        return false;
    }
    if (!secrets) {
        secrets = g_hash_table_new_full(g_str_hash, g_str_equal, g_free,
                                        (GDestroyNotify)g_bytes_unref);
        /* Encrypted images ask for their passphrase by id. */
        crypto_secret_set_lookup(secret_object_lookup);
    }
    g_hash_table_replace(secrets, g_strdup(id), bytes);
    return true;
}

bool secret_object_del(const char *id)
{
    return secrets && g_hash_table_remove(secrets, id);
}

bool secret_object_exists(const char *id)
{
    return secrets && g_hash_table_contains(secrets, id);
}

const uint8_t *secret_object_lookup(const char *id, size_t *len)
{
    GBytes *b = secrets ? g_hash_table_lookup(secrets, id) : NULL;
    gsize n = 0;
    const uint8_t *data;

    if (!b) {
        return NULL;
    }
    data = g_bytes_get_data(b, &n);
    *len = n;
    /* An empty secret has no data pointer but exists all the same. */
    return data ? data : (const uint8_t *)"";
}

void secret_objects_clear(void)
{
    if (secrets) {
        g_hash_table_destroy(secrets);
        secrets = NULL;
    }
}
