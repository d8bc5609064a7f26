/*
 * The QMP server: sessions on monitor sockets, capabilities negotiation,
 * dispatch of requests to the generated command table, replies and events.
 *
 * Every request runs in a coroutine of its own, so a command that waits
 * (drain, flush, a job) leaves the loop and every other client running.
 * A session's in-band requests are answered in the order they came (QEMU
 * runs them one at a time); an out-of-band request, once 'oob' is
 * negotiated, runs as soon as it is read.  Nothing a client does can block
 * the daemon: sockets are non-blocking, input stops being read while a
 * session has many requests queued, and unread output is bounded (the
 * client is disconnected past the bound).
 */
#include <errno.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>
#include <glib-unix.h>

#include "strata/coroutine.h"
#include "strata/fdset.h"
#include "strata/loop.h"
#include "strata/qmp-server.h"
#include "json-stream.h"
#include "strata/json-out.h"

/* Requests queued per session before its input is left unread. */
#define QUEUE_MAX       8
#define READ_CHUNK      65536
#define MAX_MSGFDS      16

struct QmpMonitor {
    int listen_fd;
    GSource *listen_src;
    bool pretty;
    GList *sessions;
    GHashTable *named_fds;      /* getfd: name -> fd, as QEMU per monitor */
    void (*session_end)(void *);
    void *session_end_opaque;
};

struct QmpSession {
    int refcnt;
    QmpMonitor *mon;
    int fd;                     /* a socket; or, for stdio, */
    int out_fd;                 /* where output goes (fd is the input) */
    bool stdio;
    bool closed;
    /*
     * stdin has ended: no more requests, but stdout still takes replies and
     * events until the monitor goes (QEMU's CHR_EVENT_CLOSED on stdio)
     */
    bool input_ended;
    GSource *in_src, *out_src;
    QmpStream *stream;
    bool negotiated;
    bool oob;
    GQueue queue;               /* QmpMessage *, in-band, in arrival order */
    bool busy;                  /* an in-band request is running */
    GString *out;
    size_t out_off;
    /*
     * The longest message queued since the output was last empty: a reply
     * may legitimately be large (it echoes an id of megabytes, the schema),
     * so it does not count against the bound, which is for a client that
     * lets messages pile up.
     */
    size_t out_biggest;
    /*
     * Descriptors received and not yet claimed: they go to the next request
     * read, and come back here if that request did not take them (so a
     * later getfd still finds them, as in QEMU, which reads no further
     * while an in-band request waits).
     */
    int msgfds[MAX_MSGFDS];
    int n_msgfds;
    /*
     * quit's reply, held until the server shuts down: qsd 7.2 sends it
     * after what its shutdown emits (JOB_STATUS_CHANGE of the jobs it
     * cancels and dismisses).
     */
    json_t *quit_reply;
};

typedef struct {
    QmpSession *s;
    QmpMessage *msg;
} Request;

static GList *monitors;
static GHashTable *current;     /* Coroutine * -> Request * */
static unsigned running;
static unsigned sessions_open;  /* QEMU's mon_refcount */
static size_t output_limit = 16 << 20;
static void (*quit_handler)(void);
static QmpCommandFilter *command_filter;

static void session_close(QmpSession *s);
static void session_kick(QmpSession *s);
static void session_watch_input(QmpSession *s);
static void session_end_input(QmpSession *s);

static GSList *shutdown_fns[QMP_SHUTDOWN__MAX];

void qmp_server_at_shutdown(QmpShutdownPhase phase, void (*fn)(void))
{
    shutdown_fns[phase] = g_slist_append(shutdown_fns[phase], (gpointer)fn);
}

void qmp_server_run_shutdown(QmpShutdownPhase phase)
{
    for (GSList *l = shutdown_fns[phase]; l; l = l->next) {
        ((void (*)(void))l->data)();
    }
}

void qmp_server_set_output_limit(size_t bytes)
{
    output_limit = bytes;
}

void qmp_server_set_command_filter(QmpCommandFilter *fn)
{
    command_filter = fn;
}

