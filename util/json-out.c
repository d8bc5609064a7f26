/*
 * QEMU's JSON writer and QDict order (see strata/json-out.h).
 */
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include "strata/json-out.h"

#define QDICT_BUCKETS 512

unsigned json_qdict_bucket(const char *key)
{
    uint32_t value = 0x238F13AFu * (uint32_t)strlen(key);

    for (unsigned i = 0; key[i]; i++) {
        value += (uint32_t)(unsigned char)key[i] << (i * 5 % 24);
    }
    return (1103515243u * value + 12345u) % QDICT_BUCKETS;
}

static int member_cmp(const void *a, const void *b)
{
    const JsonMember *x = a, *y = b;

    if (x->bucket != y->bucket) {
        return x->bucket < y->bucket ? -1 : 1;
    }
    /* One bucket is a list QEMU inserts at the head: newer first. */
    return x->index > y->index ? -1 : (x->index < y->index ? 1 : 0);
}

JsonMember *json_qdict_members(json_t *obj, size_t *n)
{
    size_t i = 0;
    JsonMember *m;
    const char *key;
    json_t *value;

    *n = json_object_size(obj);
    m = g_new(JsonMember, *n ? *n : 1);
    json_object_foreach(obj, key, value) {
        m[i] = (JsonMember){ key, value, json_qdict_bucket(key), i };
        i++;
    }
    qsort(m, *n, sizeof(*m), member_cmp);
    return m;
}

/*
 * Decode one code point of (modified) UTF-8 as QEMU's JSON writer does:
 * -1 for an invalid sequence, which then consumes the lead byte and the
 * continuation bytes that followed it.
 */
static int32_t utf8_next(const unsigned char **pp)
{
    static const uint32_t min_cp[5] = { 0x80, 0x800, 0x10000, 0x200000,
                                        0x4000000 };
    const unsigned char *p = *pp;
    uint32_t cp = *p++;
    int clen;

    if (cp < 0x80) {
        *pp = p;
        return (int32_t)cp;
    } else if (cp < 0xC0) {
        *pp = p;
        return -1;
    } else if (cp < 0xE0) {
        clen = 1;
        cp &= 0x1F;
    } else if (cp < 0xF0) {
        clen = 2;
        cp &= 0xF;
    } else if (cp < 0xF8) {
        clen = 3;
        cp &= 0x7;
    } else if (cp < 0xFC) {
        clen = 4;
        cp &= 0x3;
    } else if (cp < 0xFE) {
        clen = 5;
        cp &= 0x1;
    } else {
        *pp = p;
        return -1;
    }
    for (int i = 0; i < clen; i++) {
        if ((p[i] & 0xC0) != 0x80) {
            *pp = p + i;
            return -1;
        }
        cp = (cp << 6) | (p[i] & 0x3F);
    }
    *pp = p + clen;
    if (cp == 0 && clen == 1) {
        return 0; /* modified UTF-8 spelling of NUL */
    }
    if (cp < min_cp[clen - 1] || cp >= 0x110000 ||
        (cp >= 0xD800 && cp <= 0xDFFF)) {
        return -1;
    }
    return (int32_t)cp;
}

void json_out_string(GString *out, const char *str)
{
    const unsigned char *p = (const unsigned char *)str;

    g_string_append_c(out, '"');
    while (*p) {
        int32_t cp = utf8_next(&p);

        switch (cp) {
        case '"':
            g_string_append(out, "\\\"");
            break;
        case '\\':
            g_string_append(out, "\\\\");
            break;
        case '\b':
            g_string_append(out, "\\b");
            break;
        case '\f':
            g_string_append(out, "\\f");
            break;
        case '\n':
            g_string_append(out, "\\n");
            break;
        case '\r':
            g_string_append(out, "\\r");
            break;
        case '\t':
            g_string_append(out, "\\t");
            break;
        default:
            if (cp < 0) {
                g_string_append(out, "\\uFFFD");
            } else if (cp >= 0x10000) {
                uint32_t v = (uint32_t)cp - 0x10000;
                g_string_append_printf(out, "\\u%04X\\u%04X",
                                       0xD800 + (v >> 10), 0xDC00 + (v & 0x3FF));
            } else if (cp < 0x20 || cp >= 0x7F) {
                g_string_append_printf(out, "\\u%04X", (unsigned)cp);
            } else {
                g_string_append_c(out, (char)cp);
            }
        }
    }
    g_string_append_c(out, '"');
}

