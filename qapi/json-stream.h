/*
 * QMP input cut into messages: bytes from a connection go in as they come,
 * complete requests (or the error that replaces a malformed one) come out,
 * each with whether it asks for out-of-band execution.
 */
#ifndef QAPI_JSON_STREAM_H
#define QAPI_JSON_STREAM_H

#include <stdbool.h>
#include <stddef.h>
#include <glib.h>
#include <jansson.h>

typedef struct QmpMessage {
    json_t *req;        /* the request as sent, or NULL when err is set */
    GError *err;        /* what was wrong with the input */
    bool oob;           /* 'exec-oob' without 'execute': not queued */
    int *fds;           /* descriptors that came with it (closed on free) */
    int n_fds;
} QmpMessage;

typedef void QmpMessageFn(void *opaque, QmpMessage *msg);

typedef struct QmpStream QmpStream;

QmpStream *qmp_stream_new(QmpMessageFn *fn, void *opaque);
void qmp_stream_feed(QmpStream *st, const void *buf, size_t len);
void qmp_stream_free(QmpStream *st);
void qmp_message_free(QmpMessage *msg);

#endif