void qmp_server_set_quit_handler(void (*fn)(void))
{
    quit_handler = fn;
}

static bool quitting;

void qmp_server_request_quit(void)
{
    /* like QEMU, nothing queued behind quit runs */
    quitting = true;
    if (quit_handler) {
        quit_handler();
    }
}

unsigned qmp_server_busy(void)
{
    return running;
}

QmpSession *qmp_session_current(void)
{
    if (!current || !in_coroutine()) {
        return NULL;
    }
    Request *r = g_hash_table_lookup(current, co_self());
    return r ? r->s : NULL;
}

static void session_unref(QmpSession *s)
{
    if (--s->refcnt) {
        return;
    }
    json_decref(s->quit_reply);
    g_string_free(s->out, TRUE);
    g_free(s);
}

static GMainContext *ctx(void)
{
    return loop_context(loop_get());
}

static void drop_msgfds(QmpSession *s)
{
    for (int i = 0; i < s->n_msgfds; i++) {
        close(s->msgfds[i]);
    }
    s->n_msgfds = 0;
}

/* ---- output ---- */

static gboolean on_writable(gint fd, GIOCondition cond, gpointer opaque);

static void session_flush(QmpSession *s)
{
    while (s->out_off < s->out->len) {
        ssize_t n = s->stdio ?
            write(s->out_fd, s->out->str + s->out_off,
                  s->out->len - s->out_off) :
            send(s->fd, s->out->str + s->out_off,
                 s->out->len - s->out_off, MSG_NOSIGNAL);
        if (n < 0 && errno == EINTR) {
            continue;
        }
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
            break;
        }
        if (n <= 0) {
            session_close(s);   /* the client is gone */
            return;
        }
        s->out_off += n;
    }
    if (s->out_off == s->out->len) {
        g_string_truncate(s->out, 0);
        s->out_off = 0;
        s->out_biggest = 0;
        if (s->out_src) {
            g_source_destroy(s->out_src);
            g_source_unref(s->out_src);
            s->out_src = NULL;
        }
        return;
    }
    if (s->out->len - s->out_off > output_limit + s->out_biggest) {
        session_close(s);       /* it does not read: do not hold its output */
        return;
    }
    if (!s->out_src) {
        s->out_src = g_unix_fd_source_new(s->out_fd, G_IO_OUT);
        g_source_set_callback(s->out_src, (GSourceFunc)(void (*)(void))
                              on_writable, s, NULL);
        g_source_attach(s->out_src, ctx());
    }
}

static gboolean on_writable(gint fd, GIOCondition cond, gpointer opaque)
{
    QmpSession *s = opaque;

    s->refcnt++;
    session_flush(s);
    session_unref(s);
    return G_SOURCE_CONTINUE;   /* session_flush removes it when done */
}

/* Queue one message (stolen) for the client. */
static void session_send(QmpSession *s, json_t *msg)
{
    if (!s->closed) {
        /* QEMU's monitor ends every line, pretty ones too, with CR LF */
        size_t start = s->out->len;
        if (s->mon->pretty) {
            json_out_pretty(s->out, msg, 0);
        } else {
            json_out_compact(s->out, msg);
        }
        for (size_t i = start; i < s->out->len; i++) {
            if (s->out->str[i] == '\n') {
                g_string_insert_c(s->out, i++, '\r');
            }
        }
        g_string_append(s->out, "\r\n");
        s->out_biggest = MAX(s->out_biggest, s->out->len - start);
        session_flush(s);
    }
    json_decref(msg);
}

static void event_emit(json_t *ev)
{
    for (GList *m = monitors; m; m = m->next) {
        QmpMonitor *mon = m->data;
        for (GList *l = mon->sessions; l;) {
            QmpSession *s = l->data;
            l = l->next;        /* sending may close s */
            if (s->negotiated) {
                session_send(s, json_incref(ev));
            }
        }
    }
}

/* ---- throttled events (QEMU's monitor_qapi_event_queue) ---- */

