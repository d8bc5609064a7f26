/*
 * The NBD server's library API (strata/nbd-server.h): the errors of
 * nbd-server-start/stop, block-export-add/del and nbd-server-add with QEMU
 * 7.2's messages, query-block-exports, the export-deleted listener, export
 * removal with a client attached (safe and hard), and the connection limit.
 * Clients are plain sockets driven by hand while the test runs the loop.
 */
#include <errno.h>
#include <poll.h>
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>
#include <cmocka.h>
#include "strata/block.h"
#include "strata/loop.h"
#include "strata/nbd-server.h"
#include "support.h"

static char *sock_path;
static GPtrArray *deleted;      /* ids, in the order the listener saw them */

static void on_deleted(const char *id, void *opaque)
{
    g_ptr_array_add(deleted, g_strdup(id));
}

static BlockNode *null_export_node(const char *name, bool rw)
{
    GError *err = NULL;
    json_t *o = json_pack("{s:s, s:s, s:s}", "driver", "null-co",
                          "node-name", name, "size", "1M");
    BlockNode *bs = node_open(NULL, o, rw ? NODE_O_RDWR : 0, &err);
    if (!bs) {
        fail_msg("open failed: %s", err->message);
    }
    return bs;
}

static void expect_error(bool ok, GError *err, const char *msg)
{
    assert_false(ok);
    assert_non_null(err);
    assert_string_equal(err->message, msg);
    g_error_free(err);
}

/* The call must run before err is read: arguments have no order. */
#define EXPECT_ERROR(call, msg)                                              \
    do {                                                                     \
        err = NULL;                                                          \
        bool ok_ = (call);                                                   \
        expect_error(ok_, err, msg);                                         \
    } while (0)

static void start_unix(uint32_t max)
{
    GError *err = NULL;
    NbdServerAddr a = { .type = NBD_ADDR_UNIX, .path = sock_path };
    assert_true(nbd_server_start(&a, max, &err));
    assert_null(err);
}

static void stop(void)
{
    assert_true(nbd_server_stop(NULL));
}

static bool add(const char *id, const char *node, const char *name,
                bool writable, GError **errp)
{
    NbdExportOptions o = {
        .id = id, .node_name = node, .name = name, .writable = writable,
    };
    return nbd_export_add(&o, errp);
}

/* Run the loop until cond() or a few seconds pass. */
static bool spin_until(bool (*cond)(void *), void *opaque)
{
    int64_t end = clock_ns() + 5 * 1000000000LL;
    while (!cond(opaque)) {
        if (clock_ns() > end) {
            return false;
        }
        loop_iterate(false);
        g_usleep(1000);
    }
    return true;
}

typedef struct {
    int fd;
    GByteArray *in;
    size_t want;
} Client;

static bool client_has(void *opaque)
{
    Client *c = opaque;
    uint8_t buf[4096];
    ssize_t n = recv(c->fd, buf, sizeof(buf), MSG_DONTWAIT);
    if (n > 0) {
        g_byte_array_append(c->in, buf, n);
    }
    return c->in->len >= c->want || n == 0;
}

static int client_connect(void)
{
    int fd = socket(AF_UNIX, SOCK_STREAM, 0);
    struct sockaddr_un un = { .sun_family = AF_UNIX };
    strcpy(un.sun_path, sock_path);
    assert_int_equal(connect(fd, (struct sockaddr *)&un, sizeof(un)), 0);
    return fd;
}

static void put32(uint8_t *p, uint32_t v)
{
    p[0] = v >> 24; p[1] = v >> 16; p[2] = v >> 8; p[3] = v;
}

/*
 * A client attached to export `name` with NBD_OPT_GO; returns its socket
 * once the server's final reply (the ACK) has arrived.
 */
