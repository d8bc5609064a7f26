/*
 * A recursive-descent reader for the Python literals of pyliteral.h.
 * Anything outside the subset (sets, bytes, complex numbers, expressions)
 * is PYLIT_SYNTAX: qmp-shell then sends the text as a string, or (sets,
 * bytes, complex) fails to encode it, so a string is the useful answer.
 */
#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include "pyliteral.h"

#define MAX_DEPTH 512   /* Python's own parser stops nesting near here */

typedef struct {
    const char *s;
    size_t pos, len;
    int depth;
    PyLiteralStatus status;
} Reader;

static bool fail(Reader *r, PyLiteralStatus st)
{
    if (r->status == PYLIT_OK) {
        r->status = st;
    }
    return false;
}

static void skip_space(Reader *r)
{
    while (r->pos < r->len && strchr(" \t\n\r\f\v", r->s[r->pos]) &&
           r->s[r->pos]) {
        r->pos++;
    }
}

static bool is_digit_in(char c, int base)
{
    if (base == 16) {
        return g_ascii_isxdigit(c);
    }
    return c >= '0' && c < '0' + base;
}

/* Digits of BASE with single underscores between them, into buf. */
static bool read_digits(Reader *r, int base, GString *buf)
{
    if (r->pos >= r->len || !is_digit_in(r->s[r->pos], base)) {
        return false;
    }
    while (r->pos < r->len) {
        char c = r->s[r->pos];
        if (is_digit_in(c, base)) {
            g_string_append_c(buf, c);
            r->pos++;
        } else if (c == '_' && r->pos + 1 < r->len &&
                   is_digit_in(r->s[r->pos + 1], base)) {
            r->pos++;
        } else {
            break;
        }
    }
    return true;
}

static bool make_int(Reader *r, const char *digits, int base, bool neg,
                     json_t **out)
{
    errno = 0;
    char *end;
    guint64 u = g_ascii_strtoull(digits, &end, base);
    if (errno == ERANGE || (!neg && u > G_MAXINT64) ||
        (neg && u > (guint64)G_MAXINT64 + 1)) {
        return fail(r, PYLIT_RANGE);
    }
    *out = json_integer(neg ? (json_int_t)(0 - u) : (json_int_t)u);
    return true;
}

static bool read_number(Reader *r, bool neg, json_t **out)
{
    g_autoptr(GString) buf = g_string_new("");
    const char *s = r->s;

    if (s[r->pos] == '0' && r->pos + 1 < r->len &&
        strchr("xXoObB", s[r->pos + 1])) {
        char k = g_ascii_tolower(s[r->pos + 1]);
        int base = k == 'x' ? 16 : k == 'o' ? 8 : 2;
        r->pos += 2;
        if (r->pos < r->len && s[r->pos] == '_') {   /* 0x_1f is allowed */
            r->pos++;
        }
        if (!read_digits(r, base, buf)) {
            return fail(r, PYLIT_SYNTAX);
        }
        if (r->pos < r->len && (g_ascii_isalnum(s[r->pos]) || s[r->pos] == '_')) {
            return fail(r, PYLIT_SYNTAX);
        }
        return make_int(r, buf->str, base, neg, out);
    }

    bool is_float = false;
    if (s[r->pos] != '.') {
        read_digits(r, 10, buf);
    }
    if (r->pos < r->len && s[r->pos] == '.') {
        is_float = true;
        g_string_append_c(buf, '.');
        r->pos++;
        if (!read_digits(r, 10, buf) && buf->len == 1) {
            return fail(r, PYLIT_SYNTAX);          /* a lone '.' */
        }
    }
    if (r->pos < r->len && (s[r->pos] == 'e' || s[r->pos] == 'E')) {
        is_float = true;
        g_string_append_c(buf, 'e');
        r->pos++;
        if (r->pos < r->len && (s[r->pos] == '+' || s[r->pos] == '-')) {
            g_string_append_c(buf, s[r->pos++]);
        }
        if (!read_digits(r, 10, buf)) {
            return fail(r, PYLIT_SYNTAX);
        }
    }
    /* 1j (complex), 1L, 12abc: nothing qmp-shell can send as a number */
    if (r->pos < r->len && (g_ascii_isalnum(s[r->pos]) || s[r->pos] == '_')) {
        return fail(r, PYLIT_SYNTAX);
    }
    if (is_float) {
        double d = g_ascii_strtod(buf->str, NULL);
        if (!isfinite(d)) {
            return fail(r, PYLIT_SYNTAX);   /* inf has no JSON spelling */
        }
        *out = json_real(neg ? -d : d);
        return true;
    }
    /* Python source refuses leading zeros on a non-zero decimal ("01") */
    if (buf->len > 1 && buf->str[0] == '0' &&
        strspn(buf->str, "0") != buf->len) {
        return fail(r, PYLIT_SYNTAX);
    }
    return make_int(r, buf->str, 10, neg, out);
}

