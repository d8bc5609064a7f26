/*
 * QMP framing.  QMP has no framing of its own: a request ends where its
 * outermost brace closes, so the stream is cut by QEMU's own JSON splitter
 * (util/json-parse.c), which also decides the errors: a stray byte, a parse
 * error, a token, size or nesting limit.  After an error the reader goes on
 * with the next bytes, so one bad request costs the client one error reply,
 * never the connection.
 */
#include <unistd.h>

#include "json-stream.h"
#include "strata/error.h"
#include "strata/json-reader.h"

struct QmpStream {
    JsonReader *reader;
    QmpMessageFn *fn;
    void *opaque;
};

/* QEMU's test: a request is out-of-band when it names only 'exec-oob'. */
static bool is_oob(json_t *req)
{
    return json_is_object(req) && json_object_get(req, "exec-oob") &&
           !json_object_get(req, "execute");
}

static void on_value(void *opaque, json_t *value, GError *err)
{
    QmpStream *st = opaque;
    QmpMessage *msg = g_new0(QmpMessage, 1);

    if (!value && !err) {
        err = g_error_new_literal(STRATA_ERROR, 0,
                                  "JSON parse error, expecting value");
    }
    msg->req = value;
    msg->err = err;
    msg->oob = value && is_oob(value);
    st->fn(st->opaque, msg);
}

QmpStream *qmp_stream_new(QmpMessageFn *fn, void *opaque)
{
    QmpStream *st = g_new0(QmpStream, 1);

    st->fn = fn;
    st->opaque = opaque;
    st->reader = json_reader_new(on_value, st);
    return st;
}

void qmp_stream_feed(QmpStream *st, const void *buf, size_t len)
{
    json_reader_feed(st->reader, buf, len);
}

void qmp_stream_free(QmpStream *st)
{
    if (st) {
        json_reader_free(st->reader);
        g_free(st);
    }
}

void qmp_message_free(QmpMessage *msg)
{
    if (msg) {
        json_decref(msg->req);
        g_clear_error(&msg->err);
        for (int i = 0; i < msg->n_fds; i++) {
            close(msg->fds[i]);
        }
        g_free(msg->fds);
        g_free(msg);
    }
}
