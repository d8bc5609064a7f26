/*
 * JSON and text output the way QEMU writes it, for everything that must
 * match QEMU byte for byte: the tools' --output=json, "json:{...}"
 * filenames, the human "Format specific information" dump, and QMP
 * replies and events.
 *
 * QEMU builds its output from a QDict, a hash table, so object members
 * come out bucket by bucket (its string hash modulo 512) and, inside one
 * bucket, newest first.  jansson keeps insertion order, so callers insert
 * members in QEMU's order (the QAPI schema's) and these functions sort
 * them as QEMU's QDict would iterate.
 */
#ifndef STRATA_JSON_OUT_H
#define STRATA_JSON_OUT_H

#include <glib.h>
#include <jansson.h>
#include <stddef.h>

/* The bucket of QEMU's QDict hash table that key falls into. */
unsigned json_qdict_bucket(const char *key);

typedef struct JsonMember {
    const char *key;
    json_t *value;
    unsigned bucket;
    size_t index;       /* insertion position */
} JsonMember;

/*
 * The *n members of obj in QEMU's QDict iteration order, given that they
 * were inserted in QEMU's insertion order.  Caller g_free()s.
 */
JsonMember *json_qdict_members(json_t *obj, size_t *n);

/*
 * str as a JSON string the way QEMU quotes it: every code point outside
 * printable ASCII as \uXXXX (uppercase hex, surrogate pairs above U+FFFF),
 * invalid (modified) UTF-8 as \uFFFD.
 */
void json_out_string(GString *out, const char *str);

/* v on one line with ", " and ": " separators (QMP, json: filenames). */
void json_out_compact(GString *out, json_t *v);

/*
 * v pretty-printed as QEMU's tools and QMP's pretty=on do: four spaces a
 * level, and an empty container still closes on a line of its own.
 * indent: the level v starts at.
 */
void json_out_pretty(GString *out, json_t *v, int indent);

/* Convenience: the compact or pretty text of v (caller g_free()s). */
char *json_out_compact_str(json_t *v);
char *json_out_pretty_str(json_t *v);

/*
 * v as QEMU's human-readable dump of a QAPI object ("Format specific
 * information" of qemu-img info and qemu-io info): one "key: value" line
 * per member in QDict order, dashes in keys shown as spaces, list entries
 * as "[N]:", nested values four spaces deeper, starting `indent` levels in.
 */
void json_out_human(GString *out, json_t *v, int indent);

#endif
