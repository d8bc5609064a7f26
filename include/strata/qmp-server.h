/*
 * The QMP server's side for programs (strata-daemon, tests) and for the few
 * handlers that deal with the connection itself (qmp_capabilities, getfd,
 * add-fd, quit).  Commands are found through qmp_command_find() (qmp.h);
 * the server never knows a command's arguments.
 *
 * A monitor is one listening socket (QEMU's --monitor on a socket chardev)
 * with its output style; every client that connects to it gets its own
 * session: greeting, capabilities negotiation, its requests answered in
 * order, events once negotiated.  Unlike QEMU, which serves one client per
 * socket chardev at a time and leaves the next in the listen backlog, a
 * monitor here serves all its clients at once.
 */
#ifndef STRATA_QMP_SERVER_H
#define STRATA_QMP_SERVER_H

#include <stdbool.h>
#include <stddef.h>
#include <glib.h>
#include <jansson.h>
#include "strata/qmp.h"

typedef struct QmpMonitor QmpMonitor;

/*
 * Serve QMP on listen_fd, a socket already bound and listening (the monitor
 * owns it from now on).  pretty: QEMU's pretty=on output.
 */
QmpMonitor *qmp_monitor_new(int listen_fd, bool pretty);
/*
 * QEMU's stdio chardev: one session reading stdin and writing stdout (both
 * made non-blocking while it lasts); it ends at end of input.
 */
QmpMonitor *qmp_monitor_new_stdio(bool pretty);
/*
 * A monitor with no socket of its own: it serves the connections given to
 * qmp_monitor_add_client() (a client chardev's, server=off).
 */
QmpMonitor *qmp_monitor_new_connected(bool pretty);
/*
 * closed(opaque) runs when one of the monitor's sessions ends (its peer
 * hung up or it was dropped): a client chardev then reconnects.
 */
void qmp_monitor_on_session_end(QmpMonitor *mon, void (*closed)(void *),
                                void *opaque);
/* Serve a client already connected (chardev wait=on waited for it). */
void qmp_monitor_add_client(QmpMonitor *mon, int fd);
/* A client is connected (a QmpMonitor *; chardev_set_user()'s callback). */
bool qmp_monitor_has_clients(void *mon);
/* Disconnect its clients, close its socket, close its getfd descriptors. */
void qmp_monitor_free(QmpMonitor *mon);

/*
 * Stop serving: every monitor is freed; output already queued is written
 * when the socket takes it without waiting.
 */
void qmp_server_shutdown(void);

/*
 * Serve no client until release: monitors made meanwhile neither accept
 * nor read (the daemon's command line, as qemu-storage-daemon's, is
 * processed completely before any request runs).
 */
void qmp_server_hold_input(void);
void qmp_server_release_input(void);

/* Requests still running (a clean shutdown waits for them). */
unsigned qmp_server_busy(void);

/*
 * A session whose client leaves more than this many bytes of replies and
 * events unread is disconnected (default 16 MiB).
 */
void qmp_server_set_output_limit(size_t bytes);

/*
 * Send at most one `event` per period_ms for each distinct `data`, as
 * QEMU's monitor does for the events a guest can trigger: the first goes
 * out at once; later ones in the period replace each other and the last
 * is sent when the period ends (with the time it happened), which starts
 * a new period.  For events a client outside the daemon can cause in a
 * flood (BLOCK_IO_ERROR from an export's clients).  Whatever is held when
 * the server shuts down is dropped, as in QEMU.
 */
void qmp_server_throttle_event(const char *event, unsigned period_ms);

/*
 * Commands fn refuses are answered as if they did not exist (args: the
 * request's "arguments", possibly NULL).  For the fuzz target, which may
 * run only what stays inside the process.
 */
typedef bool QmpCommandFilter(const char *name, json_t *args);
void qmp_server_set_command_filter(QmpCommandFilter *fn);

/* Called by `quit` after its reply is queued; the program stops its loop. */
void qmp_server_set_quit_handler(void (*fn)(void));
void qmp_server_request_quit(void);

/*
 * What the daemon undoes when it stops (SIGTERM, SIGINT, quit), in QEMU's
 * order: exports closed, then (everything drained) jobs cancelled, then the
 * nodes the monitor owns closed, which flushes them and leaves qcow2 images
 * clean.  The parts that own exports, jobs and monitor-owned nodes register
 * here; the daemon runs the phases once its loop has stopped.
 */
typedef enum {
    QMP_SHUTDOWN_EXPORTS,
    QMP_SHUTDOWN_JOBS,
    QMP_SHUTDOWN_NODES,
    QMP_SHUTDOWN__MAX,
} QmpShutdownPhase;
void qmp_server_at_shutdown(QmpShutdownPhase phase, void (*fn)(void));
void qmp_server_run_shutdown(QmpShutdownPhase phase);

/* ---- for the connection handlers (caller from qmp_session_current()) ---- */

/*
 * Leave capabilities negotiation, enabling out-of-band execution if oob.
 * Refused, with QEMU's CommandNotFound text, if already done.
 */
bool qmp_session_negotiate(QmpSession *s, bool oob, GError **errp);

/*
 * The descriptor that came with the request by SCM_RIGHTS (the caller owns
 * it), or -1 if none came.
 */
int qmp_session_take_fd(QmpSession *s);

/* Named descriptors of the session's monitor (getfd / closefd). */
void qmp_session_set_named_fd(QmpSession *s, const char *name, int fd);
bool qmp_session_close_named_fd(QmpSession *s, const char *name);
/* The named descriptor (still owned by the monitor), or -1. */
int qmp_session_named_fd(QmpSession *s, const char *name);
/* The named descriptor, removed from the monitor (the caller owns it),
 * or -1. */
int qmp_session_take_named_fd(QmpSession *s, const char *name);

#endif