typedef struct {
    json_t *held;               /* the latest event of the period, or NULL */
    GSource *timer;
} Throttle;

static GHashTable *throttled;   /* event name -> period in ms */
static GHashTable *throttles;   /* event name + data -> Throttle * */

static void throttle_free(gpointer p)
{
    Throttle *th = p;

    json_decref(th->held);
    g_source_destroy(th->timer);
    g_source_unref(th->timer);
    g_free(th);
}

void qmp_server_throttle_event(const char *event, unsigned period_ms)
{
    if (!throttled) {
        throttled = g_hash_table_new_full(g_str_hash, g_str_equal, g_free,
                                          NULL);
        throttles = g_hash_table_new_full(g_str_hash, g_str_equal, g_free,
                                          throttle_free);
    }
    g_hash_table_insert(throttled, g_strdup(event),
                        GUINT_TO_POINTER(period_ms));
}

static gboolean throttle_expired(gpointer key)
{
    Throttle *th = g_hash_table_lookup(throttles, key);

    if (th->held) {
        /* a new period starts now: glib re-arms the timer from here */
        json_t *ev = g_steal_pointer(&th->held);
        event_emit(ev);
        json_decref(ev);
        return G_SOURCE_CONTINUE;
    }
    g_hash_table_remove(throttles, key);    /* destroys this source */
    return G_SOURCE_REMOVE;
}

/* Send ev now, or hold it if its kind was sent less than a period ago. */
static void event_throttle(json_t *ev, const char *event, json_t *data,
                           unsigned period_ms)
{
    GString *key = g_string_new(event);

    g_string_append_c(key, '\n');
    if (data) {
        json_out_compact(key, data);
    }
    Throttle *th = g_hash_table_lookup(throttles, key->str);
    if (th) {
        json_decref(th->held);
        th->held = json_incref(ev);
        g_string_free(key, TRUE);
        return;
    }
    event_emit(ev);
    th = g_new0(Throttle, 1);
    th->timer = g_timeout_source_new(period_ms);
    char *k = g_string_free(key, FALSE);
    g_source_set_callback(th->timer, throttle_expired, k, NULL);
    g_source_attach(th->timer, ctx());
    g_hash_table_insert(throttles, k, th);
}

void qmp_event_send(const char *event, json_t *data)
{
    gint64 now = g_get_real_time();
    json_t *ts = json_object();

    json_object_set_new(ts, "seconds", json_integer(now / G_USEC_PER_SEC));
    json_object_set_new(ts, "microseconds",
                        json_integer(now % G_USEC_PER_SEC));

    json_t *ev = json_object();
    json_object_set_new(ev, "timestamp", ts);
    json_object_set_new(ev, "event", json_string(event));
    if (data) {
        json_object_set_new(ev, "data", data);
    }
    unsigned period = throttled ?
        GPOINTER_TO_UINT(g_hash_table_lookup(throttled, event)) : 0;
    if (period) {
        event_throttle(ev, event, data, period);
    } else {
        event_emit(ev);
    }
    json_decref(ev);
}

/* ---- dispatch ---- */

static json_t *error_reply(GError *err)
{
    const char *cls = err->domain == STRATA_ERROR ?
                      strata_error_class_name(err->code) : "GenericError";
    json_t *e = json_object();

    json_object_set_new(e, "class", json_string(cls ? cls : "GenericError"));
    /* a stray byte quoted in the message need not be UTF-8 */
    json_object_set_new(e, "desc", json_string_nocheck(err->message));
    json_t *rsp = json_object();
    json_object_set_new(rsp, "error", e);
    return rsp;
}

/*
 * QEMU's checks of a request's members, in the order its hash table walks
 * them (so that of two faults, the same one is reported).
 */
