/*
 * "Format specific information" in QEMU's text layout.
 */
#include <stdio.h>
#include "strata/json-out.h"
#include "tool-common.h"

void tool_dump_specific_info(json_t *info, int indent)
{
    json_t *data = json_object_get(info, "data");
    GString *out = g_string_new(NULL);

    if (data && json_is_object(data) && json_object_get(info, "type")) {
        info = data;
    }
    json_out_human(out, info, indent);
    fputs(out->str, stdout);
    g_string_free(out, true);
}
