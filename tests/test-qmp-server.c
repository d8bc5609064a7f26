/*
 * The QMP transport, negotiation and dispatch, driven through a real unix
 * socket against a command table defined here (a fixture: the daemon links
 * the generated one).  The texts checked are qemu-storage-daemon 7.2's (the
 * iotests qmp-protocol-* compare whole sessions with it).
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <string.h>
#include <errno.h>
#include <fcntl.h>
#include <unistd.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <cmocka.h>

#include <netinet/in.h>
#include "strata/chardev.h"
#include "strata/coroutine.h"
#include "strata/loop.h"
#include "strata/qmp-server.h"

/* ---- the fixture's command table ---- */

static bool m_qmp_capabilities(json_t *args, json_t **ret, GError **errp)
{
    bool oob = false;
    json_t *en = json_object_get(args, "enable");
    size_t i;
    json_t *v;

    json_array_foreach(en, i, v) {
        oob |= !strcmp(json_string_value(v), "oob");
    }
    if (!qmp_session_negotiate(qmp_session_current(), oob, errp)) {
        return false;
    }
    *ret = json_object();
    return true;
}

static bool m_query_version(json_t *args, json_t **ret, GError **errp)
{
    *ret = json_pack("{s:{s:i,s:i,s:i},s:s}", "qemu", "major", 7, "minor", 2,
                     "micro", 0, "package", "fixture");
    return true;
}

/* Sleeps "ms" milliseconds in its coroutine, then returns its arguments. */
static bool m_sleep(json_t *args, json_t **ret, GError **errp)
{
    co_sleep_ns(json_integer_value(json_object_get(args, "ms")) * 1000000);
    *ret = json_incref(args);
    return true;
}

/* "block" waits in its coroutine until an out-of-band "release". */
static CoQueue gate;

static bool m_block(json_t *args, json_t **ret, GError **errp)
{
    co_queue_wait(&gate);
    *ret = json_object();
    return true;
}

static bool m_release(json_t *args, json_t **ret, GError **errp)
{
    co_queue_restart_all(&gate);
    *ret = json_object();
    return true;
}

static bool m_fail(json_t *args, json_t **ret, GError **errp)
{
    error_set_class(errp, STRATA_ERROR_DEVICE_NOT_FOUND, "no such thing");
    return false;
}

static bool m_no_reply(json_t *args, json_t **ret, GError **errp)
{
    *ret = json_object();
    return true;
}

/* Emits "count" events (default one), letting the loop run in between. */
static bool m_event(json_t *args, json_t **ret, GError **errp)
{
    json_int_t count = json_integer_value(json_object_get(args, "count"));
    for (json_int_t i = 0; i < (count ? count : 1); i++) {
        qmp_event_send("FIXTURE", json_pack("{s:i}", "n", 1));
        if (i % 10 == 9) {
            co_sleep_ns(0);
        }
    }
    *ret = json_object();
    return true;
}

/*
 * THROTTLED (throttled by test_throttle) with data {"k": 1} three times,
 * then {"k": 2} once.
 */
static bool m_throttled(json_t *args, json_t **ret, GError **errp)
{
    for (int i = 0; i < 3; i++) {
        qmp_event_send("THROTTLED", json_pack("{s:i}", "k", 1));
    }
    qmp_event_send("THROTTLED", json_pack("{s:i}", "k", 2));
    *ret = json_object();
    return true;
}

/* Reports the access mode of the descriptor sent with the request. */
static bool m_take_fd(json_t *args, json_t **ret, GError **errp)
{
    int fd = qmp_session_take_fd(qmp_session_current());
    if (fd < 0) {
        error_setg(errp, "No file descriptor supplied via SCM_RIGHTS");
        return false;
    }
    *ret = json_pack("{s:i}", "accmode", fcntl(fd, F_GETFL) & O_ACCMODE);
    close(fd);
    return true;
}

