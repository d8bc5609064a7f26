/* Option trees: dotted keys to nested jansson objects, and typed takers. */
#include <errno.h>
#include <string.h>
#include "strata/error.h"
#include "strata/opts.h"
#include "strata/units.h"

/* Set obj[a][b][c] = val for key "a.b.c", creating objects on the way. */
bool opts_set_dotted(json_t *obj, const char *key, json_t *val, GError **errp)
{
    char **parts = g_strsplit(key, ".", -1);
    json_t *cur = obj;
    bool ok = false;
    GString *path = g_string_new(NULL);
    int n = g_strv_length(parts);
    for (int i = 0; i < n; i++) {
        if (!*parts[i]) {
            error_setg(errp, "Invalid parameter '%s'", key);
            goto out;
        }
        if (i) {
            g_string_append_c(path, '.');
        }
        g_string_append(path, parts[i]);
        json_t *next = json_object_get(cur, parts[i]);
        if (i == n - 1) {
            if (next && json_is_object(next)) {
                error_setg(errp, "Parameters '%s.*' used inconsistently", path->str);
                goto out;
            }
            json_object_set(cur, parts[i], val);
            break;
        }
        if (!next) {
            next = json_object();
            json_object_set_new(cur, parts[i], next);
        } else if (!json_is_object(next)) {
            error_setg(errp, "Parameters '%s.*' used inconsistently", path->str);
            goto out;
        }
        cur = next;
    }
    ok = true;
out:
    json_decref(val);
    g_string_free(path, TRUE);
    g_strfreev(parts);
    return ok;
}

json_t *opts_parse_keyval(const char *str, const char *implied_key,
                          GError **errp)
{
    json_t *obj = json_object();
    const char *p = str;
    bool first = true;
    while (*p) {
        /* Key up to '=' or ','; value up to an unescaped ','. */
        const char *k = p;
        while (*p && *p != '=' && *p != ',') {
            p++;
        }
        char *key;
        GString *val = g_string_new(NULL);
        if (*p != '=') {
            if (!(first && implied_key)) {
                char *bad = g_strndup(k, p - k);
                error_setg(errp, "Expected '=' after parameter '%s'", bad);
                g_free(bad);
                g_string_free(val, TRUE);
                json_decref(obj);
                return NULL;
            }
            /* Implied key: the whole element (with ",," escapes) is the value. */
            p = k;
            key = g_strdup(implied_key);
        } else {
            key = g_strndup(k, p - k);
            p++;
        }
        while (*p) {
            if (*p == ',') {
                if (p[1] == ',') {
                    g_string_append_c(val, ',');
                    p += 2;
                    continue;
                }
                break;
            }
            g_string_append_c(val, *p++);
        }
        if (*p == ',') {
            p++;
        }
        first = false;
        if (!*key) {
            error_setg(errp, "Invalid parameter ''");
            g_free(key);
            g_string_free(val, TRUE);
            json_decref(obj);
            return NULL;
        }
        bool ok = opts_set_dotted(obj, key, json_string(val->str), errp);
        g_free(key);
        g_string_free(val, TRUE);
        if (!ok) {
            json_decref(obj);
            return NULL;
        }
    }
    return obj;
}

static void flatten_into(json_t *dst, json_t *src, const char *prefix)
{
    const char *k;
    json_t *v;
    json_object_foreach(src, k, v) {
        char *full = prefix ? g_strconcat(prefix, ".", k, NULL) : g_strdup(k);
        if (json_is_object(v)) {
            flatten_into(dst, v, full);
        } else {
            json_object_set(dst, full, v);
        }
        g_free(full);
    }
}

json_t *opts_flatten(json_t *obj)
{
    json_t *out = json_object();
    flatten_into(out, obj, NULL);
    return out;
}

json_t *opts_take_subtree(json_t *obj, const char *prefix)
{
    json_t *sub = json_object_get(obj, prefix);
    if (sub && json_is_object(sub)) {
        json_incref(sub);
        json_object_del(obj, prefix);
        return sub;
    }
    /* Flattened "prefix.key" entries (from JSON filenames or code). */
    size_t plen = strlen(prefix);
    json_t *out = NULL;
    const char *k;
    json_t *v;
    void *tmp;
    json_object_foreach_safe(obj, tmp, k, v) {
        if (strncmp(k, prefix, plen) == 0 && k[plen] == '.') {
            if (!out) {
                out = json_object();
            }
            opts_set_dotted(out, k + plen + 1, json_incref(v), NULL);
            json_object_del(obj, k);
        }
    }
    return out;
}

