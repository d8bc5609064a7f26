/*
 * --object for the tools.  Only "secret" objects exist so far: they hold
 * passwords and keys that drivers look up by id.  Errors use QEMU's words
 * so that scripts see the same messages.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "strata/error.h"
#include "strata/opts.h"
#include "strata/secret.h"
#include "tool-common.h"

static GHashTable *secrets; /* id -> GBytes */

static G_NORETURN void print_types_and_exit(void)
{
    printf("List of user creatable objects:\n");
    printf("  secret\n");
    exit(0);
}

static G_NORETURN void print_secret_help_and_exit(void)
{
    printf("secret options:\n");
    printf("  data=<string>\n");
    printf("  file=<string>\n");
    printf("  format=<QCryptoSecretFormat>\n");
    printf("  iv=<string>\n");
    printf("  keyid=<string>\n");
    exit(0);
}

static G_NORETURN void fail(GError *err)
{
    tool_error_gerror(err, "%s", "");
    exit(1);
}

/*
 * keyval help requests: a bare "help" or "?" element anywhere.  Returns the
 * type named by the first element (or qom-type=), NULL if none, in *type.
 */
static bool wants_help(const char *arg, char **type)
{
    char **elems = g_strsplit(arg, ",", -1);
    bool help = false;

    *type = NULL;
    for (int i = 0; elems[i]; i++) {
        const char *e = elems[i];
        if (!strcmp(e, "help") || !strcmp(e, "?")) {
            help = true;
        } else if (i == 0 && !strchr(e, '=')) {
            *type = g_strdup(e);
        } else if (g_str_has_prefix(e, "qom-type=") && !*type) {
            *type = g_strdup(e + strlen("qom-type="));
        }
    }
    g_strfreev(elems);
    return help;
}

/* Take a string member; JSON input must hold a string there. */
static bool take_str(json_t *args, const char *key, bool from_json,
                     char **out, GError **errp)
{
    json_t *v = json_object_get(args, key);

    if (!v) {
        return true;
    }
    if (json_is_string(v)) {
        *out = g_strdup(json_string_value(v));
        json_object_del(args, key);
        return true;
    }
    if (!from_json && json_is_object(v)) {
        error_setg(errp, "Parameters '%s.*' are unexpected", key);
    } else {
        error_setg(errp, "Invalid parameter type for '%s', expected: string",
                   key);
    }
    return false;
}

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

typedef struct SecretProps {
    char *data, *file, *format, *keyid, *iv;
} SecretProps;

static void secret_props_free(SecretProps *p)
{
    g_free(p->data);
    g_free(p->file);
    g_free(p->format);
    g_free(p->keyid);
    g_free(p->iv);
    memset(p, 0, sizeof(*p));
}

/*
 * keyid=: the data is AES-256-CBC cipher text (base64 with format=base64)
 * under the 32-byte secret keyid and the base64 iv, padded PKCS#7-style.
 * Takes raw.
 */