/* Sorted by name, as the generated table is. */
const QmpCommand qmp_commands[] = {
    { "block", m_block, 0 },
    { "event", m_event, 0 },
    { "fail", m_fail, 0 },
    { "no-reply", m_no_reply, QMP_CMD_NO_SUCCESS_REPLY },
    { "qmp_capabilities", m_qmp_capabilities, QMP_CMD_ALLOW_OOB },
    { "query-version", m_query_version, 0 },
    { "release", m_release, QMP_CMD_ALLOW_OOB },
    { "sleep", m_sleep, QMP_CMD_ALLOW_OOB },
    { "take-fd", m_take_fd, 0 },
    { "throttled", m_throttled, 0 },
};
const size_t qmp_commands_count = G_N_ELEMENTS(qmp_commands);

const QmpCommand *qmp_command_find(const char *name)
{
    for (size_t i = 0; i < qmp_commands_count; i++) {
        if (!strcmp(qmp_commands[i].name, name)) {
            return &qmp_commands[i];
        }
    }
    return NULL;
}

json_t *qmp_introspection(void)
{
    return json_array();
}

/* ---- a client ---- */

static char sock_path[108];

typedef struct {
    int fd;
    GString *in;
} Client;

static int listen_unix(void)
{
    struct sockaddr_un sa = { .sun_family = AF_UNIX };
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);

    g_strlcpy(sa.sun_path, sock_path, sizeof(sa.sun_path));
    unlink(sock_path);
    assert_int_equal(bind(fd, (struct sockaddr *)&sa, sizeof(sa)), 0);
    assert_int_equal(listen(fd, 16), 0);
    return fd;
}

static Client *client_new(void)
{
    struct sockaddr_un sa = { .sun_family = AF_UNIX };
    Client *c = g_new0(Client, 1);

    g_strlcpy(sa.sun_path, sock_path, sizeof(sa.sun_path));
    c->fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    assert_int_equal(connect(c->fd, (struct sockaddr *)&sa, sizeof(sa)), 0);
    c->in = g_string_new(NULL);
    return c;
}

static void client_free(Client *c)
{
    close(c->fd);
    g_string_free(c->in, TRUE);
    g_free(c);
}

static void client_send_fd(Client *c, const char *text, int fd)
{
    struct iovec iov = { .iov_base = (void *)text, .iov_len = strlen(text) };
    union {
        struct cmsghdr align;
        char buf[CMSG_SPACE(sizeof(int))];
    } control;
    struct msghdr mh = { .msg_iov = &iov, .msg_iovlen = 1 };

    if (fd >= 0) {
        mh.msg_control = control.buf;
        mh.msg_controllen = sizeof(control.buf);
        struct cmsghdr *cm = CMSG_FIRSTHDR(&mh);
        cm->cmsg_level = SOL_SOCKET;
        cm->cmsg_type = SCM_RIGHTS;
        cm->cmsg_len = CMSG_LEN(sizeof(int));
        memcpy(CMSG_DATA(cm), &fd, sizeof(int));
    }
    assert_int_equal(sendmsg(c->fd, &mh, 0), (ssize_t)strlen(text));
}

static void client_send(Client *c, const char *text)
{
    client_send_fd(c, text, -1);
}

/*
 * The next message: one line, or with pretty output everything up to a
 * closing brace at the start of a line, with QEMU's CR LF line ends made
 * plain LF.  The loop runs while we wait.
 */
static char *client_recv(Client *c, bool pretty)
{
    gint64 deadline = g_get_monotonic_time() + 20 * G_USEC_PER_SEC;

    for (;;) {
        const char *end = pretty ? strstr(c->in->str, "\r\n}\r\n")
                                 : strstr(c->in->str, "\r\n");
        if (end) {
            /* lines end with CR LF as QEMU's; compare without the CRs */
            size_t len = end - c->in->str + (pretty ? 3 : 0);
            char *msg = g_strndup(c->in->str, len);
            g_string_erase(c->in, 0, len + 2);
            GString *lf = g_string_new(NULL);
            for (char *p = msg; *p; p++) {
                if (!(p[0] == '\r' && p[1] == '\n')) {
                    g_string_append_c(lf, *p);
                }
            }
            g_free(msg);
            return g_string_free(lf, FALSE);
        }
        char buf[4096];
        ssize_t n = recv(c->fd, buf, sizeof(buf), MSG_DONTWAIT);
        if (n > 0) {
            g_string_append_len(c->in, buf, n);
            continue;
        }
        if (n == 0) {
            return NULL;        /* the server closed the connection */
        }
        assert_true(g_get_monotonic_time() < deadline);
        loop_iterate(false);
        g_usleep(200);
    }
}