static const char *check_request(json_t *req, bool allow_oob, GError **errp)
{
    const char *exec_key = NULL;
    size_t n;
    JsonMember *m = json_qdict_members(req, &n);

    for (size_t i = 0; i < n; i++) {
        const char *key = m[i].key;
        if (!strcmp(key, "execute") ||
            (!strcmp(key, "exec-oob") && allow_oob)) {
            if (!json_is_string(m[i].value)) {
                error_setg(errp, "QMP input member '%s' must be a string",
                           key);
                goto fail;
            }
            if (exec_key) {
                error_setg(errp, "QMP input member '%s' clashes with '%s'",
                           key, exec_key);
                goto fail;
            }
            exec_key = key;
        } else if (!strcmp(key, "arguments")) {
            if (!json_is_object(m[i].value)) {
                error_setg(errp,
                           "QMP input member 'arguments' must be an object");
                goto fail;
            }
        } else if (strcmp(key, "id")) {
            error_setg(errp, "QMP input member '%s' is unexpected", key);
            goto fail;
        }
    }
    g_free(m);
    if (!exec_key) {
        error_setg(errp, "QMP input lacks member 'execute'");
    }
    return exec_key;
fail:
    g_free(m);
    return NULL;
}

static bool run_command(Request *r, const QmpCommand *cmd, json_t *args,
                        json_t **ret, GError **errp)
{
    Coroutine *self = co_self();

    if (!current) {
        current = g_hash_table_new(NULL, NULL);
    }
    g_hash_table_insert(current, self, r);
    bool ok = cmd->fn(args, ret, errp);
    g_hash_table_remove(current, self);
    return ok;
}

/* The reply to one message (NULL: none is due). */
static json_t *dispatch(Request *r)
{
    QmpSession *s = r->s;
    QmpMessage *msg = r->msg;
    GError *err = NULL;
    json_t *req = msg->req;
    json_t *id = NULL;
    json_t *rsp = NULL;

    if (msg->err) {
        return error_reply(msg->err);
    }
    if (!json_is_object(req)) {
        error_setg(&err, "QMP input must be a JSON object");
        goto out;
    }
    id = json_object_get(req, "id");

    const char *key = check_request(req, s->oob, &err);
    if (!key) {
        goto out;
    }
    const char *name = json_string_value(json_object_get(req, key));
    bool oob = !strcmp(key, "exec-oob");
    const QmpCommand *cmd = qmp_command_find(name);
    if (!cmd || (!s->negotiated && strcmp(name, "qmp_capabilities")) ||
        (command_filter &&
         !command_filter(name, json_object_get(req, "arguments")))) {
        error_set_class(&err, STRATA_ERROR_COMMAND_NOT_FOUND,
                        "The command %s has not been found", name);
        goto out;
    }
    if (oob && !(cmd->flags & QMP_CMD_ALLOW_OOB)) {
        error_setg(&err, "The command %s does not support OOB", name);
        goto out;
    }

    json_t *args = json_object_get(req, "arguments");
    args = args ? json_incref(args) : json_object();
    json_t *ret = NULL;
    bool ok = run_command(r, cmd, args, &ret, &err);
    json_decref(args);
    if (ok) {
        if (cmd->flags & QMP_CMD_NO_SUCCESS_REPLY) {
            json_decref(ret);
            return NULL;
        }
        rsp = json_object();
        json_object_set_new(rsp, "return", ret ? ret : json_object());
    } else if (!err) {
        error_setg(&err, "The command %s failed", name);
    }

out:
    if (err) {
        /* QEMU's text for anything not found before negotiation is done */
        if (!s->negotiated && err->domain == STRATA_ERROR &&
            err->code == STRATA_ERROR_COMMAND_NOT_FOUND) {
            g_free(err->message);
            err->message = g_strdup("Expecting capabilities negotiation "
                                    "with 'qmp_capabilities'");
        }
        rsp = error_reply(err);
        g_error_free(err);
    }
    if (id) {
        json_object_set(rsp, "id", id);
    }
    return rsp;
}

