/*
 * QMP's output text: what QEMU's JSON writer prints for a QDict built in the
 * same insertion order (members sorted as QEMU's hash table iterates them,
 * QEMU's string escapes, its pretty layout).  Private to the server.
 *
 * Intended to give way to util/json-out (issue 11's shared JSON output unit)
 * once that lands: the two must print the same bytes.
 */
#ifndef QAPI_QMP_OUT_H
#define QAPI_QMP_OUT_H

#include <glib.h>
#include <jansson.h>
#include <stdbool.h>

/* Append v's text to out: one line, or QEMU's pretty=on layout. */
void qmp_out_json(GString *out, json_t *v, bool pretty);

/* The members of obj in QEMU's QDict iteration order; caller g_free()s. */
typedef struct {
    const char *key;
    json_t *value;
} QmpOutMember;
QmpOutMember *qmp_out_members(json_t *obj, size_t *n);

#endif