static int client_go(const char *name)
{
    Client c = { client_connect(), g_byte_array_new(), 18 };
    size_t nlen = strlen(name);
    uint8_t msg[4 + 16 + 4 + 256 + 2] = { 0 };

    assert_true(spin_until(client_has, &c));   /* the greeting */
    put32(msg, 3);                             /* fixed newstyle, no zeroes */
    memcpy(msg + 4, "IHAVEOPT", 8);
    put32(msg + 12, 7);                        /* NBD_OPT_GO */
    put32(msg + 16, 4 + nlen + 2);
    put32(msg + 20, nlen);
    memcpy(msg + 24, name, nlen);
    assert_int_equal(write(c.fd, msg, 24 + nlen + 2), 24 + nlen + 2);
    /* greeting + INFO block size (34) + INFO export (32) + ACK (20) */
    c.want = 18 + 34 + 32 + 20;
    assert_true(spin_until(client_has, &c));
    assert_int_equal(c.in->len, c.want);
    g_byte_array_free(c.in, true);
    return c.fd;
}

static bool deleted_count_is(void *opaque)
{
    return deleted->len == GPOINTER_TO_UINT(opaque);
}

static bool no_clients(void *opaque)
{
    return nbd_server_client_count() == 0;
}

static bool clients_are(void *opaque)
{
    return nbd_server_client_count() == GPOINTER_TO_UINT(opaque);
}

static void test_server_start_stop(void **state)
{
    GError *err = NULL;
    NbdServerAddr bad = { .type = NBD_ADDR_UNIX, .path = "/nonexistent/s" };

    EXPECT_ERROR(nbd_server_stop(&err), "NBD server not running");
    EXPECT_ERROR(nbd_server_start(&bad, 0, &err),
                 "Failed to bind socket to /nonexistent/s: "
                 "No such file or directory");
    assert_false(nbd_server_is_running());
    start_unix(0);
    assert_true(nbd_server_is_running());
    assert_true(g_file_test(sock_path, G_FILE_TEST_EXISTS));
    EXPECT_ERROR(nbd_server_start(&bad, 0, &err),
                 "NBD server already running");
    stop();
    assert_false(g_file_test(sock_path, G_FILE_TEST_EXISTS));
    NbdServerAddr inet = { .type = NBD_ADDR_INET, .host = "127.0.0.1",
                           .port = "0" };
    assert_true(nbd_server_start(&inet, 0, NULL));
    stop();
}

static void test_export_add_errors(void **state)
{
    GError *err = NULL;
    BlockNode *rw = null_export_node("rw", true);
    BlockNode *ro = null_export_node("ro", false);
    char *longname = g_strnfill(4097, 'x');

    /* Before the server runs, the checks QEMU makes first still apply. */
    EXPECT_ERROR(add("1bad", "rw", NULL, false, &err),
                 "Invalid block export id");
    EXPECT_ERROR(add("e", "nope", NULL, false, &err),
                 "Cannot find device='' nor node-name='nope'");
    EXPECT_ERROR(add("e", "ro", NULL, true, &err),
                 "Cannot export read-only node as writable");
    EXPECT_ERROR(add("e", "rw", NULL, false, &err),
                 "NBD server not running");

    start_unix(0);
    err = NULL;
    g_autofree char *m1 = g_strdup_printf("export name '%s' too long",
                                          longname);
    EXPECT_ERROR(add("e", "rw", longname, false, &err), m1);
    NbdExportOptions o = { .id = "e", .node_name = "rw",
                           .description = longname };
    err = NULL;
    g_autofree char *m2 = g_strdup_printf("description '%s' too long",
                                          longname);
    EXPECT_ERROR(nbd_export_add(&o, &err), m2);
    assert_true(add("e", "rw", NULL, true, NULL));
    EXPECT_ERROR(add("e", "ro", NULL, false, &err),
                 "Block export id 'e' is already in use");
    EXPECT_ERROR(add("f", "ro", "rw", false, &err),
                 "NBD server already has export named 'rw'");

    /* nbd-server-add exports a read-only node read-only, no error. */
    NbdExportOptions legacy = { .node_name = "ro", .writable = true,
                                .legacy_add = true };
    assert_true(nbd_export_add(&legacy, NULL));
    NbdExportOptions legacy2 = { .node_name = "nope", .legacy_add = true };
    EXPECT_ERROR(nbd_export_add(&legacy2, &err),
                 "Cannot find device='nope' nor node-name='nope'");

    size_t n;
    NbdExportInfo *info = nbd_export_query(&n);
    assert_int_equal(n, 2);
    assert_string_equal(info[0].id, "ro");      /* newest first, as QEMU */
    assert_string_equal(info[0].node_name, "ro");
    assert_string_equal(info[1].id, "e");
    assert_string_equal(info[1].node_name, "rw");
    assert_false(info[1].shutting_down);
    nbd_export_info_free(info, n);

    stop();
    assert_true(spin_until(deleted_count_is, GUINT_TO_POINTER(2)));
    info = nbd_export_query(&n);
    assert_int_equal(n, 0);
    nbd_export_info_free(info, n);
    g_ptr_array_set_size(deleted, 0);
    g_free(longname);
    node_unref(rw);
    node_unref(ro);
}