static void request_co(void *opaque)
{
    Request *r = opaque;
    QmpSession *s = r->s;
    bool in_band = !r->msg->oob;

    bool was_quitting = quitting;
    json_t *rsp = dispatch(r);
    if (rsp && quitting && !was_quitting && !s->quit_reply) {
        s->quit_reply = rsp;
    } else if (rsp) {
        session_send(s, rsp);
    }
    if (r->msg->n_fds && !s->closed) {
        /* untaken: back to the session, replacing older ones as QEMU */
        drop_msgfds(s);
        memcpy(s->msgfds, r->msg->fds, r->msg->n_fds * sizeof(int));
        s->n_msgfds = r->msg->n_fds;
        r->msg->n_fds = 0;
    }
    qmp_message_free(r->msg);
    g_free(r);
    running--;
    if (in_band) {
        s->busy = false;
        session_kick(s);
    }
    session_unref(s);
}

static void start_request(QmpSession *s, QmpMessage *msg)
{
    Request *r = g_new(Request, 1);

    r->s = s;
    r->msg = msg;
    s->refcnt++;
    running++;
    /* entered from the loop: the caller may itself be a coroutine */
    co_wake(co_create(request_co, r));
}

/* Start the next in-band request if none is running. */
static void session_kick(QmpSession *s)
{
    if (s->busy || s->closed || quitting || g_queue_is_empty(&s->queue)) {
        return;
    }
    s->busy = true;
    start_request(s, g_queue_pop_head(&s->queue));
    if (!s->in_src && !s->input_ended) {
        session_watch_input(s);     /* room in the queue again */
    }
}

static void on_message(void *opaque, QmpMessage *msg)
{
    QmpSession *s = opaque;

    if (s->closed) {
        qmp_message_free(msg);
        return;
    }
    if (s->n_msgfds) {
        /* the descriptors came with (or before) this request's bytes */
        msg->fds = g_new(int, s->n_msgfds);
        memcpy(msg->fds, s->msgfds, s->n_msgfds * sizeof(int));
        msg->n_fds = s->n_msgfds;
        s->n_msgfds = 0;
    }
    if (msg->oob) {
        start_request(s, msg);
        return;
    }
    g_queue_push_tail(&s->queue, msg);
    session_kick(s);
}

/* ---- input ---- */

static gboolean on_readable(gint fd, GIOCondition cond, gpointer opaque)
{
    QmpSession *s = opaque;
    char buf[READ_CHUNK];
    union {
        struct cmsghdr align;
        char buf[CMSG_SPACE(sizeof(int) * MAX_MSGFDS)];
    } control;
    struct iovec iov = { .iov_base = buf, .iov_len = sizeof(buf) };
    struct msghdr mh = {
        .msg_iov = &iov, .msg_iovlen = 1,
        .msg_control = control.buf, .msg_controllen = sizeof(control.buf),
    };

    ssize_t n = s->stdio ? read(s->fd, buf, sizeof(buf))
                         : recvmsg(s->fd, &mh, MSG_CMSG_CLOEXEC);
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR)) {
        return G_SOURCE_CONTINUE;
    }
    if (n <= 0) {
        if (s->stdio) {
            session_end_input(s);
        } else {
            session_close(s);
        }
        return G_SOURCE_REMOVE;
    }
    for (struct cmsghdr *c = s->stdio ? NULL : CMSG_FIRSTHDR(&mh); c;
         c = CMSG_NXTHDR(&mh, c)) {
        if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS) {
            continue;
        }
        /* as QEMU: new descriptors replace those nobody took */
        drop_msgfds(s);
        int count = (c->cmsg_len - CMSG_LEN(0)) / sizeof(int);
        memcpy(s->msgfds, CMSG_DATA(c), count * sizeof(int));
        s->n_msgfds = count;
    }

    s->refcnt++;
    qmp_stream_feed(s->stream, buf, n);
    gboolean keep = G_SOURCE_CONTINUE;
    if (!s->closed && g_queue_get_length(&s->queue) >= QUEUE_MAX) {
        /* stop reading until the queue drains: the socket holds the rest */
        g_source_unref(s->in_src);
        s->in_src = NULL;
        keep = G_SOURCE_REMOVE;
    } else if (s->closed) {
        keep = G_SOURCE_REMOVE;
    }
    session_unref(s);
    return keep;
}