static void expect(Client *c, const char *want)
{
    char *got = client_recv(c, false);
    assert_non_null(got);
    assert_string_equal(got, want);
    g_free(got);
}

static const char *greeting_text =
    "{\"QMP\": {\"version\": {\"qemu\": {\"micro\": 0, \"minor\": 2, "
    "\"major\": 7}, \"package\": \"fixture\"}, \"capabilities\": [\"oob\"]}}";

static Client *negotiated_client(void)
{
    Client *c = client_new();
    expect(c, greeting_text);
    client_send(c, "{'execute': 'qmp_capabilities', 'arguments': "
                   "{'enable': ['oob']}}");
    expect(c, "{\"return\": {}}");
    return c;
}

static int setup(void **state)
{
    char *dir = g_dir_make_tmp("qmp-server-XXXXXX", NULL);
    assert_non_null(dir);
    g_snprintf(sock_path, sizeof(sock_path), "%s/qmp.sock", dir);
    g_free(dir);
    *state = qmp_monitor_new(listen_unix(), false);
    return 0;
}

static int teardown(void **state)
{
    qmp_server_shutdown();
    unlink(sock_path);
    char *dir = g_path_get_dirname(sock_path);
    rmdir(dir);
    g_free(dir);
    return 0;
}

/* ---- tests ---- */

static void test_negotiation(void **state)
{
    Client *c = client_new();
    expect(c, greeting_text);
    client_send(c, "{\"execute\": \"query-version\", \"id\": [1, {\"a\": null}]}");
    expect(c, "{\"id\": [1, {\"a\": null}], \"error\": {\"class\": "
              "\"CommandNotFound\", \"desc\": \"Expecting capabilities "
              "negotiation with 'qmp_capabilities'\"}}");
    /* not negotiated yet: exec-oob is no member at all */
    client_send(c, "{\"exec-oob\": \"sleep\"}");
    expect(c, "{\"error\": {\"class\": \"GenericError\", \"desc\": "
              "\"QMP input member 'exec-oob' is unexpected\"}}");
    client_send(c, "{\"execute\": \"qmp_capabilities\"}");
    expect(c, "{\"return\": {}}");
    client_send(c, "{\"execute\": \"qmp_capabilities\", \"id\": \"x\"}");
    expect(c, "{\"id\": \"x\", \"error\": {\"class\": \"CommandNotFound\", "
              "\"desc\": \"Capabilities negotiation is already complete, "
              "command ignored\"}}");
    client_send(c, "{\"execute\": \"nosuch\"}");
    expect(c, "{\"error\": {\"class\": \"CommandNotFound\", \"desc\": "
              "\"The command nosuch has not been found\"}}");
    /* oob was not enabled on this connection */
    client_send(c, "{\"exec-oob\": \"sleep\"}");
    expect(c, "{\"error\": {\"class\": \"GenericError\", \"desc\": "
              "\"QMP input member 'exec-oob' is unexpected\"}}");
    client_free(c);
}

