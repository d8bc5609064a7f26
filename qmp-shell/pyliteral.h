/*
 * The Python literal subset qmp-shell accepts for a '{' or '[' value that
 * is not strict JSON (it hands those to Python's ast.literal_eval after
 * turning true/false/null into Python's names): single- or double-quoted
 * strings with Python's escapes, integers (decimal, 0x, 0o, 0b, with '_'),
 * floats, True/False/None (and true/false/null), lists, tuples, dicts.
 */
#ifndef STRATA_SHELL_PYLITERAL_H
#define STRATA_SHELL_PYLITERAL_H

#include <stdbool.h>
#include <glib.h>
#include <jansson.h>

typedef enum {
    PYLIT_OK,
    PYLIT_SYNTAX,       /* not a literal qmp-shell could send: a string then */
    PYLIT_RANGE,        /* an integer beyond 64 bits */
} PyLiteralStatus;

PyLiteralStatus py_literal_parse(const char *text, json_t **out);

/* Python's int() on a base-10 string: [+-]digits with single '_' between
 * digits.  Returns false if it is not one; *overflow when it does not fit. */
bool py_int_parse(const char *s, size_t len, gint64 *out, bool *overflow);

#endif
