/*
 * libFuzzer target: any bytes, sent by a client to strata-daemon's QMP
 * server over a unix socket: the stream splitter (json-stream.c and the
 * JSON reader), negotiation, the request checks, the dispatcher and the
 * generated argument readers of the commands it runs, the replies.
 *
 * The first byte chooses: bit 0, whether a prelude negotiates and adds a
 * null-co node "n0" (so that most inputs reach the commands); bits 1-7
 * seed where the input is cut into writes (each cut at a random byte of
 * what is left), each write followed by a turn of the loop, as a client's
 * writes arrive.
 * The input ends with a hang-up.  Whatever it says, the server answers,
 * closes the connection and finishes every request within a bounded time:
 * never a crash, a hang or a sanitizer report.  After each input the
 * nodes and jobs it made are closed, so each input starts alike.
 *
 * Only commands whose effects stay inside the process run (a filter in the
 * server answers the others as not found): no files are created or
 * opened, no sockets, threads or mounts.  blockdev-add is limited to
 * null-co and null-aio nodes and to raw and copy-on-read nodes over a node
 * named by reference; the readers of every other driver's options are
 * fuzzed by fuzz-qapi-input.
 * Seeds: tests/fuzz/corpus/qmp-server (sessions of valid requests).
 */
#include <errno.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include "strata/block.h"
#include "strata/loop.h"
#include "strata/qmp-jobs.h"
#include "strata/qmp-server.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static char sock_path[108];

static const char *const in_process[] = {
    "qmp_capabilities", "query-version", "query-commands",
    "query-qmp-schema", "query-named-block-nodes", "query-block",
    "query-blockstats", "query-jobs", "query-iothreads", "query-chardev",
    "query-chardev-backends", "query-fdsets", "query-block-exports",
    "qom-list-types", "qom-list", "qom-get", "x-debug-query-block-graph",
    "job-pause", "job-resume", "job-cancel", "job-complete", "job-finalize",
    "job-dismiss", "getfd", "closefd", "remove-fd", "blockdev-del",
    "blockdev-reopen", "block_resize", "block-set-write-threshold",
    "change-backing-file", "blockdev-snapshot",
    "blockdev-snapshot-internal-sync",
    "blockdev-snapshot-delete-internal-sync", "x-blockdev-set-iothread",
    "blockdev-add", "transaction", NULL,
};

static bool str_is(json_t *v, const char *s)
{
    return json_is_string(v) && !strcmp(json_string_value(v), s);
}

/* Opens nothing outside the process (see the top of the file). */
static bool node_stays_inside(json_t *args)
{
    json_t *drv = json_object_get(args, "driver");
    if (str_is(drv, "null-co") || str_is(drv, "null-aio")) {
        return true;
    }
    return (str_is(drv, "raw") || str_is(drv, "copy-on-read")) &&
           json_is_string(json_object_get(args, "file"));
}

static bool allowed(const char *name, json_t *args)
{
    bool known = false;
    for (int i = 0; in_process[i]; i++) {
        known |= !strcmp(name, in_process[i]);
    }
    if (!known) {
        return false;
    }
    if (!strcmp(name, "blockdev-add")) {
        return node_stays_inside(args);
    }
    if (!strcmp(name, "transaction")) {
        /* blockdev-snapshot-sync creates an image file */
        json_t *actions = json_object_get(args, "actions");
        size_t i;
        json_t *a;
        json_array_foreach(actions, i, a) {
            if (str_is(json_object_get(a, "type"), "blockdev-snapshot-sync")) {
                return false;
            }
        }
    }
    return true;
}

static void remove_socket(void)
{
    unlink(sock_path);
}

static void setup(void)
{
    struct sockaddr_un un = { .sun_family = AF_UNIX };

    signal(SIGPIPE, SIG_IGN);
    qmp_jobs_init();
    qmp_server_set_command_filter(allowed);
    snprintf(sock_path, sizeof(sock_path), "/tmp/fuzz-qmp-%d.sock",
             (int)getpid());
    memcpy(un.sun_path, sock_path, strlen(sock_path));
    int lfd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    unlink(sock_path);
    if (lfd < 0 || bind(lfd, (struct sockaddr *)&un, sizeof(un)) < 0 ||
        listen(lfd, 4) < 0) {
        perror("fuzz-qmp-server: listen");
        abort();
    }
    atexit(remove_socket);
    qmp_monitor_new(lfd, false);
}

static const char prelude[] =
    "{\"execute\": \"qmp_capabilities\", \"arguments\": "
    "{\"enable\": [\"oob\"]}}"
    "{\"execute\": \"blockdev-add\", \"arguments\": {\"driver\": \"null-co\", "
    "\"node-name\": \"n0\", \"size\": 65536, \"read-zeroes\": true}}";

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static bool ready;
    uint8_t sink[65536];

    if (size < 1) {
        return 0;
    }
    if (!ready) {
        setup();
        ready = true;
    }
    GString *in = g_string_new(NULL);
    if (data[0] & 1) {
        g_string_append(in, prelude);
    }
    g_string_append_len(in, (const char *)data + 1, size - 1);
    /* the cuts: a small generator seeded by the first byte */
    uint32_t cut = data[0] >> 1;

    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    struct sockaddr_un un = { .sun_family = AF_UNIX };
    memcpy(un.sun_path, sock_path, strlen(sock_path));
    if (connect(fd, (struct sockaddr *)&un, sizeof(un)) < 0) {
        abort();
    }

    int64_t deadline = clock_ns() + 20 * 1000000000LL;
    size_t sent = 0;
    bool eof = false, shut = false;
    while (!eof) {
        if (sent < in->len) {
            cut = cut * 1103515245u + 12345u;
            size_t chunk = 1 + (cut >> 8) % (in->len - sent);
            ssize_t n = send(fd, in->str + sent, chunk, MSG_NOSIGNAL);
            if (n > 0) {
                sent += n;
            } else if (n < 0 && errno != EAGAIN) {
                sent = in->len;     /* the server hung up: fine */
            }
        }
        if (sent == in->len && !shut) {
            shutdown(fd, SHUT_WR);
            shut = true;
        }
        loop_iterate(false);
        ssize_t r = recv(fd, sink, sizeof(sink), 0);
        if (r == 0 || (r < 0 && errno != EAGAIN)) {
            eof = true;
        }
        if (clock_ns() > deadline) {
            fprintf(stderr, "the server kept a finished client\n");
            abort();
        }
    }
    close(fd);
    g_string_free(in, TRUE);
    while (qmp_server_busy()) {
        loop_iterate(false);
        if (clock_ns() > deadline) {
            fprintf(stderr, "a request never finished\n");
            abort();
        }
    }
    /* as the daemon stops: jobs cancelled, nodes drained and closed */
    drain_all_begin();
    qmp_server_run_shutdown(QMP_SHUTDOWN_JOBS);
    qmp_server_run_shutdown(QMP_SHUTDOWN_NODES);
    drain_all_end();
    return 0;
}