char *opts_get_str(json_t *obj, const char *key)
{
    json_t *v = json_object_get(obj, key);
    if (!v) {
        return NULL;
    }
    if (json_is_string(v)) {
        return g_strdup(json_string_value(v));
    }
    if (json_is_integer(v)) {
        return g_strdup_printf("%" JSON_INTEGER_FORMAT, json_integer_value(v));
    }
    if (json_is_boolean(v)) {
        return g_strdup(json_is_true(v) ? "on" : "off");
    }
    if (json_is_real(v)) {
        return g_strdup_printf("%g", json_real_value(v));
    }
    return NULL;
}

bool opts_take_str(json_t *obj, const char *key, char **out, GError **errp)
{
    json_t *v = json_object_get(obj, key);
    if (!v) {
        return true;
    }
    char *s = opts_get_str(obj, key);
    if (!s) {
        error_setg(errp, "Invalid parameter type for '%s', expected: string", key);
        return false;
    }
    json_object_del(obj, key);
    g_free(*out);
    *out = s;
    return true;
}

bool opts_take_bool(json_t *obj, const char *key, bool *out, GError **errp)
{
    json_t *v = json_object_get(obj, key);
    if (!v) {
        return true;
    }
    if (json_is_boolean(v)) {
        *out = json_is_true(v);
    } else if (json_is_string(v)) {
        const char *s = json_string_value(v);
        if (!strcmp(s, "on") || !strcmp(s, "yes") || !strcmp(s, "true") ||
            !strcmp(s, "y")) {
            *out = true;
        } else if (!strcmp(s, "off") || !strcmp(s, "no") ||
                   !strcmp(s, "false") || !strcmp(s, "n")) {
            *out = false;
        } else {
            error_setg(errp, "Parameter '%s' expects 'on' or 'off'", key);
            return false;
        }
    } else {
        error_setg(errp, "Invalid parameter type for '%s', expected: boolean", key);
        return false;
    }
    json_object_del(obj, key);
    return true;
}

bool opts_take_size(json_t *obj, const char *key, uint64_t *out, GError **errp)
{
    json_t *v = json_object_get(obj, key);
    if (!v) {
        return true;
    }
    if (json_is_integer(v)) {
        if (json_integer_value(v) < 0) {
            error_setg(errp, "Parameter '%s' expects a non-negative number below 2^64", key);
            return false;
        }
        *out = (uint64_t)json_integer_value(v);
    } else if (json_is_string(v)) {
        uint64_t val;
        if (parse_size(json_string_value(v), 'B', &val) < 0) {
            /* The hint after the newline is printed by tools, not sent by QMP. */
            error_setg(errp, "Parameter '%s' expects a non-negative number "
                       "below 2^64\nOptional suffix k, M, G, T, P or E means "
                       "kilo-, mega-, giga-, tera-, peta-\nand exabytes, "
                       "respectively.", key);
            return false;
        }
        *out = val;
    } else {
        error_setg(errp, "Invalid parameter type for '%s', expected: integer", key);
        return false;
    }
    json_object_del(obj, key);
    return true;
}

bool opts_take_int(json_t *obj, const char *key, int64_t *out, GError **errp)
{
    json_t *v = json_object_get(obj, key);
    if (!v) {
        return true;
    }
    if (json_is_integer(v)) {
        *out = json_integer_value(v);
    } else if (json_is_string(v)) {
        int64_t val;
        if (parse_int64(json_string_value(v), &val) < 0) {
            error_setg(errp, "Parameter '%s' expects integer", key);
            return false;
        }
        *out = val;
    } else {
        error_setg(errp, "Invalid parameter type for '%s', expected: integer", key);
        return false;
    }
    json_object_del(obj, key);
    return true;
}

bool opts_take_enum(json_t *obj, const char *key, const char *const *names,
                    int *out, GError **errp)
{
    json_t *v = json_object_get(obj, key);
    if (!v) {
        return true;
    }
    if (!json_is_string(v)) {
        error_setg(errp, "Invalid parameter type for '%s', expected: string", key);
        return false;
    }
    const char *s = json_string_value(v);
    for (int i = 0; names[i]; i++) {
        if (!strcmp(names[i], s)) {
            *out = i;
            json_object_del(obj, key);
            return true;
        }
    }
    error_setg(errp, "Parameter '%s' does not accept value '%s'", key, s);
    return false;
}

const char *opts_first_key(json_t *obj)
{
    void *it = json_object_iter(obj);
    return it ? json_object_iter_key(it) : NULL;
}