static void test_export_del_modes(void **state)
{
    GError *err = NULL;
    BlockNode *bs = null_export_node("n0", true);

    start_unix(0);
    assert_true(add("e0", "n0", "disk", true, NULL));
    EXPECT_ERROR(nbd_export_del("zz", NBD_REMOVE_SAFE, &err),
                 "Export 'zz' is not found");

    int fd = client_go("disk");
    EXPECT_ERROR(nbd_export_del("e0", NBD_REMOVE_SAFE, &err),
                 "export 'e0' still in use");
    assert_true(nbd_export_exists("e0"));

    /* Hard: the client is cut off; deletion waits for it to be gone. */
    assert_true(nbd_export_del("e0", NBD_REMOVE_HARD, NULL));
    size_t n;
    NbdExportInfo *info = nbd_export_query(&n);
    assert_int_equal(n, 1);
    assert_true(info[0].shutting_down || deleted->len == 1);
    nbd_export_info_free(info, n);
    err = NULL;
    if (nbd_export_exists("e0")) {
        EXPECT_ERROR(nbd_export_del("e0", NBD_REMOVE_HARD, &err),
                     "Export 'e0' is already shutting down");
    }
    assert_true(spin_until(deleted_count_is, GUINT_TO_POINTER(1)));
    assert_string_equal(g_ptr_array_index(deleted, 0), "e0");
    assert_false(nbd_export_exists("e0"));
    char b;
    assert_int_equal(read(fd, &b, 1), 0);      /* the server hung up */
    close(fd);

    /* Safe with nobody attached, and the name is free again. */
    assert_true(add("e1", "n0", "disk", false, NULL));
    assert_true(nbd_export_del("e1", NBD_REMOVE_SAFE, NULL));
    assert_true(spin_until(deleted_count_is, GUINT_TO_POINTER(2)));
    assert_true(add("e2", "n0", "disk", false, NULL));

    /* Stop with a client attached: it is disconnected, the export goes. */
    fd = client_go("disk");
    stop();
    assert_int_equal(deleted->len, 3);
    assert_string_equal(g_ptr_array_index(deleted, 2), "e2");
    assert_int_equal(read(fd, &b, 1), 0);
    close(fd);
    assert_true(spin_until(no_clients, NULL));
    g_ptr_array_set_size(deleted, 0);
    node_unref(bs);
}

/* n read requests of 4 KiB (simple replies: the client did not ask for
 * structured ones), handles 1..n. */
static void send_reads(int fd, int n)
{
    for (int i = 1; i <= n; i++) {
        uint8_t r[28] = { 0x25, 0x60, 0x95, 0x13 };    /* request magic */
        r[15] = i;                                      /* handle */
        r[26] = 0x10;                                   /* length 4096 */
        assert_int_equal(write(fd, r, sizeof(r)), sizeof(r));
    }
}

static bool in_flight_started(void *opaque)
{
    /* The requests sit in null-co's latency: nothing answered yet. */
    return nbd_server_client_count() == 1 && --*(int *)opaque <= 0;
}

