/*
 * --object for strata-img and strata-io.  Two types exist there:
 * "secret" (passwords and keys that drivers look up by id; loading them is
 * the library's secret_object_add, shared with strata-daemon) and
 * "throttle-group" (object-throttle.c: groups that throttle nodes join).
 * Errors use QEMU's words so that scripts see the same messages.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "strata/error.h"
#include "strata/opts.h"
#include "strata/secret.h"
#include "strata/id.h"
#include "tool-common.h"
#include "object-throttle.h"

static G_NORETURN void print_types_and_exit(void)
{
    printf("List of user creatable objects:\n");
    printf("  secret\n");
    printf("  throttle-group\n");
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

/* false with *errp set: the caller frees what it holds, then exits. */
static bool secret_add(json_t *args, bool from_json, const char *id,
                       GError **errp)
{
    SecretProps p = { 0 };
    GError *err = NULL;
    json_t *loaded = json_object_get(args, "loaded");
    const char *key;

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
    if (secret_object_exists(id) || tool_throttle_group_exists(id)) {
        error_setg(&err, "attempt to add duplicate property '%s' to object "
                   "(type 'container')", id);
        goto fail;
    }
    if (loaded) {
        error_setg(&err, "Property 'secret.loaded' is not writable");
        goto fail;
    }
    SecretSpec spec = {
        .data = p.data, .file = p.file, .keyid = p.keyid, .iv = p.iv,
        .base64 = p.format && !strcmp(p.format, "base64"),
    };
    if (!secret_object_add(id, &spec, &err)) {
        goto fail;
    }
    secret_props_free(&p);
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
            if (type && !strcmp(type, "throttle-group")) {
                tool_throttle_group_help();
                exit(0);
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
    if (strcmp(type, "secret") && strcmp(type, "throttle-group")) {
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
    if (!id_wellformed(id)) {
        error_setg(&err, "Parameter 'id' expects an identifier\n"
                   "Identifiers consist of letters, digits, '-', '.', '_', "
                   "starting with a letter.");
        fail(err);
    }
    if (!strcmp(type, "throttle-group")
        ? !tool_throttle_group_add(args, from_json, id, &err)
        : !secret_add(args, from_json, id, &err)) {
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
    return secret_object_lookup(id, len);
}

void tool_objects_cleanup(void)
{
    secret_objects_clear();
    tool_throttle_groups_clear();
}