static void append_scalar(GString *out, json_t *v)
{
    switch (json_typeof(v)) {
    case JSON_STRING:
        json_out_string(out, json_string_value(v));
        break;
    case JSON_INTEGER:
        g_string_append_printf(out, "%" JSON_INTEGER_FORMAT,
                               json_integer_value(v));
        break;
    case JSON_REAL:
        /* QEMU's qnum_to_string(): %.17g */
        g_string_append_printf(out, "%.17g", json_real_value(v));
        break;
    case JSON_TRUE:
        g_string_append(out, "true");
        break;
    case JSON_FALSE:
        g_string_append(out, "false");
        break;
    default:
        g_string_append(out, "null");
    }
}

/* pretty: indent level >= 0; compact: indent < 0. */
static void append_value(GString *out, json_t *v, int indent);

static void separator(GString *out, size_t i, int indent)
{
    if (indent < 0) {
        g_string_append(out, i ? ", " : "");
    } else {
        g_string_append_printf(out, "%s\n%*s", i ? "," : "",
                               (indent + 1) * 4, "");
    }
}

static void closing(GString *out, int indent, char c)
{
    if (indent >= 0) {
        g_string_append_printf(out, "\n%*s", indent * 4, "");
    }
    g_string_append_c(out, c);
}

static void append_value(GString *out, json_t *v, int indent)
{
    int inner = indent < 0 ? indent : indent + 1;

    if (json_is_object(v)) {
        size_t n;
        JsonMember *m = json_qdict_members(v, &n);

        g_string_append_c(out, '{');
        for (size_t i = 0; i < n; i++) {
            separator(out, i, indent);
            json_out_string(out, m[i].key);
            g_string_append(out, ": ");
            append_value(out, m[i].value, inner);
        }
        closing(out, indent, '}');
        g_free(m);
    } else if (json_is_array(v)) {
        size_t i;
        json_t *e;

        g_string_append_c(out, '[');
        json_array_foreach(v, i, e) {
            separator(out, i, indent);
            append_value(out, e, inner);
        }
        closing(out, indent, ']');
    } else {
        append_scalar(out, v);
    }
}

void json_out_compact(GString *out, json_t *v)
{
    append_value(out, v, -1);
}

void json_out_pretty(GString *out, json_t *v, int indent)
{
    append_value(out, v, indent < 0 ? 0 : indent);
}

char *json_out_compact_str(json_t *v)
{
    GString *out = g_string_new(NULL);

    json_out_compact(out, v);
    return g_string_free(out, false);
}

char *json_out_pretty_str(json_t *v)
{
    GString *out = g_string_new(NULL);

    json_out_pretty(out, v, 0);
    return g_string_free(out, false);
}

/* The human dump shows strings raw, not quoted. */
static void human_scalar(GString *out, json_t *v)
{
    if (json_is_string(v)) {
        g_string_append(out, json_string_value(v));
    } else {
        append_scalar(out, v);
    }
}

static void human_line(GString *out, const char *label, json_t *v,
                       int indent)
{
    bool composite = json_is_object(v) || json_is_array(v);

    g_string_append_printf(out, "%*s%s:%c", indent * 4, "", label,
                           composite ? '\n' : ' ');
    if (composite) {
        json_out_human(out, v, indent + 1);
    } else {
        human_scalar(out, v);
        g_string_append_c(out, '\n');
    }
}

void json_out_human(GString *out, json_t *v, int indent)
{
    if (json_is_object(v)) {
        size_t n;
        JsonMember *m = json_qdict_members(v, &n);

        for (size_t i = 0; i < n; i++) {
            char *shown = g_strdup(m[i].key);

            g_strdelimit(shown, "-", ' ');
            human_line(out, shown, m[i].value, indent);
            g_free(shown);
        }
        g_free(m);
    } else if (json_is_array(v)) {
        size_t i;
        json_t *e;

        json_array_foreach(v, i, e) {
            char label[32];

            g_snprintf(label, sizeof(label), "[%zu]", i);
            human_line(out, label, e, indent);
        }
    } else {
        human_scalar(out, v);
    }
}
