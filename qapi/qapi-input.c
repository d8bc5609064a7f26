/*
 * The runtime under the generated JSON -> C readers: error names built the
 * way QEMU's input visitor builds them, and the scalar conversions of both
 * input modes (qapi-runtime.h explains the modes).
 */
#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include "qapi-runtime.h"
#include "strata/error.h"
#include "strata/opts.h"
#include "strata/units.h"

/* Error names are formatted into a GError right away: one buffer suffices. */
static __thread GString *errname;

void qapi_in_init(QapiIn *root, bool keyval)
{
    memset(root, 0, sizeof(*root));
    root->keyval = keyval;
}

void qapi_in_push(QapiIn *in, const QapiIn *up, const char *name, json_t *obj)
{
    memset(in, 0, sizeof(*in));
    in->up = up;
    in->name = name;
    in->obj = obj;
    in->keyval = up->keyval;
    in->used = in->used_inline;
    in->cap_used = G_N_ELEMENTS(in->used_inline);
}

void qapi_in_pop(QapiIn *in)
{
    if (in->used != in->used_inline) {
        g_free(in->used);
    }
    in->used = NULL;
}

/*
 * From the innermost container outwards: an object adds ".member", an
 * array "[i]" (".i" in keyval mode, where lists come from "a.0" keys); the
 * root's own name is never part of it.
 */
const char *qapi_in_full_name(const QapiIn *in, const char *name)
{
    if (!errname) {
        errname = g_string_new(NULL);
    }
    g_string_truncate(errname, 0);
    for (const QapiIn *c = in; c && c->obj; c = c->up) {
        if (json_is_object(c->obj)) {
            g_string_prepend(errname, name ? name : "<anonymous>");
            g_string_prepend_c(errname, '.');
        } else {
            char buf[32];
            snprintf(buf, sizeof(buf), c->keyval ? ".%zu" : "[%zu]", c->index);
            g_string_prepend(errname, buf);
        }
        name = c->name;
    }
    if (name) {
        g_string_prepend(errname, name);
    } else if (errname->str[0] == '.') {
        g_string_erase(errname, 0, 1);
    } else if (!errname->str[0]) {
        return "<anonymous>";
    }
    return errname->str;
}

json_t *qapi_in_member(QapiIn *in, const char *key)
{
    const char *k;
    json_t *v;
    /* Use the object's own key string: it outlives this frame. */
    void *iter = json_object_iter_at(in->obj, key);
    if (!iter) {
        return NULL;
    }
    k = json_object_iter_key(iter);
    v = json_object_iter_value(iter);
    if (in->n_used == in->cap_used) {
        size_t cap = in->cap_used * 2;
        const char **n = g_new(const char *, cap);
        memcpy(n, in->used, in->n_used * sizeof(*n));
        if (in->used != in->used_inline) {
            g_free(in->used);
        }
        in->used = n;
        in->cap_used = cap;
    }
    in->used[in->n_used++] = k;
    return v;
}

bool qapi_in_missing(const QapiIn *in, const char *key, GError **errp)
{
    error_setg(errp, "Parameter '%s' is missing", qapi_in_full_name(in, key));
    return false;
}

bool qapi_in_check_struct(const QapiIn *in, GError **errp)
{
    const char *k;
    json_t *v;
    json_object_foreach(in->obj, k, v) {
        bool seen = false;
        for (size_t i = 0; i < in->n_used && !seen; i++) {
            seen = in->used[i] == k || !strcmp(in->used[i], k);
        }
        if (!seen) {
            error_setg(errp, "Parameter '%s' is unexpected",
                       qapi_in_full_name(in, k));
            return false;
        }
    }
    return true;
}

static bool type_error(const QapiIn *in, const char *name, const char *what,
                       GError **errp)
{
    error_setg(errp, "Invalid parameter type for '%s', expected: %s",
               qapi_in_full_name(in, name), what);
    return false;
}

static bool value_error(const QapiIn *in, const char *name, const char *what,
                        GError **errp)
{
    error_setg(errp, "Parameter '%s' expects %s", qapi_in_full_name(in, name),
               what);
    return false;
}

bool qapi_in_is_object(const QapiIn *in, const char *name, json_t *v,
                       GError **errp)
{
    return json_is_object(v) || type_error(in, name, "object", errp);
}

bool qapi_in_is_array(const QapiIn *in, const char *name, json_t *v,
                      GError **errp)
{
    return json_is_array(v) || type_error(in, name, "array", errp);
}

