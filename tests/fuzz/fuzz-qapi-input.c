/*
 * libFuzzer target: random text through the generated readers of the two
 * big unions, BlockdevOptions (blockdev-add, --blockdev) and
 * BlockdevCreateOptions (blockdev-create), and of MigrationAddress
 * (migrate's channels: a union with a union, SocketAddress, as a branch).
 * The first byte chooses the type (bit 2 set: MigrationAddress, else bit
 * 0) and the syntax (bit 1: JSON or dotted keys); the rest is the
 * text.  Whatever it says, the reader ends in a value or an error, never a
 * crash, a leak or a sanitizer report; and a value it accepts is written
 * back as JSON that reads again as the very same value.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "strata/opts.h"
#include "qapi-visit.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* The round trip: a value's JSON reads back and writes out identically. */
#define ROUND_TRIP(T, value)                                              \
    do {                                                                  \
        json_t *out = qapi_##T##_to_json(value);                          \
        T *again = qapi_##T##_from_json(out, NULL);                       \
        if (!again) {                                                     \
            abort();                                                      \
        }                                                                 \
        json_t *out2 = qapi_##T##_to_json(again);                         \
        if (!json_equal(out, out2)) {                                     \
            abort();                                                      \
        }                                                                 \
        json_decref(out2);                                                \
        json_decref(out);                                                 \
        qapi_free_##T(again);                                             \
    } while (0)

static json_t *tree_of(const char *text, bool keyval)
{
    bool kv;
    if (!keyval) {
        return opts_parse_json(text, NULL);
    }
    /* Dotted keys only: a leading '{' would switch to JSON. */
    if (text[0] == '{') {
        return NULL;
    }
    return qapi_parse_cmdline(text, "driver", &kv, NULL);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1) {
        return 0;
    }
    bool create = data[0] & 1;
    bool keyval = data[0] & 2;
    char *text = g_strndup((const char *)data + 1, size - 1);
    json_t *tree = tree_of(text, keyval);
    g_free(text);
    if (!tree) {
        return 0;
    }
    GError *err = NULL;
    if (data[0] & 4) {
        MigrationAddress *a = keyval
            ? qapi_MigrationAddress_from_keyval(tree, &err)
            : qapi_MigrationAddress_from_json(tree, &err);
        if (a) {
            ROUND_TRIP(MigrationAddress, a);
            qapi_free_MigrationAddress(a);
        }
    } else if (create) {
        BlockdevCreateOptions *o = keyval
            ? qapi_BlockdevCreateOptions_from_keyval(tree, &err)
            : qapi_BlockdevCreateOptions_from_json(tree, &err);
        if (o) {
            ROUND_TRIP(BlockdevCreateOptions, o);
            qapi_free_BlockdevCreateOptions(o);
        }
    } else {
        BlockdevOptions *o = keyval
            ? qapi_BlockdevOptions_from_keyval(tree, &err)
            : qapi_BlockdevOptions_from_json(tree, &err);
        if (o) {
            ROUND_TRIP(BlockdevOptions, o);
            qapi_free_BlockdevOptions(o);
        }
    }
    /* Exactly one of value and error. */
    g_clear_error(&err);
    json_decref(tree);
    return 0;
}
