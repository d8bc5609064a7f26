/* Option trees: dotted keys to nested jansson objects, and typed takers. */
#include <errno.h>
#include <stdlib.h>
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

static void flatten_value(json_t *dst, json_t *v, const char *key);

static void flatten_into(json_t *dst, json_t *src, const char *prefix)
{
    const char *k;
    json_t *v;
    json_object_foreach(src, k, v) {
        char *full = prefix ? g_strconcat(prefix, ".", k, NULL) : g_strdup(k);
        flatten_value(dst, v, full);
        g_free(full);
    }
}

/* Objects become "a.b" keys and arrays "a.0", "a.1" (QEMU's qdict_flatten). */
static void flatten_value(json_t *dst, json_t *v, const char *key)
{
    if (json_is_object(v)) {
        flatten_into(dst, v, key);
    } else if (json_is_array(v)) {
        size_t i;
        json_t *e;
        json_array_foreach(v, i, e) {
            char *full = g_strdup_printf("%s.%zu", key, i);
            flatten_value(dst, e, full);
            g_free(full);
        }
    } else {
        json_object_set(dst, key, v);
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
        /* QEMU prints a number it reads as text with 17 digits */
        return g_strdup_printf("%.17g", json_real_value(v));
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

/*
 * Values from the command line and from "json:" filenames are all treated
 * as text, as QEMU does, so {"read-only": 1} gets the same message as
 * read-only=1.  Real JSON booleans and integers are taken as they are.
 */
static const char size_hint[] =
    "\nOptional suffix k, M, G, T, P or E means kilo-, mega-, giga-, tera-, "
    "peta-\nand exabytes, respectively.";

static bool opts_scalar(json_t *obj, const char *key, json_t **v, char **text,
                        GError **errp)
{
    *v = json_object_get(obj, key);
    *text = NULL;
    if (!*v) {
        return true;
    }
    if (json_is_object(*v) || json_is_array(*v)) {
        /* Not a value for this key: left for the unknown-option check,
         * which names it flattened ("size.0"), as QEMU does. */
        *v = NULL;
        return true;
    }
    *text = opts_get_str(obj, key);
    return true;
}

bool opts_take_bool(json_t *obj, const char *key, bool *out, GError **errp)
{
    json_t *v;
    char *t;
    if (!opts_scalar(obj, key, &v, &t, errp)) {
        return false;
    }
    if (!v) {
        return true;
    }
    bool ok = true;
    if (json_is_boolean(v)) {
        *out = json_is_true(v);
    } else if (!strcmp(t, "on") || !strcmp(t, "yes") || !strcmp(t, "true") ||
               !strcmp(t, "y")) {
        *out = true;
    } else if (!strcmp(t, "off") || !strcmp(t, "no") || !strcmp(t, "false") ||
               !strcmp(t, "n")) {
        *out = false;
    } else {
        error_setg(errp, "Parameter '%s' expects 'on' or 'off'", key);
        ok = false;
    }
    g_free(t);
    if (ok) {
        json_object_del(obj, key);
    }
    return ok;
}

bool opts_take_size(json_t *obj, const char *key, uint64_t *out, GError **errp)
{
    json_t *v;
    char *t;
    if (!opts_scalar(obj, key, &v, &t, errp)) {
        return false;
    }
    if (!v) {
        return true;
    }
    uint64_t val;
    bool ok = true;
    if (json_is_integer(v) && json_integer_value(v) >= 0) {
        val = (uint64_t)json_integer_value(v);
    } else if (parse_size(t, 'B', &val) < 0) {
        error_setg(errp, "Parameter '%s' expects a non-negative number below "
                   "2^64%s", key, size_hint);
        ok = false;
    }
    g_free(t);
    if (ok) {
        *out = val;
        json_object_del(obj, key);
    }
    return ok;
}

bool opts_take_int(json_t *obj, const char *key, int64_t *out, GError **errp)
{
    json_t *v;
    char *t;
    if (!opts_scalar(obj, key, &v, &t, errp)) {
        return false;
    }
    if (!v) {
        return true;
    }
    int64_t val;
    bool ok = true;
    if (json_is_integer(v)) {
        val = json_integer_value(v);
    } else if (parse_int64(t, &val) < 0) {
        error_setg(errp, "Parameter '%s' expects a number", key);
        ok = false;
    }
    g_free(t);
    if (ok) {
        *out = val;
        json_object_del(obj, key);
    }
    return ok;
}

/*
 * QEMU's "number" options go through strtoull() in any base: "0x10" is 16
 * and a minus sign wraps around ("-1" is 2^64-1), so range checks on the
 * result are what refuse negative values.
 */
bool opts_take_number(json_t *obj, const char *key, uint64_t *out,
                      GError **errp)
{
    json_t *v;
    char *t;
    if (!opts_scalar(obj, key, &v, &t, errp)) {
        return false;
    }
    if (!v) {
        return true;
    }
    if (!t) {
        error_setg(errp, "Parameter '%s' expects a number", key);
        return false;
    }
    char *end;
    errno = 0;
    unsigned long long val = strtoull(t, &end, 0);
    bool ok = false;
    if (end == t || *end) {
        error_setg(errp, "Parameter '%s' expects a number", key);
    } else if (errno == ERANGE) {
        error_setg(errp, "Value '%s' is too large for parameter '%s'", t, key);
    } else {
        ok = true;
        *out = val;
        json_object_del(obj, key);
    }
    g_free(t);
    return ok;
}

bool opts_take_enum(json_t *obj, const char *key, const char *const *names,
                    int *out, GError **errp)
{
    json_t *v;
    char *t;
    if (!opts_scalar(obj, key, &v, &t, errp)) {
        return false;
    }
    if (!v) {
        return true;
    }
    for (int i = 0; names[i]; i++) {
        if (!strcmp(names[i], t)) {
            *out = i;
            json_object_del(obj, key);
            g_free(t);
            return true;
        }
    }
    error_setg(errp, "Parameter '%s' does not accept value '%s'", key, t);
    g_free(t);
    return false;
}

char *opts_first_key(json_t *obj)
{
    json_t *flat = opts_flatten(obj);
    void *it = json_object_iter(flat);
    char *key = it ? g_strdup(json_object_iter_key(it)) : NULL;
    json_decref(flat);
    return key;
}

/* "0", "12": a list index in dotted keys (as QEMU's keyval reads them). */
static bool key_is_index(const char *k, size_t *idx)
{
    char *end;
    if (!g_ascii_isdigit(*k)) {
        return false;
    }
    errno = 0;
    unsigned long long v = strtoull(k, &end, 10);
    if (*end || errno || v > INT32_MAX) {
        return false;
    }
    *idx = v;
    return true;
}

static json_t *listify(json_t *obj, GString *prefix, GError **errp)
{
    const char *k;
    json_t *v;
    bool has_index = false, has_member = false;
    size_t idx, n = 0;

    json_object_foreach(obj, k, v) {
        if (key_is_index(k, &idx)) {
            has_index = true;
        } else {
            has_member = true;
        }
        n++;
        if (json_is_object(v)) {
            size_t len = prefix->len;
            g_string_append_printf(prefix, "%s.", k);
            json_t *nv = listify(v, prefix, errp);
            g_string_truncate(prefix, len);
            if (!nv) {
                return NULL;
            }
            if (nv != v) {
                json_object_set_new(obj, k, nv);
            }
        }
    }
    if (has_index && has_member) {
        error_setg(errp, "Parameters '%s*' used inconsistently", prefix->str);
        return NULL;
    }
    if (!has_index) {
        return obj;
    }
    /* Indexes 0..n-1 each once, or the first gap is reported. */
    json_t **elt = g_new0(json_t *, n);
    json_object_foreach(obj, k, v) {
        key_is_index(k, &idx);
        if (idx < n) {
            elt[idx] = v;
        }
    }
    json_t *list = json_array();
    for (size_t i = 0; i < n; i++) {
        if (!elt[i]) {
            error_setg(errp, "Parameter '%s%zu' missing", prefix->str, i);
            json_decref(list);
            g_free(elt);
            return NULL;
        }
        json_array_append(list, elt[i]);
    }
    g_free(elt);
    return list;
}

bool opts_keyval_listify(json_t *obj, GError **errp)
{
    GString *prefix = g_string_new(NULL);
    json_t *r = listify(obj, prefix, errp);
    g_string_free(prefix, TRUE);
    if (r && r != obj) {
        /* The top level is always an object: "0=x" names no list. */
        json_decref(r);
        error_setg(errp, "Parameters '*' used inconsistently");
        return false;
    }
    return r != NULL;
}