static void test_malformed(void **state)
{
    Client *c = negotiated_client();
    /* split at every byte, with garbage around */
    const char *in = "}@@ {\"execute\":\"query-version\",\"id\":1.5}[1]\n\"s\"";
    for (const char *p = in; *p; p++) {
        char b[2] = { *p, 0 };
        client_send(c, b);
        loop_iterate(false);
    }
    expect(c, "{\"error\": {\"class\": \"GenericError\", \"desc\": "
              "\"JSON parse error, expecting value\"}}");
    expect(c, "{\"error\": {\"class\": \"GenericError\", \"desc\": "
              "\"JSON parse error, stray '@'\"}}");
    expect(c, "{\"return\": {\"qemu\": {\"micro\": 0, \"minor\": 2, "
              "\"major\": 7}, \"package\": \"fixture\"}, \"id\": 1.5}");
    expect(c, "{\"error\": {\"class\": \"GenericError\", \"desc\": "
              "\"QMP input must be a JSON object\"}}");
    expect(c, "{\"error\": {\"class\": \"GenericError\", \"desc\": "
              "\"QMP input must be a JSON object\"}}");
    client_send(c, "{'execute': 'fail', 'foo': 1, 'id': 'a'}"
                   "{'execute': 1}{'arguments': []}{'id': 2}");
    expect(c, "{\"id\": \"a\", \"error\": {\"class\": \"GenericError\", "
              "\"desc\": \"QMP input member 'foo' is unexpected\"}}");
    expect(c, "{\"error\": {\"class\": \"GenericError\", \"desc\": "
              "\"QMP input member 'execute' must be a string\"}}");
    expect(c, "{\"error\": {\"class\": \"GenericError\", \"desc\": "
              "\"QMP input member 'arguments' must be an object\"}}");
    expect(c, "{\"id\": 2, \"error\": {\"class\": \"GenericError\", "
              "\"desc\": \"QMP input lacks member 'execute'\"}}");
    /* nesting past QEMU's bound; the connection still answers */
    GString *deep = g_string_new(NULL);
    for (int i = 0; i < 1025; i++) {
        g_string_append_c(deep, '[');
    }
    client_send(c, deep->str);
    g_string_free(deep, TRUE);
    expect(c, "{\"error\": {\"class\": \"GenericError\", \"desc\": "
              "\"JSON nesting depth limit exceeded\"}}");
    client_send(c, "{'execute': 'fail', 'id': null}");
    expect(c, "{\"id\": null, \"error\": {\"class\": "
              "\"DeviceNotFound\", \"desc\": \"no such thing\"}}");
    client_free(c);
}

static void test_order_and_oob(void **state)
{
    Client *c = negotiated_client();
    /*
     * In-band requests answer in order even when the first waits; an
     * out-of-band one runs at once (here it is what ends the wait).
     */
    client_send(c, "{'execute': 'block', 'id': 1}"
                   "{'execute': 'query-version', 'id': 2}"
                   "{'exec-oob': 'query-version', 'id': 3}"
                   "{'execute': 'no-reply', 'id': 4}"
                   "{'execute': 'event', 'id': 5}");
    expect(c, "{\"id\": 3, \"error\": {\"class\": \"GenericError\", "
              "\"desc\": \"The command query-version does not support "
              "OOB\"}}");
    client_send(c, "{'exec-oob': 'release', 'id': 6}");
    expect(c, "{\"return\": {}, \"id\": 6}");
    expect(c, "{\"return\": {}, \"id\": 1}");
    char *got = client_recv(c, false);
    assert_true(g_str_has_suffix(got, "\"id\": 2}"));
    g_free(got);
    got = client_recv(c, false);
    assert_true(g_str_has_prefix(got, "{\"timestamp\": {\"seconds\": "));
    assert_true(g_str_has_suffix(got, "}, \"event\": \"FIXTURE\", "
                                 "\"data\": {\"n\": 1}}"));
    g_free(got);
    expect(c, "{\"return\": {}, \"id\": 5}");
    client_free(c);
}

static void test_clients_and_events(void **state)
{
    Client *a = negotiated_client();
    Client *b = client_new();   /* not negotiated: gets no event */
    expect(b, greeting_text);
    Client *d = negotiated_client();
    client_send(a, "{'execute': 'event'}");
    char *ev = client_recv(d, false);
    assert_non_null(strstr(ev, "\"event\": \"FIXTURE\""));
    g_free(ev);
    ev = client_recv(a, false);
    assert_non_null(strstr(ev, "\"event\": \"FIXTURE\""));
    g_free(ev);
    expect(a, "{\"return\": {}}");
    /* b's next message is the answer to its own request, not the event */
    client_send(b, "{'execute': 'qmp_capabilities'}");
    expect(b, "{\"return\": {}}");
    /* a client that vanishes mid-request harms nobody */
    client_send(d, "{'execute': 'sleep', 'arguments': {'ms': 50}}");
    client_free(d);
    client_send(a, "{'execute': 'sleep', 'arguments': {'ms': 100}, 'id': 1}");
    expect(a, "{\"return\": {\"ms\": 100}, \"id\": 1}");
    client_free(a);
    client_free(b);
}