/*
 * While the daemon processes its command line, the loop runs (a qcow2
 * --blockdev opens in a coroutine), but no client may be served yet:
 * qemu-storage-daemon reads its monitors only once every option is done,
 * so a request already waiting on stdin (or a client that connected
 * early) must not see half of the nodes the command line names.
 */
static bool input_held;
static GPtrArray *held_sessions;   /* QmpSession *, a reference each */
static GPtrArray *held_monitors;   /* QmpMonitor * */

static void session_watch_input(QmpSession *s)
{
    if (input_held) {
        s->refcnt++;
        g_ptr_array_add(held_sessions, s);
        return;
    }
    s->in_src = g_unix_fd_source_new(s->fd, G_IO_IN | G_IO_HUP | G_IO_ERR);
    g_source_set_callback(s->in_src, (GSourceFunc)(void (*)(void))on_readable,
                          s, NULL);
    g_source_attach(s->in_src, ctx());
}

/*
 * The end of a stdio monitor's input, as QEMU handles it: the session
 * counts as closed for descriptor sets, but replies and events still go to
 * stdout.  Requests read before the end still run: QEMU reads no further
 * while an in-band request waits, so it sees the end only after them.
 */
static void session_ended(QmpSession *s)
{
    if (s->mon && s->mon->session_end) {
        s->mon->session_end(s->mon->session_end_opaque);
    }
}

static void session_end_input(QmpSession *s)
{
    session_ended(s);
    s->input_ended = true;
    if (s->in_src) {
        /* on_readable returns G_SOURCE_REMOVE, which destroys it */
        g_source_unref(s->in_src);
        s->in_src = NULL;
    }
    sessions_open--;
    fdset_cleanup(sessions_open > 0);
}

static void session_close(QmpSession *s)
{
    if (s->closed) {
        return;
    }
    if (!s->input_ended) {
        session_ended(s);
    }
    s->closed = true;
    if (s->in_src) {
        g_source_destroy(s->in_src);
        g_source_unref(s->in_src);
        s->in_src = NULL;
    }
    if (s->out_src) {
        g_source_destroy(s->out_src);
        g_source_unref(s->out_src);
        s->out_src = NULL;
    }
    if (s->stdio) {
        /* stdin and stdout stay: only the monitor ends */
        g_unix_set_fd_nonblocking(s->fd, FALSE, NULL);
        g_unix_set_fd_nonblocking(s->out_fd, FALSE, NULL);
    } else {
        close(s->fd);
    }
    s->fd = -1;
    drop_msgfds(s);
    qmp_stream_free(s->stream);
    s->stream = NULL;
    QmpMessage *msg;
    while ((msg = g_queue_pop_head(&s->queue))) {
        qmp_message_free(msg);
    }
    s->mon->sessions = g_list_remove(s->mon->sessions, s);
    if (!s->input_ended) {
        sessions_open--;
    }
    /* as QEMU when a connection closes: sets nobody holds may go */
    fdset_cleanup(sessions_open > 0);
    session_unref(s);
}

/* ---- sessions ---- */

static json_t *greeting(void)
{
    const QmpCommand *qv = qmp_command_find("query-version");
    json_t *args = json_object();
    json_t *version = NULL;
    GError *err = NULL;

    /* the same answer as query-version, as QEMU builds it */
    if (!qv || !qv->fn(args, &version, &err)) {
        g_clear_error(&err);
        version = json_object();
    }
    json_decref(args);

    json_t *caps = json_array();
    json_array_append_new(caps, json_string("oob"));
    json_t *qmp = json_object();
    json_object_set_new(qmp, "version", version);
    json_object_set_new(qmp, "capabilities", caps);
    json_t *g = json_object();
    json_object_set_new(g, "QMP", qmp);
    return g;
}

