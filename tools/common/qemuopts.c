/*
 * QemuOpts-style option strings, as qemu-io's "open -o", "reopen -o" and
 * --image-opts read them.  This is not the keyval syntax of --blockdev:
 * bare words are booleans, nothing is nested, and every value is a string.
 */
#include <string.h>
#include "strata/error.h"
#include "strata/opts.h"
#include "strata/id.h"
#include "tool-common.h"

const char *tool_qemuopts_value(const char *p, char **value)
{
    GString *s = g_string_new(NULL);

    while (*p) {
        if (*p == ',') {
            if (p[1] != ',') {
                break;
            }
            p++;
        }
        g_string_append_c(s, *p);
        p++;
    }
    *value = g_string_free(s, false);
    return p;
}

static bool is_help_option(const char *name)
{
    return !strcmp(name, "help") || !strcmp(name, "?");
}

const char *tool_qemuopts_next(const char *params, bool warn_on_flag,
                               char **name, char **value)
{
    size_t len = strcspn(params, "=,");
    const char *p;

    if (params[len] != '=') {
        const char *prefix = "";
        bool is_help = false;

        *name = g_strndup(params, len);
        p = params + len;
        if (g_str_has_prefix(*name, "no")) {
            memmove(*name, *name + 2, strlen(*name + 2) + 1);
            *value = g_strdup("off");
            prefix = "no";
        } else {
            *value = g_strdup("on");
            is_help = is_help_option(*name);
        }
        if (!is_help && warn_on_flag) {
            tool_warn("short-form boolean option '%s%s' deprecated", prefix,
                      *name);
            if (!strcmp(*name, "delay")) {
                fprintf(stderr, "Please use nodelay=%s instead\n",
                        prefix[0] ? "on" : "off");
            } else {
                fprintf(stderr, "Please use %s=%s instead\n", *name, *value);
            }
        }
    } else {
        *name = g_strndup(params, len);
        p = tool_qemuopts_value(params + len + 1, value);
    }
    if (*p == ',') {
        p++;
    }
    return p;
}

/* The value of the first "id" element, without warnings, or NULL. */
static char *find_id(const char *params)
{
    const char *p = params;

    while (*p) {
        char *name, *value;

        p = tool_qemuopts_next(p, false, &name, &value);
        bool is_id = !strcmp(name, "id");
        g_free(name);
        if (is_id) {
            return value;
        }
        g_free(value);
    }
    return NULL;
}

bool tool_qemuopts_parse(json_t **dict, const char *params, bool merge_list,
                         GError **errp)
{
    char *id = find_id(params);
    const char *p = params;

    if (id) {
        if (merge_list) {
            error_setg(errp, "Invalid parameter 'id'");
            g_free(id);
            return false;
        }
        if (!id_wellformed(id)) {
            error_setg(errp, "Parameter 'id' expects an identifier\n"
                       "Identifiers consist of letters, digits, '-', '.', "
                       "'_', starting with a letter.");
            g_free(id);
            return false;
        }
    }
    if (!*dict) {
        *dict = json_object();
    }
    if (id) {
        json_object_set_new_nocheck(*dict, "id", json_string_nocheck(id));
        g_free(id);
    }
    while (*p) {
        char *name, *value;

        p = tool_qemuopts_next(p, true, &name, &value);
        if (strcmp(name, "id")) {
            json_object_set_new_nocheck(*dict, name,
                                        json_string_nocheck(value));
        }
        g_free(name);
        g_free(value);
    }
    return true;
}

json_t *tool_qemuopts_nest(json_t *flat)
{
    json_t *out = json_object();
    const char *key;
    json_t *v;

    json_object_foreach(flat, key, v) {
        char **parts = g_strsplit(key, ".", -1);
        bool nestable = g_strv_length(parts) > 1;

        for (int i = 0; parts[i]; i++) {
            nestable = nestable && *parts[i];
        }
        g_strfreev(parts);
        json_t *old = json_object_get(out, key);
        if (!nestable && old && json_is_object(old)) {
            /*
             * "file=foo" after "file.driver=...": keep both, the nested
             * keys flattened again, so that the block layer can say that a
             * reference cannot come with options (QEMU's message).
             */
            json_t *flat_old = opts_flatten(old);
            const char *k2;
            json_t *v2;
            json_object_foreach(flat_old, k2, v2) {
                char *full = g_strconcat(key, ".", k2, NULL);
                json_object_set_nocheck(out, full, v2);
                g_free(full);
            }
            json_decref(flat_old);
        }
        if (!nestable || !opts_set_dotted(out, key, json_incref(v), NULL)) {
            json_object_set_nocheck(out, key, v);
        }
    }
    json_decref(flat);
    return out;
}
