/*
 * Print what query-qmp-schema returns (one JSON array on stdout), for the
 * iotest qmp-schema-compat, which compares it with qemu-storage-daemon's.
 */
#include <stdio.h>
#include "strata/qmp.h"

int main(void)
{
    json_t *schema = qmp_introspection();
    if (!schema) {
        fprintf(stderr, "qapi-introspect-dump: no introspection data\n");
        return 1;
    }
    int rc = json_dumpf(schema, stdout, JSON_INDENT(1)) ? 1 : 0;
    putchar('\n');
    json_decref(schema);
    return rc;
}