static int hex_value(const char *p, int n)
{
    int v = 0;
    for (int i = 0; i < n; i++) {
        if (!g_ascii_isxdigit(p[i])) {
            return -1;
        }
        v = v * 16 + g_ascii_xdigit_value(p[i]);
    }
    return v;
}

/* One quoted string (after an optional r/u prefix), appended to buf. */
static bool read_string(Reader *r, bool raw, GString *buf)
{
    char q = r->s[r->pos++];
    bool triple = r->pos + 1 < r->len && r->s[r->pos] == q &&
                  r->s[r->pos + 1] == q;
    if (triple) {
        r->pos += 2;
    }
    for (;;) {
        if (r->pos >= r->len) {
            return fail(r, PYLIT_SYNTAX);
        }
        char c = r->s[r->pos];
        if (c == q) {
            if (!triple) {
                r->pos++;
                return true;
            }
            if (r->pos + 2 < r->len + 0 && r->s[r->pos + 1] == q &&
                r->s[r->pos + 2] == q) {
                r->pos += 3;
                return true;
            }
        }
        if (c == '\n' && !triple) {
            return fail(r, PYLIT_SYNTAX);
        }
        if (c != '\\') {
            g_string_append_c(buf, c);
            r->pos++;
            continue;
        }
        if (r->pos + 1 >= r->len) {
            return fail(r, PYLIT_SYNTAX);
        }
        char e = r->s[r->pos + 1];
        if (raw) {          /* a raw string keeps the backslash */
            g_string_append_c(buf, '\\');
            g_string_append_c(buf, e);
            r->pos += 2;
            continue;
        }
        r->pos += 2;
        static const char esc_in[] = "\\'\"abfnrtv";
        static const char esc_out[] = "\\'\"\a\b\f\n\r\t\v";
        const char *simple = e ? strchr(esc_in, e) : NULL;
        if (e == '\n') {               /* backslash-newline: nothing */
            continue;
        }
        if (simple) {
            g_string_append_c(buf, esc_out[simple - esc_in]);
            continue;
        }
        if (e >= '0' && e <= '7') {
            int v = e - '0';
            for (int i = 0; i < 2 && r->pos < r->len &&
                 r->s[r->pos] >= '0' && r->s[r->pos] <= '7'; i++) {
                v = v * 8 + (r->s[r->pos++] - '0');
            }
            g_string_append_unichar(buf, v);
            continue;
        }
        int n = e == 'x' ? 2 : e == 'u' ? 4 : e == 'U' ? 8 : 0;
        if (n) {
            int v = r->pos + n <= r->len ? hex_value(r->s + r->pos, n) : -1;
            /* surrogates and values past Unicode have no UTF-8 form */
            if (v < 0 || !g_unichar_validate(v)) {
                return fail(r, PYLIT_SYNTAX);
            }
            r->pos += n;
            g_string_append_unichar(buf, v);
            continue;
        }
        if (e == 'N') {
            return fail(r, PYLIT_SYNTAX);   /* named characters: not kept */
        }
        g_string_append_c(buf, '\\');       /* unknown escapes stay */
        g_string_append_c(buf, e);
    }
}

static bool at_string(Reader *r, bool *raw)
{
    const char *p = r->s + r->pos;
    size_t left = r->len - r->pos;
    *raw = false;
    if (left >= 1 && (*p == '\'' || *p == '"')) {
        return true;
    }
    if (left >= 2 && (p[1] == '\'' || p[1] == '"') && strchr("rRuU", p[0])) {
        *raw = p[0] == 'r' || p[0] == 'R';
        r->pos++;
        return true;
    }
    return false;
}

static bool read_value(Reader *r, json_t **out);