/* The data of a THROTTLED event, or NULL for another message. */
static char *throttled_data(char *msg)
{
    char *data = NULL;

    assert_non_null(msg);
    if (strstr(msg, "\"event\": \"THROTTLED\"")) {
        data = g_strdup(strstr(msg, "\"data\": "));
    }
    g_free(msg);
    return data;
}

/*
 * A throttled event: the first of each kind (its data) goes out at once,
 * the rest of the period is held as one event sent when the period ends;
 * kinds do not hold each other back.  Nothing here depends on how long
 * anything takes: the held event is waited for, and the reply to a
 * command sent after it shows that nothing else was queued.
 */
static void test_throttle(void **state)
{
    qmp_server_throttle_event("THROTTLED", 100);
    Client *a = negotiated_client();

    client_send(a, "{'execute': 'throttled'}");
    char *d = throttled_data(client_recv(a, false));
    assert_string_equal(d, "\"data\": {\"k\": 1}}");
    g_free(d);
    d = throttled_data(client_recv(a, false));
    assert_string_equal(d, "\"data\": {\"k\": 2}}");
    g_free(d);
    expect(a, "{\"return\": {}}");
    /* the two {"k": 1} after the first: one event, at the period's end */
    d = throttled_data(client_recv(a, false));
    assert_string_equal(d, "\"data\": {\"k\": 1}}");
    g_free(d);
    client_send(a, "{'execute': 'query-version'}");
    char *reply = client_recv(a, false);
    assert_non_null(strstr(reply, "\"return\""));
    g_free(reply);
    client_free(a);
}

static void test_fd_passing(void **state)
{
    Client *c = negotiated_client();
    char *want;
    client_send(c, "{'execute': 'take-fd'}");
    expect(c, "{\"error\": {\"class\": \"GenericError\", \"desc\": "
              "\"No file descriptor supplied via SCM_RIGHTS\"}}");
    int fd = open("/dev/null", O_WRONLY | O_CLOEXEC);
    client_send_fd(c, "{'execute': 'take-fd'}", fd);
    close(fd);
    want = g_strdup_printf("{\"return\": {\"accmode\": %d}}", O_WRONLY);
    expect(c, want);
    g_free(want);
    /* taken once: the next request has none */
    client_send(c, "{'execute': 'take-fd'}");
    expect(c, "{\"error\": {\"class\": \"GenericError\", \"desc\": "
              "\"No file descriptor supplied via SCM_RIGHTS\"}}");

    /* pipelined: each request gets the descriptor sent with it */
    int rd = open("/dev/null", O_RDONLY | O_CLOEXEC);
    int wr = open("/dev/null", O_WRONLY | O_CLOEXEC);
    client_send_fd(c, "{'execute': 'block', 'id': 'wait'}", -1);
    client_send_fd(c, "{'execute': 'take-fd', 'id': 'r'}", rd);
    client_send_fd(c, "{'execute': 'take-fd', 'id': 'w'}", wr);
    client_send(c, "{'exec-oob': 'release'}");
    close(rd);
    close(wr);
    expect(c, "{\"return\": {}}");
    expect(c, "{\"return\": {}, \"id\": \"wait\"}");
    want = g_strdup_printf("{\"return\": {\"accmode\": %d}, \"id\": \"r\"}",
                           O_RDONLY);
    expect(c, want);
    g_free(want);
    want = g_strdup_printf("{\"return\": {\"accmode\": %d}, \"id\": \"w\"}",
                           O_WRONLY);
    expect(c, want);
    g_free(want);

    /* one a request did not take stays for a later one, as in QEMU */
    wr = open("/dev/null", O_WRONLY | O_CLOEXEC);
    client_send_fd(c, "{'execute': 'query-version', 'id': 1}", wr);
    close(wr);
    char *v = client_recv(c, false);
    g_free(v);
    client_send(c, "{'execute': 'take-fd'}");
    want = g_strdup_printf("{\"return\": {\"accmode\": %d}}", O_WRONLY);
    expect(c, want);
    g_free(want);
    client_free(c);
}

