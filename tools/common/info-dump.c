/*
 * "Format specific information" in QEMU's text layout.
 *
 * QEMU converts the driver's info struct to a QDict and walks it in hash
 * bucket order, so the keys come out in an order that is neither the
 * struct's nor alphabetical.  To print the same lines we sort the keys the
 * way QDict iterates: by bucket (QEMU's tdb-style hash of the key modulo
 * 512), and within a bucket the key inserted last comes first.
 */
#include <stdio.h>
#include <string.h>
#include "tool-common.h"

#define QDICT_BUCKETS 512

static unsigned qdict_bucket(const char *key)
{
    uint32_t value = 0x238F13AFu * (uint32_t)strlen(key);

    for (unsigned i = 0; key[i]; i++) {
        value += (uint32_t)(unsigned char)key[i] << (i * 5 % 24);
    }
    return (1103515243u * value + 12345u) % QDICT_BUCKETS;
}

typedef struct KeyOrder {
    const char *key;
    json_t *value;
    unsigned bucket;
    size_t index; /* insertion order */
} KeyOrder;

static int key_order_cmp(const void *a, const void *b)
{
    const KeyOrder *x = a, *y = b;

    if (x->bucket != y->bucket) {
        return x->bucket < y->bucket ? -1 : 1;
    }
    /* Same bucket: QEMU inserts at the head, so newer first. */
    return x->index > y->index ? -1 : (x->index < y->index ? 1 : 0);
}

static void dump_value(json_t *v, int indent);

static bool is_composite(json_t *v)
{
    return json_is_object(v) || json_is_array(v);
}

static void dump_scalar(json_t *v)
{
    if (json_is_string(v)) {
        fputs(json_string_value(v), stdout);
    } else if (json_is_integer(v)) {
        printf("%" JSON_INTEGER_FORMAT, json_integer_value(v));
    } else if (json_is_real(v)) {
        /* QEMU's qnum_to_string(): shortest %.17g form. */
        printf("%.17g", json_real_value(v));
    } else if (json_is_boolean(v)) {
        fputs(json_is_true(v) ? "true" : "false", stdout);
    } else {
        fputs("null", stdout);
    }
}

static void dump_object(json_t *obj, int indent)
{
    size_t n = json_object_size(obj), i = 0;
    KeyOrder *keys = g_new(KeyOrder, n ? n : 1);
    const char *key;
    json_t *value;

    json_object_foreach(obj, key, value) {
        keys[i] = (KeyOrder){ key, value, qdict_bucket(key), i };
        i++;
    }
    qsort(keys, n, sizeof(*keys), key_order_cmp);
    for (i = 0; i < n; i++) {
        char *shown = g_strdup(keys[i].key);
        bool composite = is_composite(keys[i].value);

        g_strdelimit(shown, "-", ' ');
        printf("%*s%s:%c", indent * 4, "", shown, composite ? '\n' : ' ');
        dump_value(keys[i].value, indent + 1);
        if (!composite) {
            putchar('\n');
        }
        g_free(shown);
    }
    g_free(keys);
}

static void dump_array(json_t *arr, int indent)
{
    size_t i;
    json_t *value;

    json_array_foreach(arr, i, value) {
        bool composite = is_composite(value);

        printf("%*s[%zu]:%c", indent * 4, "", i, composite ? '\n' : ' ');
        dump_value(value, indent + 1);
        if (!composite) {
            putchar('\n');
        }
    }
}

static void dump_value(json_t *v, int indent)
{
    if (json_is_object(v)) {
        dump_object(v, indent);
    } else if (json_is_array(v)) {
        dump_array(v, indent);
    } else {
        dump_scalar(v);
    }
}

void tool_dump_specific_info(json_t *info, int indent)
{
    json_t *data = json_object_get(info, "data");

    if (data && json_is_object(data) && json_object_get(info, "type")) {
        info = data;
    }
    dump_value(info, indent);
}
