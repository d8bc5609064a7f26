/*
 * JSON text the way QEMU's tools print it (qemu-img info/check/map
 * --output=json).
 *
 * Two things differ from jansson's own dump and matter for byte-for-byte
 * output:
 *  - Key order.  QEMU prints objects in QDict order (tool_qdict_members()).
 *  - Layout and escapes.  Four spaces per level, "key": value, an empty
 *    container still gets its closing bracket on a line of its own, and
 *    every code point outside printable ASCII is written as \uXXXX
 *    (uppercase hex, surrogate pairs above U+FFFF); invalid UTF-8 becomes
 *    \uFFFD.
 */
#include <stdio.h>
#include <string.h>
#include "img.h"

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

static void append_quoted(GString *out, const char *str)
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

static void newline(GString *out, int depth)
{
    g_string_append_printf(out, "\n%*s", depth * 4, "");
}

static void append_value(GString *out, json_t *v, int depth);

static void append_object(GString *out, json_t *obj, int depth)
{
    size_t n;
    ToolDictMember *m = tool_qdict_members(obj, &n);

    g_string_append_c(out, '{');
    for (size_t i = 0; i < n; i++) {
        if (i) {
            g_string_append_c(out, ',');
        }
        newline(out, depth + 1);
        append_quoted(out, m[i].key);
        g_string_append(out, ": ");
        append_value(out, m[i].value, depth + 1);
    }
    newline(out, depth);
    g_string_append_c(out, '}');
    g_free(m);
}

static void append_array(GString *out, json_t *arr, int depth)
{
    size_t i;
    json_t *value;

    g_string_append_c(out, '[');
    json_array_foreach(arr, i, value) {
        if (i) {
            g_string_append_c(out, ',');
        }
        newline(out, depth + 1);
        append_value(out, value, depth + 1);
    }
    newline(out, depth);
    g_string_append_c(out, ']');
}

static void append_value(GString *out, json_t *v, int depth)
{
    switch (json_typeof(v)) {
    case JSON_OBJECT:
        append_object(out, v, depth);
        break;
    case JSON_ARRAY:
        append_array(out, v, depth);
        break;
    case JSON_STRING:
        append_quoted(out, json_string_value(v));
        break;
    case JSON_INTEGER:
        g_string_append_printf(out, "%" JSON_INTEGER_FORMAT,
                               json_integer_value(v));
        break;
    case JSON_REAL:
        g_string_append_printf(out, "%.17g", json_real_value(v));
        break;
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

char *img_json_pretty(json_t *v)
{
    GString *out = g_string_new(NULL);

    append_value(out, v, 0);
    return g_string_free(out, false);
}