/* Keyval mode: the scalar's text, or QEMU's message for a non-string. */
static const char *keyval_str(const QapiIn *in, const char *name, json_t *v,
                              GError **errp)
{
    if (json_is_string(v)) {
        return json_string_value(v);
    }
    if (json_is_object(v) || json_is_array(v)) {
        error_setg(errp, "Parameters '%s.*' are unexpected",
                   qapi_in_full_name(in, name));
    } else {
        error_setg(errp, "Internal error: parameter %s invalid",
                   qapi_in_full_name(in, name));
    }
    return NULL;
}

bool qapi_read_str(const QapiIn *in, const char *name, json_t *v, char **out,
                 GError **errp)
{
    if (in->keyval) {
        const char *s = keyval_str(in, name, v, errp);
        if (!s) {
            return false;
        }
        *out = g_strdup(s);
        return true;
    }
    if (!json_is_string(v)) {
        return type_error(in, name, "string", errp);
    }
    *out = g_strndup(json_string_value(v), json_string_length(v));
    return true;
}

/* The width check reports the bare member name, as QEMU's visitor core does. */
static bool range_error(const char *name, const char *ctype, GError **errp)
{
    error_setg(errp, "Parameter '%s' expects %s", name ? name : "null", ctype);
    return false;
}

bool qapi_read_int(const QapiIn *in, const char *name, json_t *v,
                 int64_t min, int64_t max, const char *ctype, int64_t *out,
                 GError **errp)
{
    int64_t val;
    if (in->keyval) {
        const char *s = keyval_str(in, name, v, errp);
        if (!s) {
            return false;
        }
        if (parse_int64(s, &val) < 0) {
            return value_error(in, name, "integer", errp);
        }
    } else {
        if (!json_is_integer(v)) {
            return type_error(in, name, "integer", errp);
        }
        val = json_integer_value(v);
    }
    if (val < min || val > max) {
        return range_error(name, ctype, errp);
    }
    *out = val;
    return true;
}

/* QEMU's unsigned parse lets a minus sign wrap around, as strtoull does. */
static bool keyval_uint(const char *s, uint64_t *out)
{
    char *end;
    if (!*s) {
        return false;
    }
    errno = 0;
    unsigned long long v = strtoull(s, &end, 0);
    if (errno || end == s || *end) {
        return false;
    }
    *out = v;
    return true;
}

static bool big_uint(json_t *v, uint64_t *out)
{
    const char *s = json_string_value(v);
    if (!s || !*s || strspn(s, "0123456789") != strlen(s) || !keyval_uint(s, out)) {
        return false;
    }
    return *out > INT64_MAX;
}

bool qapi_read_uint(const QapiIn *in, const char *name, json_t *v,
                  uint64_t max, const char *ctype, uint64_t *out,
                  GError **errp)
{
    uint64_t val;
    if (in->keyval) {
        const char *s = keyval_str(in, name, v, errp);
        if (!s) {
            return false;
        }
        if (!keyval_uint(s, &val)) {
            return value_error(in, name, "integer", errp);
        }
    } else if (json_is_integer(v)) {
        /* Negative numbers wrap: QEMU keeps accepting them. */
        val = (uint64_t)json_integer_value(v);
    } else if (big_uint(v, &val)) {
        /* opts_parse_json() hands integers above INT64_MAX over as digits. */
    } else {
        return value_error(in, name, "uint64", errp);
    }
    if (val > max) {
        return range_error(name, ctype, errp);
    }
    *out = val;
    return true;
}

bool qapi_read_size(const QapiIn *in, const char *name, json_t *v,
                  uint64_t *out, GError **errp)
{
    if (!in->keyval) {
        return qapi_read_uint(in, name, v, UINT64_MAX, "uint64", out, errp);
    }
    const char *s = keyval_str(in, name, v, errp);
    if (!s) {
        return false;
    }
    if (strtosz(s, NULL, out, NULL) < 0) {
        return value_error(in, name, "size", errp);
    }
    return true;
}

bool qapi_read_number(const QapiIn *in, const char *name, json_t *v,
                    double *out, GError **errp)
{
    if (in->keyval) {
        const char *s = keyval_str(in, name, v, errp);
        char *end;
        if (!s) {
            return false;
        }
        errno = 0;
        double d = strtod(s, &end);
        if (!*s || *end || errno || !isfinite(d)) {
            return type_error(in, name, "number", errp);
        }
        *out = d;
        return true;
    }
    if (!json_is_number(v)) {
        return type_error(in, name, "number", errp);
    }
    *out = json_number_value(v);
    return true;
}

