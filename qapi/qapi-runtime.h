/*
 * What the generated QAPI code (qapi/gen) is built on: the walk over a
 * jansson tree that turns it into C types, with QEMU 7.2's messages for
 * arguments that are missing, unexpected or of the wrong type, and the
 * few helpers the C -> JSON direction needs.
 *
 * The input has two modes.  JSON (QMP arguments, --blockdev '{...}') takes
 * each scalar in its JSON type.  Keyval (dotted keys on a command line,
 * "driver=file,cache.direct=on") has every scalar as a string and converts
 * it by the schema type: integers in any base, sizes with suffixes, bools
 * as on/off/yes/no/true/false.  Error names follow QEMU: "file.filename",
 * "children[1]" in JSON mode and "children.1" in keyval mode.
 */
#ifndef STRATA_QAPI_RUNTIME_H
#define STRATA_QAPI_RUNTIME_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <jansson.h>
#include <glib.h>

/* Which branch of an alternate a value took (by its JSON type). */
typedef enum QType {
    QTYPE_NONE,
    QTYPE_QNULL,
    QTYPE_QNUM,
    QTYPE_QSTRING,
    QTYPE_QDICT,
    QTYPE_QLIST,
    QTYPE_QBOOL,
    QTYPE__MAX,
} QType;

/* One container (object or array) being read, linked to the one around it. */
typedef struct QapiIn {
    const struct QapiIn *up;
    const char *name;       /* what the container was read as; NULL: none */
    json_t *obj;
    bool keyval;
    size_t index;           /* arrays: the element being read */
    const char **used;      /* objects: keys read so far */
    size_t n_used, cap_used;
    const char *used_inline[8];   /* small: frames nest with the input */
} QapiIn;

/* A root frame for reading `root` (which the generated code then checks). */
void qapi_in_init(QapiIn *root, bool keyval);
void qapi_in_push(QapiIn *in, const QapiIn *up, const char *name, json_t *obj);
void qapi_in_pop(QapiIn *in);
/* QEMU's name for `name` inside `in` ("a.b[2].c"); valid until next call. */
const char *qapi_in_full_name(const QapiIn *in, const char *name);

/* Member `key` of the object being read (NULL if absent), marked as read. */
json_t *qapi_in_member(QapiIn *in, const char *key);
bool qapi_in_missing(const QapiIn *in, const char *key, GError **errp);
/* After the members: anything not read is "Parameter 'x' is unexpected". */
bool qapi_in_check_struct(const QapiIn *in, GError **errp);
/* Starting an object or array value: its JSON type is right. */
bool qapi_in_is_object(const QapiIn *in, const char *name, json_t *v,
                       GError **errp);
bool qapi_in_is_array(const QapiIn *in, const char *name, json_t *v,
                      GError **errp);

/* Scalars: `in` is the container, `name` the member (NULL in an array). */
bool qapi_read_str(const QapiIn *in, const char *name, json_t *v, char **out,
                 GError **errp);
bool qapi_read_int(const QapiIn *in, const char *name, json_t *v,
                 int64_t min, int64_t max, const char *ctype, int64_t *out,
                 GError **errp);
bool qapi_read_uint(const QapiIn *in, const char *name, json_t *v,
                  uint64_t max, const char *ctype, uint64_t *out,
                  GError **errp);
bool qapi_read_size(const QapiIn *in, const char *name, json_t *v,
                  uint64_t *out, GError **errp);
bool qapi_read_number(const QapiIn *in, const char *name, json_t *v,
                    double *out, GError **errp);
bool qapi_read_bool(const QapiIn *in, const char *name, json_t *v, bool *out,
                  GError **errp);
bool qapi_read_any(const QapiIn *in, const char *name, json_t *v, json_t **out,
                 GError **errp);
bool qapi_read_null(const QapiIn *in, const char *name, json_t *v, json_t **out,
                  GError **errp);
/* Enumerations: the index of the value in names[] (n of them). */
bool qapi_read_enum(const QapiIn *in, const char *name, json_t *v,
                  const char *const *names, int n, int *out, GError **errp);
/* An alternate got a value of a JSON type none of its branches takes. */
void qapi_in_alternate_error(const char *name, const char *type_name,
                             GError **errp);
/*
 * For an alternate in keyval mode: every scalar is a string, so a string
 * may stand for a number or a bool.  True if `v` reads as that type.
 */
bool qapi_in_keyval_looks(const QapiIn *in, json_t *v, const char *json_type);

/* Enumerations' lookup (-1 if unknown). */
int qapi_enum_parse(const char *const *names, int n, const char *s);

/* C -> JSON: strings that are not valid UTF-8 get U+FFFD, never dropped. */
json_t *qapi_write_str(const char *s);
json_t *qapi_write_uint(uint64_t v);

/*
 * The command line: "{...}" is JSON, anything else dotted keys with
 * `implied_key` for a leading bare value; *keyval says which, for the
 * generated qapi_T_from_json() / qapi_T_from_keyval().
 */
json_t *qapi_parse_cmdline(const char *str, const char *implied_key,
                           bool *keyval, GError **errp);

#endif
