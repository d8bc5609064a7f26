/*
 * QEMU's JSON dialect read from a stream (a QMP connection): bytes come in
 * pieces of any size, a value may be split anywhere and several may come in
 * one piece.  Each complete value, or each error (a stray byte, a parse
 * error, a size or nesting limit), is handed to the callback as soon as it
 * is known, with the same messages QEMU's JSON streamer gives; the reader
 * then goes on with the bytes that follow, as QEMU's does.
 */
#ifndef STRATA_JSON_READER_H
#define STRATA_JSON_READER_H

#include <stddef.h>
#include <glib.h>
#include <jansson.h>

/* Exactly one of value and err is set; both are the callee's. */
typedef void JsonReaderEmit(void *opaque, json_t *value, GError *err);

typedef struct JsonReader JsonReader;

JsonReader *json_reader_new(JsonReaderEmit *emit, void *opaque);
void json_reader_feed(JsonReader *jr, const void *buf, size_t len);
void json_reader_free(JsonReader *jr);

#endif
