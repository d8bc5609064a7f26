/*
 * JSON text exactly as Python's json.dumps writes it (ensure_ascii,
 * ", " and ": " separators; with pretty, indent=4 and sorted keys), which
 * is what qmp-shell prints: the same request gives the same bytes in
 * both shells, so -v output can be compared and pasted.
 */
#ifndef STRATA_SHELL_PYJSON_H
#define STRATA_SHELL_PYJSON_H

#include <stdbool.h>
#include <glib.h>
#include <jansson.h>

char *py_json_dumps(const json_t *v, bool pretty);

/* Python's repr() of a finite double ("1.0", "1e+16", "0.1"). */
char *py_float_repr(double d);

#endif
