/*
 * QEMU's QDict iteration order, which its tools' text and JSON outputs
 * follow.  QEMU converts an info struct to a QDict and walks its hash
 * table, so keys come out in an order that is neither the struct's nor
 * alphabetical: bucket by bucket (QEMU's tdb-style string hash modulo
 * 512), and inside one bucket the key inserted last first.  jansson keeps
 * insertion order, so callers insert keys in QAPI schema order (QEMU's
 * insertion order) and sort them here.
 */
#include <stdlib.h>
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

static int member_cmp(const void *a, const void *b)
{
    const ToolDictMember *x = a, *y = b;

    if (x->bucket != y->bucket) {
        return x->bucket < y->bucket ? -1 : 1;
    }
    /* Same bucket: QEMU inserts at the head, so newer first. */
    return x->index > y->index ? -1 : (x->index < y->index ? 1 : 0);
}

ToolDictMember *tool_qdict_members(json_t *obj, size_t *n)
{
    size_t i = 0;
    ToolDictMember *m;
    const char *key;
    json_t *value;

    *n = json_object_size(obj);
    m = g_new(ToolDictMember, *n ? *n : 1);
    json_object_foreach(obj, key, value) {
        m[i] = (ToolDictMember){ key, value, qdict_bucket(key), i };
        i++;
    }
    qsort(m, *n, sizeof(*m), member_cmp);
    return m;
}
