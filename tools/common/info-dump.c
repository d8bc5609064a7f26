/*
 * "Format specific information" in QEMU's text layout.  QEMU prints the
 * driver's info struct from a QDict, so the keys come in QDict order
 * (see qdict-order.c).
 */
#include <stdio.h>
#include <string.h>
#include "tool-common.h"

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
    size_t n;
    ToolDictMember *keys = tool_qdict_members(obj, &n);

    for (size_t i = 0; i < n; i++) {
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
