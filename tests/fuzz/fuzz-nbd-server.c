/*
 * libFuzzer target: any bytes, sent by a client to strata's NBD server.
 * The input is the whole client side of a connection (handshake, options,
 * requests, payloads) written into a unix socket, followed by a hang-up.
 * Whatever it says, the server must answer or disconnect and let the
 * client go within a bounded time: never a crash, a hang or a sanitizer
 * report.  The export is a 64 KiB writable null-co node with
 * qemu:allocation-depth, so every command reaches the block layer (small,
 * so that no input can ask for gigabytes of replies).
 * Seeds: tests/fuzz/corpus/nbd-server (valid sessions).
 */
#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include "strata/block.h"
#include "strata/loop.h"
#include "strata/nbd-server.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static char sock_path[108];

static void remove_socket(void)
{
    unlink(sock_path);
}

static void setup(void)
{
    GError *err = NULL;
    json_t *o = json_pack("{s:s, s:s, s:s, s:b}", "driver", "null-co",
                          "node-name", "fuzz0", "size", "64k",
                          "read-zeroes", 1);
    BlockNode *bs = node_open(NULL, o, NODE_O_RDWR, &err);
    snprintf(sock_path, sizeof(sock_path), "/tmp/fuzz-nbd-%d.sock",
             (int)getpid());
    atexit(remove_socket);
    NbdServerAddr addr = { .type = NBD_ADDR_UNIX, .path = sock_path };
    NbdExportOptions eo = {
        .id = "e", .node_name = "fuzz0", .name = "", .writable = true,
        .allocation_depth = true,
    };
    if (!bs || !nbd_server_start(&addr, 0, &err) ||
        !nbd_export_add(&eo, &err)) {
        fprintf(stderr, "setup: %s\n", err->message);
        abort();
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static bool ready;
    uint8_t sink[65536];

    if (!ready) {
        setup();
        ready = true;
    }
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK, 0);
    struct sockaddr_un un = { .sun_family = AF_UNIX };
    memcpy(un.sun_path, sock_path, strlen(sock_path));
    if (connect(fd, (struct sockaddr *)&un, sizeof(un)) < 0) {
        abort();
    }

    /* Feed the input while the server runs; read whatever it answers. */
    int64_t deadline = clock_ns() + 10 * 1000000000LL;
    size_t sent = 0;
    bool eof = false;
    if (size == 0) {
        shutdown(fd, SHUT_WR);
    }
    while (!eof) {
        if (sent < size) {
            ssize_t n = send(fd, data + sent, size - sent, MSG_NOSIGNAL);
            if (n > 0) {
                sent += n;
            } else if (n < 0 && errno != EAGAIN) {
                sent = size;        /* the server hung up: fine */
            }
            if (sent == size) {
                shutdown(fd, SHUT_WR);
            }
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
    while (nbd_server_client_count() > 0) {
        loop_iterate(false);
        if (clock_ns() > deadline) {
            fprintf(stderr, "a client was never freed\n");
            abort();
        }
    }
    return 0;
}