/* A dict key: json.dumps turns scalars into their JSON text. */
static char *key_text(json_t *k)
{
    switch (json_typeof(k)) {
    case JSON_STRING:
        return g_strndup(json_string_value(k), json_string_length(k));
    case JSON_INTEGER:
        return g_strdup_printf("%" JSON_INTEGER_FORMAT, json_integer_value(k));
    case JSON_TRUE:
        return g_strdup("true");
    case JSON_FALSE:
        return g_strdup("false");
    case JSON_NULL:
        return g_strdup("null");
    default:
        return NULL;        /* floats and containers: not worth the trouble */
    }
}

/* At the closing character CLOSE ('\0': the end of the text)? Consumes it. */
static bool at_close(Reader *r, char close)
{
    if (!close) {
        return r->pos >= r->len;
    }
    if (r->pos < r->len && r->s[r->pos] == close) {
        r->pos++;
        return true;
    }
    return false;
}

static bool read_items(Reader *r, char close, json_t *list, bool *saw_comma)
{
    *saw_comma = false;
    for (;;) {
        skip_space(r);
        if (at_close(r, close)) {
            return true;
        }
        json_t *v;
        if (!read_value(r, &v)) {
            return false;
        }
        json_array_append_new(list, v);
        skip_space(r);
        if (r->pos < r->len && r->s[r->pos] == ',') {
            r->pos++;
            *saw_comma = true;
        } else if (at_close(r, close)) {
            return true;
        } else {
            return fail(r, PYLIT_SYNTAX);
        }
    }
}

/* Python's identity of a dict key: True is 1 and False is 0, so {1: a,
 * True: b} has one key, spelled as it first came, with the last value. */
static char *key_identity(json_t *k)
{
    switch (json_typeof(k)) {
    case JSON_INTEGER:
        return g_strdup_printf("i%" JSON_INTEGER_FORMAT, json_integer_value(k));
    case JSON_TRUE:
        return g_strdup("i1");
    case JSON_FALSE:
        return g_strdup("i0");
    case JSON_NULL:
        return g_strdup("n");
    default:
        return g_strdup_printf("s%s", json_string_value(k));
    }
}

static bool read_dict(Reader *r, json_t **out)
{
    json_t *obj = json_object();
    g_autoptr(GHashTable) spelled = g_hash_table_new_full(g_str_hash,
                                                          g_str_equal,
                                                          g_free, g_free);
    for (;;) {
        skip_space(r);
        if (r->pos < r->len && r->s[r->pos] == '}') {
            r->pos++;
            *out = obj;
            return true;
        }
        json_t *k, *v;
        if (!read_value(r, &k)) {
            goto err;
        }
        char *key = key_text(k);
        if (key) {
            char *id = key_identity(k);
            const char *first = g_hash_table_lookup(spelled, id);
            if (first) {
                g_free(key);
                key = g_strdup(first);
                g_free(id);
            } else {
                g_hash_table_insert(spelled, id, g_strdup(key));
            }
        }
        json_decref(k);
        skip_space(r);
        if (!key || r->pos >= r->len || r->s[r->pos] != ':') {
            g_free(key);
            fail(r, PYLIT_SYNTAX);      /* also a set: {1, 2} */
            goto err;
        }
        r->pos++;
        if (!read_value(r, &v)) {
            g_free(key);
            goto err;
        }
        json_object_set_new(obj, key, v);
        g_free(key);
        skip_space(r);
        if (r->pos < r->len && r->s[r->pos] == ',') {
            r->pos++;
        } else if (!(r->pos < r->len && r->s[r->pos] == '}')) {
            fail(r, PYLIT_SYNTAX);
            goto err;
        }
    }
err:
    json_decref(obj);
    return false;
}

static bool read_name(Reader *r, json_t **out)
{
    size_t start = r->pos;
    while (r->pos < r->len &&
           (g_ascii_isalnum(r->s[r->pos]) || r->s[r->pos] == '_')) {
        r->pos++;
    }
    g_autofree char *name = g_strndup(r->s + start, r->pos - start);
    if (!strcmp(name, "True") || !strcmp(name, "true")) {
        *out = json_true();
    } else if (!strcmp(name, "False") || !strcmp(name, "false")) {
        *out = json_false();
    } else if (!strcmp(name, "None") || !strcmp(name, "null")) {
        *out = json_null();
    } else {
        return fail(r, PYLIT_SYNTAX);
    }
    return true;
}