static void test_output_bound(void **state)
{
    qmp_server_set_output_limit(64 * 1024);
    Client *c = negotiated_client();
    Client *other = client_new();
    expect(other, greeting_text);
    /* c never reads: its events pile up until the server drops it */
    client_send(other, "{'execute': 'qmp_capabilities'}"
                       "{'execute': 'event', 'arguments': {'count': 20000}}"
                       "{'execute': 'query-version', 'id': 'alive'}");
    expect(other, "{\"return\": {}}");
    char *m;
    while ((m = client_recv(other, false)) && strstr(m, "FIXTURE")) {
        g_free(m);
    }
    assert_string_equal(m, "{\"return\": {}}");
    g_free(m);
    expect(other, "{\"return\": {\"qemu\": {\"micro\": 0, \"minor\": 2, "
                  "\"major\": 7}, \"package\": \"fixture\"}, "
                  "\"id\": \"alive\"}");
    /* what reached c's socket before the disconnect, then end of stream */
    size_t events = 0;
    while ((m = client_recv(c, false))) {
        events++;
        g_free(m);
    }
    assert_true(events > 0 && events < 20000);
    qmp_server_set_output_limit(16 << 20);
    client_free(c);
    client_free(other);
}

/*
 * One reply larger than the bound (it echoes an id of 300 KB) is not a
 * client that fails to read: it gets it whole, and the next reply too.
 */
static void test_output_bound_big_reply(void **state)
{
    qmp_server_set_output_limit(1024);
    Client *c = negotiated_client();
    GString *req = g_string_new("{'execute': 'query-version', 'id': '");
    for (int i = 0; i < 300000; i++) {
        g_string_append_c(req, 'a' + i % 26);
    }
    g_string_append(req, "'}{'execute': 'query-version', 'id': 2}");
    /* the server runs in this thread: feed it while it reads */
    for (size_t off = 0; off < req->len;) {
        ssize_t n = send(c->fd, req->str + off, req->len - off,
                         MSG_DONTWAIT);
        if (n > 0) {
            off += n;
        }
        loop_iterate(false);
    }
    char *m = client_recv(c, false);
    assert_non_null(m);
    assert_true(strlen(m) > 300000);
    assert_non_null(strstr(m, "\"return\""));
    g_free(m);
    expect(c, "{\"return\": {\"qemu\": {\"micro\": 0, \"minor\": 2, "
              "\"major\": 7}, \"package\": \"fixture\"}, \"id\": 2}");
    g_string_free(req, TRUE);
    qmp_server_set_output_limit(16 << 20);
    client_free(c);
}

static void test_pretty(void **state)
{
    QmpMonitor *mon = *state;
    qmp_monitor_free(mon);
    *state = qmp_monitor_new(listen_unix(), true);
    Client *c = client_new();
    char *g = client_recv(c, true);
    assert_string_equal(g,
        "{\n    \"QMP\": {\n        \"version\": {\n            \"qemu\": {\n"
        "                \"micro\": 0,\n                \"minor\": 2,\n"
        "                \"major\": 7\n            },\n"
        "            \"package\": \"fixture\"\n        },\n"
        "        \"capabilities\": [\n            \"oob\"\n        ]\n"
        "    }\n}");
    g_free(g);
    client_send(c, "{'execute': 'qmp_capabilities'}");
    g = client_recv(c, true);
    assert_string_equal(g, "{\n    \"return\": {\n    }\n}");
    g_free(g);
    client_free(c);
}