static bool bool_word(const char *s, bool *out)
{
    static const char *const yes[] = { "on", "yes", "true", "y" };
    static const char *const no[] = { "off", "no", "false", "n" };
    for (size_t i = 0; i < G_N_ELEMENTS(yes); i++) {
        if (!strcmp(s, yes[i])) {
            *out = true;
            return true;
        }
        if (!strcmp(s, no[i])) {
            *out = false;
            return true;
        }
    }
    return false;
}

bool qapi_read_bool(const QapiIn *in, const char *name, json_t *v, bool *out,
                  GError **errp)
{
    if (in->keyval) {
        const char *s = keyval_str(in, name, v, errp);
        if (!s) {
            return false;
        }
        if (!bool_word(s, out)) {
            return value_error(in, name, "'on' or 'off'", errp);
        }
        return true;
    }
    if (!json_is_boolean(v)) {
        return type_error(in, name, "boolean", errp);
    }
    *out = json_is_true(v);
    return true;
}

bool qapi_read_any(const QapiIn *in, const char *name, json_t *v, json_t **out,
                 GError **errp)
{
    *out = json_incref(v);
    return true;
}

bool qapi_read_null(const QapiIn *in, const char *name, json_t *v, json_t **out,
                  GError **errp)
{
    if (!json_is_null(v)) {
        return type_error(in, name, "null", errp);
    }
    *out = json_null();
    return true;
}

int qapi_enum_parse(const char *const *names, int n, const char *s)
{
    for (int i = 0; s && i < n; i++) {
        if (!strcmp(names[i], s)) {
            return i;
        }
    }
    return -1;
}

bool qapi_read_enum(const QapiIn *in, const char *name, json_t *v,
                  const char *const *names, int n, int *out, GError **errp)
{
    char *s;
    if (!qapi_read_str(in, name, v, &s, errp)) {
        return false;
    }
    int i = qapi_enum_parse(names, n, s);
    if (i < 0) {
        error_setg(errp, "Parameter '%s' does not accept value '%s'",
                   name ? name : "null", s);
        g_free(s);
        return false;
    }
    g_free(s);
    *out = i;
    return true;
}

void qapi_in_alternate_error(const char *name, const char *type_name,
                             GError **errp)
{
    error_setg(errp, "Invalid parameter type for '%s', expected: %s",
               name ? name : "null", type_name);
}

bool qapi_in_keyval_looks(const QapiIn *in, json_t *v, const char *json_type)
{
    const char *s;
    int64_t i;
    bool b;
    char *end;
    if (!in->keyval || !json_is_string(v)) {
        return false;
    }
    s = json_string_value(v);
    if (!strcmp(json_type, "int")) {
        return parse_int64(s, &i) == 0;
    }
    if (!strcmp(json_type, "number")) {
        double d = strtod(s, &end);
        return *s && !*end && isfinite(d);
    }
    if (!strcmp(json_type, "boolean")) {
        return bool_word(s, &b);
    }
    return false;
}

json_t *qapi_write_str(const char *s)
{
    json_t *j = json_string(s);
    if (!j) {
        char *valid = g_utf8_make_valid(s, -1);
        j = json_string(valid);
        g_free(valid);
    }
    return j;
}

json_t *qapi_write_uint(uint64_t v)
{
    /* jansson holds signed integers: larger values travel as a real. */
    if (v > INT64_MAX) {
        return json_real((double)v);
    }
    return json_integer((json_int_t)v);
}

json_t *qapi_parse_cmdline(const char *str, const char *implied_key,
                           bool *keyval, GError **errp)
{
    json_t *tree;
    if (str[0] == '{') {
        *keyval = false;
        tree = opts_parse_json(str, errp);
        if (tree && !json_is_object(tree)) {
            /* "{" starts an object, so the parser gave one or failed. */
            json_decref(tree);
            error_setg(errp, "JSON parse error: expected an object");
            return NULL;
        }
        return tree;
    }
    *keyval = true;
    tree = opts_parse_keyval(str, implied_key, errp);
    if (tree && !opts_keyval_listify(tree, errp)) {
        json_decref(tree);
        return NULL;
    }
    return tree;
}
