/*
 * A QMP client connection: a unix socket path or host:port (as qmp-shell
 * reads its address argument), the greeting, qmp_capabilities, requests
 * and their replies, and the events that arrive in between.  Messages are
 * split by JSON nesting, not by lines, so a monitor with pretty=on works.
 */
#ifndef STRATA_SHELL_CONN_H
#define STRATA_SHELL_CONN_H

#include <stdbool.h>
#include <glib.h>
#include <jansson.h>

typedef void QmpEventFunc(json_t *event, void *opaque);

typedef struct QmpConn {
    int fd;
    GByteArray *in;         /* bytes received, not yet a whole message */
    size_t scanned;         /* how far `in` has been scanned */
    int depth;              /* scanner state: nesting, string, escape */
    bool in_string, escaped;
    json_t *greeting;       /* NULL when not awaited (-N) */
    QmpEventFunc *on_event;
    void *opaque;
} QmpConn;

typedef enum {
    QMP_ADDRESS_UNIX,
    QMP_ADDRESS_INET,
    QMP_ADDRESS_BAD_PORT,   /* "host:port" with a port that is no number */
} QmpAddressKind;

/* Split ADDRESS as qmp-shell does: exactly one ':' makes it host:port. */
QmpAddressKind qmp_parse_address(const char *address, char **host,
                                 int *port);

/*
 * Connect; await the greeting and negotiate unless NEGOTIATE is false
 * (then whatever greeting comes is dropped, as qmp-shell -N does).  The
 * message is qmp-shell's "Failed to establish connection: ..." part.
 */
QmpConn *qmp_conn_open(const char *address, bool negotiate,
                       QmpEventFunc *on_event, void *opaque, GError **errp);
void qmp_conn_close(QmpConn *c);

/* Send CMD and wait for its reply; events met on the way go to on_event.
 * NULL with *errp when the connection ends. */
json_t *qmp_conn_execute(QmpConn *c, json_t *cmd, GError **errp);

/* Like qmp_conn_execute for a command without arguments; the "return"
 * member of a success, NULL for an error reply or a lost connection. */
json_t *qmp_conn_query(QmpConn *c, const char *command);

/* Hand out the events already received with an earlier reply (they are
 * in the buffer, so polling the socket would not see them). */
void qmp_conn_dispatch(QmpConn *c);

/* Read what is waiting (the socket polled readable) and hand out events.
 * false when the connection has ended. */
bool qmp_conn_pump(QmpConn *c);

#endif
