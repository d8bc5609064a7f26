/*
 * Options: one tree for every source.
 *
 * Node options are a jansson object tree (the QDict of QEMU).  They come from
 * dotted key=value strings on the command line ("driver=raw,file.filename=x",
 * values stay strings), from JSON ("json:{...}" filenames, QMP), or from code.
 * Drivers *take* the options they understand (the key is removed); whatever
 * is left when a node is open is an error naming the first unknown key.
 * The typed getters accept both JSON types and their string spellings, so a
 * driver does not care where its options came from.
 */
#ifndef STRATA_OPTS_H
#define STRATA_OPTS_H

#include <jansson.h>
#include <stdbool.h>
#include <stdint.h>
#include <glib.h>

/*
 * Parse "a=1,b.c=2,flag" into a nested object.  ",," escapes a comma.  A
 * leading element without '=' is assigned to implied_key (if non-NULL, e.g.
 * "driver" or "filename"), otherwise it is an error.
 */
json_t *opts_parse_keyval(const char *str, const char *implied_key,
                          GError **errp);
/*
 * Turn objects whose keys are all list indexes ("a.0=x,a.1=y") into arrays,
 * as QEMU's keyval parser does before the schema reads the tree; mixing
 * indexes and names, or a gap, is an error in QEMU's words.  Trees for
 * the generated QAPI readers go through it; drivers' own option trees do
 * not (they take "children.0" style keys themselves).
 */
bool opts_keyval_listify(json_t *obj, GError **errp);
/*
 * Parse JSON text as QEMU does (single-quoted strings, "\'" escapes,
 * integers up to 2^64-1, duplicate keys refused), with QEMU's messages
 * ("JSON parse error, stray '@'", "Expecting a JSON value").  Any JSON
 * value; integers above INT64_MAX become their digits as a string.
 */
json_t *opts_parse_json(const char *text, GError **errp);
/* Merge dotted-key pairs into obj (later keys win). */
bool opts_set_dotted(json_t *obj, const char *key, json_t *val, GError **errp);
/* Flatten nested objects into "a.b" keys (new reference). */
json_t *opts_flatten(json_t *obj);
/* Detach the sub-object "prefix.*" (nested object or flattened keys). */
json_t *opts_take_subtree(json_t *obj, const char *prefix);

/*
 * Typed takers: if the key is absent, leave *out untouched and return true.
 * If present, remove it, convert, and return true; on a conversion error set
 * QEMU's message ("Parameter 'size' expects a non-negative number below
 * 2^64") and return false.
 */
bool opts_take_str(json_t *obj, const char *key, char **out, GError **errp);
bool opts_take_bool(json_t *obj, const char *key, bool *out, GError **errp);
bool opts_take_size(json_t *obj, const char *key, uint64_t *out, GError **errp);
bool opts_take_int(json_t *obj, const char *key, int64_t *out, GError **errp);
/* QEMU's "number" type: any base, a leading minus wraps around. */
bool opts_take_number(json_t *obj, const char *key, uint64_t *out,
                      GError **errp);
/* Enumerations: *out is the index in names[] (NULL-terminated). */
bool opts_take_enum(json_t *obj, const char *key, const char *const *names,
                    int *out, GError **errp);
/* Peek without removing (string form); NULL if absent.  Caller frees. */
char *opts_get_str(json_t *obj, const char *key);

/* First key left in obj, flattened ("file.x"), or NULL.  Caller frees. */
char *opts_first_key(json_t *obj);

#endif