static bool read_value(Reader *r, json_t **out)
{
    bool raw, ok, comma;

    skip_space(r);
    if (r->pos >= r->len) {
        return fail(r, PYLIT_SYNTAX);
    }
    if (++r->depth > MAX_DEPTH) {
        return fail(r, PYLIT_SYNTAX);
    }
    char c = r->s[r->pos];
    if (at_string(r, &raw)) {
        GString *buf = g_string_new("");
        ok = read_string(r, raw, buf);
        /* adjacent literals concatenate: 'a' "b" */
        for (;;) {
            if (!ok) {
                break;
            }
            size_t save = r->pos;
            skip_space(r);
            if (r->pos >= r->len || !at_string(r, &raw)) {
                r->pos = save;
                break;
            }
            ok = read_string(r, raw, buf);
        }
        if (ok) {
            *out = json_stringn(buf->str, buf->len);
            ok = *out != NULL || fail(r, PYLIT_SYNTAX);
        }
        g_string_free(buf, TRUE);
    } else if (c == '[' || c == '(') {
        r->pos++;
        json_t *list = json_array();
        ok = read_items(r, c == '[' ? ']' : ')', list, &comma);
        if (ok && c == '(' && json_array_size(list) == 1 && !comma) {
            /* (x) is x, not a tuple */
            *out = json_incref(json_array_get(list, 0));
            json_decref(list);
        } else if (ok) {
            *out = list;
        } else {
            json_decref(list);
        }
    } else if (c == '{') {
        r->pos++;
        ok = read_dict(r, out);
    } else if (c == '-' || c == '+') {
        /* literal_eval takes one sign before a number, nothing else */
        r->pos++;
        ok = r->pos < r->len &&
             (g_ascii_isdigit(r->s[r->pos]) || r->s[r->pos] == '.')
             ? read_number(r, c == '-', out) : fail(r, PYLIT_SYNTAX);
    } else if (g_ascii_isdigit(c) || c == '.') {
        ok = read_number(r, false, out);
    } else if (g_ascii_isalpha(c) || c == '_') {
        ok = read_name(r, out);
    } else {
        ok = fail(r, PYLIT_SYNTAX);
    }
    r->depth--;
    return ok;
}

PyLiteralStatus py_literal_parse(const char *text, json_t **out)
{
    Reader r = { .s = text, .len = strlen(text), .status = PYLIT_OK };
    json_t *v;

    if (!read_value(&r, &v)) {
        return r.status == PYLIT_OK ? PYLIT_SYNTAX : r.status;
    }
    skip_space(&r);
    if (r.pos < r.len && r.s[r.pos] == ',') {
        /* "{},[1]": a tuple without parentheses, sent as a list */
        json_t *tuple = json_array();
        bool comma;
        json_array_append_new(tuple, v);
        r.pos++;
        /* read_items wants a closing character: the string's end is one */
        if (!read_items(&r, '\0', tuple, &comma)) {
            json_decref(tuple);
            return r.status == PYLIT_OK ? PYLIT_SYNTAX : r.status;
        }
        v = tuple;
    }
    if (r.pos != r.len) {
        json_decref(v);
        return PYLIT_SYNTAX;
    }
    *out = v;
    return PYLIT_OK;
}

bool py_int_parse(const char *s, size_t len, gint64 *out, bool *overflow)
{
    size_t i = 0;
    bool neg = false;
    guint64 v = 0;

    *overflow = false;
    if (i < len && (s[i] == '+' || s[i] == '-')) {
        neg = s[i] == '-';
        i++;
    }
    if (i >= len || !g_ascii_isdigit(s[i])) {
        return false;
    }
    for (; i < len; i++) {
        if (s[i] == '_') {
            if (i + 1 >= len || !g_ascii_isdigit(s[i + 1])) {
                return false;
            }
            continue;
        }
        if (!g_ascii_isdigit(s[i])) {
            return false;
        }
        if (v > (G_MAXUINT64 - 9) / 10) {
            *overflow = true;
        }
        v = v * 10 + (s[i] - '0');
    }
    if ((!neg && v > G_MAXINT64) || (neg && v > (guint64)G_MAXINT64 + 1)) {
        *overflow = true;
    }
    *out = neg ? (gint64)(0 - v) : (gint64)v;
    return true;
}