static void session_new(QmpMonitor *mon, int fd, int out_fd)
{
    QmpSession *s = g_new0(QmpSession, 1);

    s->refcnt = 1;
    s->mon = mon;
    s->fd = fd;
    s->out_fd = out_fd;
    s->stdio = fd != out_fd;
    s->out = g_string_new(NULL);
    g_queue_init(&s->queue);
    s->stream = qmp_stream_new(on_message, s);
    mon->sessions = g_list_append(mon->sessions, s);
    sessions_open++;
    session_watch_input(s);
    session_send(s, greeting());
}

static gboolean on_accept(gint fd, GIOCondition cond, gpointer opaque)
{
    QmpMonitor *mon = opaque;
    int cfd = accept4(fd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);

    if (cfd >= 0) {
        session_new(mon, cfd, cfd);
    }
    /* EAGAIN, ECONNABORTED, EMFILE: try again on the next wake-up */
    return G_SOURCE_CONTINUE;
}

void qmp_monitor_on_session_end(QmpMonitor *mon, void (*closed)(void *),
                                void *opaque)
{
    mon->session_end = closed;
    mon->session_end_opaque = opaque;
}

void qmp_monitor_add_client(QmpMonitor *mon, int fd)
{
    g_unix_set_fd_nonblocking(fd, TRUE, NULL);
    session_new(mon, fd, fd);
}

static QmpMonitor *monitor_new(int listen_fd, bool pretty)
{
    QmpMonitor *mon = g_new0(QmpMonitor, 1);

    mon->listen_fd = listen_fd;
    mon->pretty = pretty;
    mon->named_fds = g_hash_table_new_full(g_str_hash, g_str_equal, g_free,
                                           NULL);
    monitors = g_list_append(monitors, mon);
    return mon;
}

static void monitor_watch_listen(QmpMonitor *mon)
{
    mon->listen_src = g_unix_fd_source_new(mon->listen_fd, G_IO_IN);
    g_source_set_callback(mon->listen_src,
                          (GSourceFunc)(void (*)(void))on_accept, mon, NULL);
    g_source_attach(mon->listen_src, ctx());
}

QmpMonitor *qmp_monitor_new(int listen_fd, bool pretty)
{
    QmpMonitor *mon = monitor_new(listen_fd, pretty);

    g_unix_set_fd_nonblocking(listen_fd, TRUE, NULL);
    if (input_held) {
        g_ptr_array_add(held_monitors, mon);
    } else {
        monitor_watch_listen(mon);
    }
    return mon;
}

void qmp_server_hold_input(void)
{
    input_held = true;
    if (!held_sessions) {
        held_sessions = g_ptr_array_new();
        held_monitors = g_ptr_array_new();
    }
}

void qmp_server_release_input(void)
{
    if (!input_held) {
        return;
    }
    input_held = false;
    for (guint i = 0; i < held_monitors->len; i++) {
        QmpMonitor *mon = g_ptr_array_index(held_monitors, i);
        if (mon->listen_fd >= 0 && !mon->listen_src) {
            monitor_watch_listen(mon);
        }
    }
    g_ptr_array_set_size(held_monitors, 0);
    for (guint i = 0; i < held_sessions->len; i++) {
        QmpSession *s = g_ptr_array_index(held_sessions, i);
        if (!s->closed && !s->in_src) {
            session_watch_input(s);
        }
        session_unref(s);
    }
    g_ptr_array_set_size(held_sessions, 0);
}

QmpMonitor *qmp_monitor_new_connected(bool pretty)
{
    return monitor_new(-1, pretty);
}

QmpMonitor *qmp_monitor_new_stdio(bool pretty)
{
    QmpMonitor *mon = monitor_new(-1, pretty);

    g_unix_set_fd_nonblocking(STDIN_FILENO, TRUE, NULL);
    g_unix_set_fd_nonblocking(STDOUT_FILENO, TRUE, NULL);
    session_new(mon, STDIN_FILENO, STDOUT_FILENO);
    return mon;
}

bool qmp_monitor_has_clients(void *opaque)
{
    QmpMonitor *mon = opaque;

    for (GList *l = mon->sessions; l; l = l->next) {
        QmpSession *s = l->data;
        if (!s->closed && !s->input_ended) {
            return true;
        }
    }
    return false;
}

