#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "pyjson.h"

char *py_float_repr(double d)
{
    char buf[64];
    int prec;

    /* the shortest %e form that reads back as the same double */
    for (prec = 0; prec < 17; prec++) {
        snprintf(buf, sizeof(buf), "%.*e", prec, d);
        if (strtod(buf, NULL) == d) {
            break;
        }
    }
    snprintf(buf, sizeof(buf), "%.*e", prec, d);

    /* split "-d.ddde+XX" into sign, digits and decimal exponent */
    bool neg = buf[0] == '-';
    const char *p = buf + neg;
    char digits[32];
    size_t nd = 0;
    for (; *p && *p != 'e'; p++) {
        if (g_ascii_isdigit(*p)) {
            digits[nd++] = *p;
        }
    }
    while (nd > 1 && digits[nd - 1] == '0') {
        nd--;
    }
    digits[nd] = '\0';
    int exp10 = atoi(p + 1);           /* value = d.ddd * 10^exp10 */
    int decpt = exp10 + 1;              /* digits before the point */

    GString *s = g_string_new(neg ? "-" : "");
    if (decpt > -4 && decpt <= 16) {    /* Python's repr switches here */
        if (decpt <= 0) {
            g_string_append(s, "0.");
            for (int i = 0; i < -decpt; i++) {
                g_string_append_c(s, '0');
            }
            g_string_append(s, digits);
        } else if ((size_t)decpt >= nd) {
            g_string_append(s, digits);
            for (size_t i = nd; i < (size_t)decpt; i++) {
                g_string_append_c(s, '0');
            }
            g_string_append(s, ".0");
        } else {
            g_string_append_len(s, digits, decpt);
            g_string_append_c(s, '.');
            g_string_append(s, digits + decpt);
        }
    } else {
        g_string_append_c(s, digits[0]);
        if (nd > 1) {
            g_string_append_c(s, '.');
            g_string_append(s, digits + 1);
        }
        g_string_append_printf(s, "e%c%02d", exp10 < 0 ? '-' : '+',
                               abs(exp10));
    }
    return g_string_free(s, FALSE);
}

static void put_string(GString *out, const char *str, size_t len)
{
    g_string_append_c(out, '"');
    for (size_t i = 0; i < len;) {
        unsigned char c = str[i];
        if (c == '"' || c == '\\') {
            g_string_append_c(out, '\\');
            g_string_append_c(out, c);
            i++;
            continue;
        }
        if (c >= 0x20 && c < 0x7f) {
            g_string_append_c(out, c);
            i++;
            continue;
        }
        const char *named = c == '\n' ? "\\n" : c == '\r' ? "\\r" :
                            c == '\t' ? "\\t" : c == '\b' ? "\\b" :
                            c == '\f' ? "\\f" : NULL;
        if (named) {
            g_string_append(out, named);
            i++;
            continue;
        }
        gunichar u = c;
        if (c >= 0x80) {        /* jansson strings are valid UTF-8 */
            const char *next = g_utf8_next_char(str + i);
            u = g_utf8_get_char(str + i);
            i = next - str;
        } else {
            i++;
        }
        if (u >= 0x10000) {
            u -= 0x10000;
            g_string_append_printf(out, "\\u%04x\\u%04x",
                                   0xd800 + (u >> 10), 0xdc00 + (u & 0x3ff));
        } else {
            g_string_append_printf(out, "\\u%04x", u);
        }
    }
    g_string_append_c(out, '"');
}

static int cmp_keys(gconstpointer a, gconstpointer b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

static void newline(GString *out, bool pretty, int level)
{
    if (pretty) {
        g_string_append_c(out, '\n');
        for (int i = 0; i < level * 4; i++) {
            g_string_append_c(out, ' ');
        }
    }
}

static void put_value(GString *out, const json_t *v, bool pretty, int level)
{
    switch (json_typeof(v)) {
    case JSON_OBJECT: {
        if (json_object_size(v) == 0) {
            g_string_append(out, "{}");
            break;
        }
        g_autoptr(GPtrArray) keys = g_ptr_array_new();
        const char *k;
        json_t *m;
        json_object_foreach((json_t *)v, k, m) {
            g_ptr_array_add(keys, (char *)k);
        }
        if (pretty) {
            g_ptr_array_sort(keys, cmp_keys);
        }
        g_string_append_c(out, '{');
        for (guint i = 0; i < keys->len; i++) {
            const char *key = keys->pdata[i];
            g_string_append(out, i ? (pretty ? "," : ", ") : "");
            newline(out, pretty, level + 1);
            put_string(out, key, strlen(key));
            g_string_append(out, ": ");
            put_value(out, json_object_get(v, key), pretty, level + 1);
        }
        newline(out, pretty, level);
        g_string_append_c(out, '}');
        break;
    }
    case JSON_ARRAY:
        if (json_array_size(v) == 0) {
            g_string_append(out, "[]");
            break;
        }
        g_string_append_c(out, '[');
        for (size_t i = 0; i < json_array_size(v); i++) {
            g_string_append(out, i ? (pretty ? "," : ", ") : "");
            newline(out, pretty, level + 1);
            put_value(out, json_array_get(v, i), pretty, level + 1);
        }
        newline(out, pretty, level);
        g_string_append_c(out, ']');
        break;
    case JSON_STRING:
        put_string(out, json_string_value(v), json_string_length(v));
        break;
    case JSON_INTEGER:
        g_string_append_printf(out, "%" JSON_INTEGER_FORMAT,
                               json_integer_value(v));
        break;
    case JSON_REAL: {
        g_autofree char *r = py_float_repr(json_real_value(v));
        g_string_append(out, r);
        break;
    }
    case JSON_TRUE:
        g_string_append(out, "true");
        break;
    case JSON_FALSE:
        g_string_append(out, "false");
        break;
    case JSON_NULL:
        g_string_append(out, "null");
        break;
    }
}

char *py_json_dumps(const json_t *v, bool pretty)
{
    GString *out = g_string_new("");
    put_value(out, v, pretty, 0);
    return g_string_free(out, FALSE);
}