static GBytes *secret_decrypt(const SecretProps *p, uint8_t *raw, size_t len,
                              GError **errp)
{
    size_t keylen, ivlen;
    const uint8_t *key = tool_secret_lookup(p->keyid, &keylen);
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
    if (p->format && !strcmp(p->format, "base64")) {
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

static GBytes *secret_load(const SecretProps *p, GError **errp)
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
    if (p->format && !strcmp(p->format, "base64")) {
        uint8_t *dec = base64_decode((const char *)raw, &len, errp);
        g_free(raw);
        if (!dec) {
            return NULL;
        }
        raw = dec;
    }
    return g_bytes_new_take(raw, len);
}

/* false with *errp set: the caller frees what it holds, then exits. */
static bool secret_add(json_t *args, bool from_json, const char *id,
                       GError **errp)
{
    SecretProps p = { 0 };
    GError *err = NULL;
    json_t *loaded = json_object_get(args, "loaded");
    const char *key;
    GBytes *bytes;

    if (loaded) {
        if (from_json ? !json_is_boolean(loaded)
                      : !(json_is_string(loaded) &&
                          (!strcmp(json_string_value(loaded), "on") ||
                           !strcmp(json_string_value(loaded), "off")))) {
            error_setg(&err, from_json ?
                       "Invalid parameter type for 'loaded', expected: boolean"
                       : "Parameter 'loaded' expects 'on' or 'off'");
            goto fail;
        }
        json_object_del(args, "loaded");
    }
    if (!take_str(args, "format", from_json, &p.format, &err) ||
        !take_str(args, "keyid", from_json, &p.keyid, &err) ||
        !take_str(args, "iv", from_json, &p.iv, &err) ||
        !take_str(args, "data", from_json, &p.data, &err) ||
        !take_str(args, "file", from_json, &p.file, &err)) {
        goto fail;
    }
    if (p.format && strcmp(p.format, "raw") && strcmp(p.format, "base64")) {
        error_setg(&err, "Parameter 'format' does not accept value '%s'",
                   p.format);
        goto fail;
    }
    /* The top-level key: a nested one is reported as 'key.*'. */
    key = json_object_iter(args) ? json_object_iter_key(json_object_iter(args))
                                 : NULL;
    if (key) {
        json_t *v = json_object_get(args, key);
        if (!from_json && json_is_object(v)) {
            error_setg(&err, "Parameters '%s.*' are unexpected", key);
        } else {
            error_setg(&err, "Parameter '%s' is unexpected", key);
        }
        goto fail;
    }
    if (secrets && g_hash_table_contains(secrets, id)) {
        error_setg(&err, "attempt to add duplicate property '%s' to object "
                   "(type 'container')", id);
        goto fail;
    }
    if (loaded) {
        error_setg(&err, "Property 'secret.loaded' is not writable");
        goto fail;
    }
    bytes = secret_load(&p, &err);
    secret_props_free(&p);
    if (!bytes) {
        goto fail;
    }
    if (!secrets) {
        secrets = g_hash_table_new_full(g_str_hash, g_str_equal, g_free,
                                        (GDestroyNotify)g_bytes_unref);
        /* Encrypted images ask for their passphrase by id. */
        crypto_secret_set_lookup(tool_secret_lookup);
    }
    g_hash_table_insert(secrets, g_strdup(id), bytes);
    return true;

fail:
    secret_props_free(&p);
    g_propagate_error(errp, err);
    return false;
}

void tool_object_process_cmdline(const char *arg)
{
    GError *err = NULL;
    bool from_json = arg[0] == '{';
    json_t *args;
    char *type = NULL;
    char *id = NULL;

    if (from_json) {
        args = opts_parse_json(arg, &err);
        if (!args) {
            fail(err);
        }
        if (!json_is_object(args)) {
            json_decref(args);
            error_setg(&err, "Option must be a JSON object");
            fail(err);
        }
    } else {
        if (wants_help(arg, &type)) {
            if (type && !strcmp(type, "secret")) {
                print_secret_help_and_exit();
            }
            print_types_and_exit();
        }
        g_free(type);
        type = NULL;
        args = opts_parse_keyval(arg, "qom-type", &err);
        if (!args) {
            fail(err);
        }
    }

    if (!take_str(args, "qom-type", from_json, &type, &err)) {
        fail(err);
    }
    if (!type) {
        error_setg(&err, "Parameter 'qom-type' is missing");
        fail(err);
    }
    if (strcmp(type, "secret")) {
        error_setg(&err, "Parameter 'qom-type' does not accept value '%s'",
                   type);
        fail(err);
    }
    if (!take_str(args, "id", from_json, &id, &err)) {
        fail(err);
    }
    if (!id) {
        error_setg(&err, "Parameter 'id' is missing");
        fail(err);
    }
    if (!tool_id_wellformed(id)) {
        error_setg(&err, "Parameter 'id' expects an identifier\n"
                   "Identifiers consist of letters, digits, '-', '.', '_', "
                   "starting with a letter.");
        fail(err);
    }
    if (!secret_add(args, from_json, id, &err)) {
        json_decref(args);
        g_free(type);
        g_free(id);
        fail(err);
    }
    json_decref(args);
    g_free(type);
    g_free(id);
}

const uint8_t *tool_secret_lookup(const char *id, size_t *len)
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

void tool_objects_cleanup(void)
{
    if (secrets) {
        g_hash_table_destroy(secrets);
        secrets = NULL;
    }
}