void qmp_monitor_free(QmpMonitor *mon)
{
    if (!mon) {
        return;
    }
    monitors = g_list_remove(monitors, mon);
    /* sessions closed at exit are no hang-ups: nothing to reconnect */
    mon->session_end = NULL;
    while (mon->sessions) {
        QmpSession *s = mon->sessions->data;
        /*
         * A client that hung up makes the send or flush below close the
         * session, which may drop its last reference: keep it until the
         * end of this turn.
         */
        s->refcnt++;
        if (s->quit_reply) {
            session_send(s, g_steal_pointer(&s->quit_reply));
        }
        /*
         * A last try at what is queued, without waiting for a socket
         * client; stdout takes it all (as QEMU's does at exit).
         */
        if (s->stdio) {
            g_unix_set_fd_nonblocking(s->out_fd, FALSE, NULL);
        }
        if (s->out->len > s->out_off) {
            session_flush(s);
        }
        if (!s->closed) {
            session_close(s);
        }
        session_unref(s);
    }
    if (mon->listen_src) {
        g_source_destroy(mon->listen_src);
        g_source_unref(mon->listen_src);
        close(mon->listen_fd);
    }
    GHashTableIter it;
    gpointer fd;
    g_hash_table_iter_init(&it, mon->named_fds);
    while (g_hash_table_iter_next(&it, NULL, &fd)) {
        close(GPOINTER_TO_INT(fd));
    }
    g_hash_table_destroy(mon->named_fds);
    g_free(mon);
}

void qmp_server_shutdown(void)
{
    while (monitors) {
        qmp_monitor_free(monitors->data);
    }
    if (throttles) {
        g_hash_table_remove_all(throttles);     /* held events: dropped */
    }
}

/* ---- for the connection handlers ---- */

bool qmp_session_negotiate(QmpSession *s, bool oob, GError **errp)
{
    if (s->negotiated) {
        error_set_class(errp, STRATA_ERROR_COMMAND_NOT_FOUND,
                        "Capabilities negotiation is already complete, "
                        "command ignored");
        return false;
    }
    s->negotiated = true;
    s->oob = oob;
    return true;
}

int qmp_session_take_fd(QmpSession *s)
{
    Request *r = current && in_coroutine() ?
                 g_hash_table_lookup(current, co_self()) : NULL;
    int *fds = s->msgfds;
    int *n = &s->n_msgfds;

    if (r && r->s == s && r->msg->n_fds) {
        fds = r->msg->fds;
        n = &r->msg->n_fds;
    }
    if (!*n) {
        return -1;
    }
    /* QEMU hands out the first and closes the others */
    int fd = fds[0];
    for (int i = 1; i < *n; i++) {
        close(fds[i]);
    }
    *n = 0;
    return fd;
}

void qmp_session_set_named_fd(QmpSession *s, const char *name, int fd)
{
    gpointer old;

    if (g_hash_table_lookup_extended(s->mon->named_fds, name, NULL, &old)) {
        close(GPOINTER_TO_INT(old));
    }
    g_hash_table_insert(s->mon->named_fds, g_strdup(name),
                        GINT_TO_POINTER(fd));
}

bool qmp_session_close_named_fd(QmpSession *s, const char *name)
{
    gpointer fd;

    if (!g_hash_table_lookup_extended(s->mon->named_fds, name, NULL, &fd)) {
        return false;
    }
    g_hash_table_remove(s->mon->named_fds, name);
    close(GPOINTER_TO_INT(fd));
    return true;
}

int qmp_session_named_fd(QmpSession *s, const char *name)
{
    gpointer fd;

    if (!g_hash_table_lookup_extended(s->mon->named_fds, name, NULL, &fd)) {
        return -1;
    }
    return GPOINTER_TO_INT(fd);
}

int qmp_session_take_named_fd(QmpSession *s, const char *name)
{
    int fd = qmp_session_named_fd(s, name);

    if (fd >= 0) {
        g_hash_table_remove(s->mon->named_fds, name);
    }
    return fd;
}