/* A TCP chardev (port 0: the kernel picks one) serving a monitor. */
static void test_tcp_chardev(void **state)
{
    ChardevSocketSpec spec = { .host = "127.0.0.1", .port = "0", .fd = -1 };
    GError *err = NULL;
    int first;
    ChardevKind kind;

    assert_true(chardev_socket_add("tcp0", &spec, "test", &err));
    assert_false(chardev_socket_add("tcp0", &spec, "test", &err));
    assert_string_equal(err->message, "duplicate yank instance");
    g_clear_error(&err);
    int lfd = chardev_take_listener("tcp0", &first, &kind, &err);
    assert_true(lfd >= 0);
    assert_int_equal(kind, CHARDEV_KIND_LISTENER);
    assert_int_equal(first, -1);
    assert_int_equal(chardev_take_listener("tcp0", &first, &kind, &err), -1);
    assert_string_equal(err->message, "Device 'tcp0' is in use");
    g_clear_error(&err);
    assert_int_equal(chardev_take_listener("nosuch", &first, &kind, &err),
                     -1);
    assert_string_equal(err->message, "chardev \"nosuch\" not found");
    g_clear_error(&err);

    struct sockaddr_in sa;
    socklen_t len = sizeof(sa);
    assert_int_equal(getsockname(lfd, (struct sockaddr *)&sa, &len), 0);
    qmp_monitor_new(lfd, false);
    Client *c = g_new0(Client, 1);
    c->in = g_string_new(NULL);
    c->fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    assert_int_equal(connect(c->fd, (struct sockaddr *)&sa, len), 0);
    expect(c, greeting_text);
    client_send(c, "{'execute': 'qmp_capabilities', 'id': 'tcp'}");
    expect(c, "{\"return\": {}, \"id\": \"tcp\"}");
    client_free(c);
    chardev_cleanup();
}

/*
 * A client chardev (server=off) connects to a TCP listener when it is
 * added; a monitor then serves QMP over that connection.
 */
static void test_client_chardev(void **state)
{
    int lfd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    struct sockaddr_in sa = { .sin_family = AF_INET,
                              .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
    socklen_t len = sizeof(sa);
    assert_int_equal(bind(lfd, (struct sockaddr *)&sa, len), 0);
    assert_int_equal(listen(lfd, 1), 0);
    assert_int_equal(getsockname(lfd, (struct sockaddr *)&sa, &len), 0);
    char *port = g_strdup_printf("%d", ntohs(sa.sin_port));
    ChardevSocketSpec spec = {
        .host = "127.0.0.1", .port = port, .fd = -1, .client = true,
    };
    GError *err = NULL;
    int first;
    ChardevKind kind;

    assert_true(chardev_socket_add("cl0", &spec, "test", &err));
    assert_int_equal(chardev_take_listener("cl0", &first, &kind, &err), 0);
    assert_int_equal(kind, CHARDEV_KIND_CLIENT);
    assert_true(first >= 0);
    QmpMonitor *mon = qmp_monitor_new_connected(false);
    chardev_set_user("cl0", qmp_monitor_has_clients, mon);
    qmp_monitor_add_client(mon, first);

    Client *c = g_new0(Client, 1);
    c->in = g_string_new(NULL);
    c->fd = accept4(lfd, NULL, NULL, SOCK_CLOEXEC);
    assert_true(c->fd >= 0);
    expect(c, greeting_text);
    client_send(c, "{'execute': 'qmp_capabilities', 'id': 'cl'}");
    expect(c, "{\"return\": {}, \"id\": \"cl\"}");
    client_free(c);
    close(lfd);

    /* nothing listens any more: QEMU's message */
    spec.port = port;
    assert_false(chardev_socket_add("cl1", &spec, "test", &err));
    char *msg = g_strdup_printf("Failed to connect to '127.0.0.1:%s': "
                                "Connection refused", port);
    assert_string_equal(err->message, msg);
    g_free(msg);
    g_clear_error(&err);
    assert_false(chardev_exists("cl1"));
    g_free(port);
    chardev_cleanup();
}

int main(void)
{
    co_queue_init(&gate);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_negotiation, setup, teardown),
        cmocka_unit_test_setup_teardown(test_malformed, setup, teardown),
        cmocka_unit_test_setup_teardown(test_order_and_oob, setup, teardown),
        cmocka_unit_test_setup_teardown(test_clients_and_events, setup, teardown),
        cmocka_unit_test_setup_teardown(test_throttle, setup, teardown),
        cmocka_unit_test_setup_teardown(test_fd_passing, setup, teardown),
        cmocka_unit_test_setup_teardown(test_output_bound, setup, teardown),
        cmocka_unit_test_setup_teardown(test_output_bound_big_reply, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_pretty, setup, teardown),
        cmocka_unit_test_setup_teardown(test_tcp_chardev, setup, teardown),
        cmocka_unit_test_setup_teardown(test_client_chardev, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL) ? 1 : 0;
}
