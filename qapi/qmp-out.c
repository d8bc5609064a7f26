/*
 * QMP output in QEMU's bytes.  QEMU serialises a QDict, whose iteration
 * order is its hash table's: bucket by bucket (a string hash modulo 512),
 * and the member inserted last first within a bucket.  Replies are built
 * here in QEMU's insertion order, so sorting them that way reproduces its
 * text exactly.
 */
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

#include "qmp-out.h"

#define QDICT_BUCKETS 512

typedef struct {
    QmpOutMember m;
    unsigned bucket;
    size_t index;
} Sortable;

static unsigned qdict_bucket(const char *key)
{
    uint32_t value = 0x238F13AFu * (uint32_t)strlen(key);

    for (unsigned i = 0; key[i]; i++) {
        value += (uint32_t)(unsigned char)key[i] << (i * 5 % 24);
    }
    return (1103515243u * value + 12345u) % QDICT_BUCKETS;
}

static int sortable_cmp(const void *a, const void *b)
{
    const Sortable *x = a, *y = b;

    if (x->bucket != y->bucket) {
        return x->bucket < y->bucket ? -1 : 1;
    }
    return x->index > y->index ? -1 : (x->index < y->index ? 1 : 0);
}

QmpOutMember *qmp_out_members(json_t *obj, size_t *n)
{
    const char *key;
    json_t *value;
    size_t i = 0;

    *n = json_object_size(obj);
    Sortable *s = g_new(Sortable, *n ? *n : 1);
    json_object_foreach(obj, key, value) {
        s[i] = (Sortable){ { key, value }, qdict_bucket(key), i };
        i++;
    }
    qsort(s, *n, sizeof(*s), sortable_cmp);
    QmpOutMember *m = g_new(QmpOutMember, *n ? *n : 1);
    for (i = 0; i < *n; i++) {
        m[i] = s[i].m;
    }
    g_free(s);
    return m;
}

/*
 * One code point of QEMU's modified UTF-8 at *p; -1 for an invalid or
 * overlong sequence, which then swallows its continuation bytes as QEMU's
 * decoder does.
 */
static long next_codepoint(const unsigned char **p)
{
    const unsigned char *s = *p;
    unsigned char c = *s++;
    long cp;
    int len;

    if (c < 0x80) {
        *p = s;
        return c;
    }
    if (c >= 0xC0 && c < 0xE0) {
        len = 1;
        cp = c & 0x1F;
    } else if (c >= 0xE0 && c < 0xF0) {
        len = 2;
        cp = c & 0x0F;
    } else if (c >= 0xF0 && c < 0xF8) {
        len = 3;
        cp = c & 0x07;
    } else {
        while ((*s & 0xC0) == 0x80) {
            s++;
        }
        *p = s;
        return -1;
    }
    for (int i = 0; i < len; i++) {
        if ((*s & 0xC0) != 0x80) {
            *p = s;
            return -1;
        }
        cp = (cp << 6) | (*s++ & 0x3F);
    }
    *p = s;
    /* C0 80 is modified UTF-8's NUL; other overlong forms are invalid */
    if (len == 1 && cp == 0 && s[-2] == 0xC0) {
        return 0;
    }
    static const long min[] = { 0, 0x80, 0x800, 0x10000 };
    if (cp < min[len] || cp > 0x10FFFF || (cp >= 0xD800 && cp < 0xE000)) {
        return -1;
    }
    return cp;
}

static void out_string(GString *out, const char *str)
{
    const unsigned char *p = (const unsigned char *)str;

    g_string_append_c(out, '"');
    while (*p) {
        long cp = next_codepoint(&p);
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
                cp = 0xFFFD;
            }
            if (cp > 0xFFFF) {
                g_string_append_printf(out, "\\u%04lX\\u%04lX",
                                       0xD800 + ((cp - 0x10000) >> 10),
                                       0xDC00 + ((cp - 0x10000) & 0x3FF));
            } else if (cp < 0x20 || cp >= 0x7F) {
                g_string_append_printf(out, "\\u%04lX", cp);
            } else {
                g_string_append_c(out, (char)cp);
            }
        }
    }
    g_string_append_c(out, '"');
}

static void newline(GString *out, bool pretty, int depth)
{
    if (pretty) {
        g_string_append_printf(out, "\n%*s", depth * 4, "");
    }
}

/* QEMU puts ", " between members on one line, ",\n<indent>" when pretty. */
static void separator(GString *out, bool pretty, int depth)
{
    g_string_append_c(out, ',');
    if (pretty) {
        newline(out, true, depth);
    } else {
        g_string_append_c(out, ' ');
    }
}

static void out_value(GString *out, json_t *v, bool pretty, int depth)
{
    switch (json_typeof(v)) {
    case JSON_OBJECT: {
        size_t n;
        QmpOutMember *m = qmp_out_members(v, &n);
        g_string_append_c(out, '{');
        for (size_t i = 0; i < n; i++) {
            if (i) {
                separator(out, pretty, depth + 1);
            } else {
                newline(out, pretty, depth + 1);
            }
            out_string(out, m[i].key);
            g_string_append(out, ": ");
            out_value(out, m[i].value, pretty, depth + 1);
        }
        g_free(m);
        newline(out, pretty, depth);
        g_string_append_c(out, '}');
        break;
    }
    case JSON_ARRAY: {
        size_t i;
        json_t *e;
        g_string_append_c(out, '[');
        json_array_foreach(v, i, e) {
            if (i) {
                separator(out, pretty, depth + 1);
            } else {
                newline(out, pretty, depth + 1);
            }
            out_value(out, e, pretty, depth + 1);
        }
        newline(out, pretty, depth);
        g_string_append_c(out, ']');
        break;
    }
    case JSON_STRING:
        out_string(out, json_string_value(v));
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

void qmp_out_json(GString *out, json_t *v, bool pretty)
{
    out_value(out, v, pretty, 0);
}