/* Hard removal while requests are in the block layer: they finish, their
 * replies go nowhere, the export goes once they are done. */
static void test_del_hard_in_flight(void **state)
{
    GError *err = NULL;
    json_t *o = json_pack("{s:s, s:s, s:s, s:i}", "driver", "null-co",
                          "node-name", "slow", "size", "1M",
                          "latency-ns", 200000000);
    BlockNode *bs = node_open(NULL, o, NODE_O_RDWR, &err);
    assert_non_null(bs);

    start_unix(0);
    assert_true(add("s", "slow", "", false, NULL));
    int fd = client_go("");
    send_reads(fd, 16);
    int spins = 20;
    assert_true(spin_until(in_flight_started, &spins));
    assert_true(nbd_export_del("s", NBD_REMOVE_HARD, NULL));
    assert_true(spin_until(deleted_count_is, GUINT_TO_POINTER(1)));
    assert_true(spin_until(no_clients, NULL));
    close(fd);
    stop();
    g_ptr_array_set_size(deleted, 0);
    node_unref(bs);
}

/* A drained node holds the export's requests back; they complete after. */
static void test_drain(void **state)
{
    BlockNode *bs = null_export_node("d0", true);

    start_unix(0);
    assert_true(add("d", "d0", "", true, NULL));
    int fd = client_go("");
    node_drain_begin(bs);
    send_reads(fd, 4);
    Client c = { fd, g_byte_array_new(), 4 * (16 + 4096) };
    for (int i = 0; i < 50; i++) {
        loop_iterate(false);
        g_usleep(1000);
    }
    client_has(&c);
    assert_int_equal(c.in->len, 0);
    node_drain_end(bs);
    assert_true(spin_until(client_has, &c));
    assert_int_equal(c.in->len, 4 * (16 + 4096));
    g_byte_array_free(c.in, true);
    close(fd);
    assert_true(spin_until(no_clients, NULL));
    stop();
    g_ptr_array_set_size(deleted, 0);
    node_unref(bs);
}

static void test_max_connections(void **state)
{
    BlockNode *bs = null_export_node("m0", false);

    start_unix(1);
    assert_true(add("m", "m0", "", false, NULL));
    int a = client_go("");
    /* The second waits in the backlog: connected, but never greeted. */
    int b = client_connect();
    struct pollfd p = { .fd = b, .events = POLLIN };
    for (int i = 0; i < 50; i++) {
        loop_iterate(false);
        g_usleep(1000);
    }
    assert_int_equal(poll(&p, 1, 0), 0);
    assert_int_equal(nbd_server_client_count(), 1);
    close(a);
    assert_true(spin_until(clients_are, GUINT_TO_POINTER(1)));
    Client c = { b, g_byte_array_new(), 18 };
    assert_true(spin_until(client_has, &c));
    assert_int_equal(c.in->len, 18);
    g_byte_array_free(c.in, true);
    close(b);
    assert_true(spin_until(no_clients, NULL));
    stop();
    g_ptr_array_set_size(deleted, 0);
    node_unref(bs);
}

static unsigned deleted_listener;

static int setup(void **state)
{
    if (test_tmpdir_setup(state) != 0) {
        return -1;
    }
    sock_path = test_path("nbd.sock");
    deleted = g_ptr_array_new_with_free_func(g_free);
    deleted_listener = nbd_export_add_deleted_listener(on_deleted, NULL);
    return 0;
}

static int teardown(void **state)
{
    nbd_export_remove_deleted_listener(deleted_listener);
    g_free(sock_path);
    g_ptr_array_free(deleted, true);
    return test_tmpdir_teardown(state);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_server_start_stop),
        cmocka_unit_test(test_export_add_errors),
        cmocka_unit_test(test_export_del_modes),
        cmocka_unit_test(test_max_connections),
        cmocka_unit_test(test_del_hard_in_flight),
        cmocka_unit_test(test_drain),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
