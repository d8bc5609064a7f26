/*
 * nbd-serve: serve one image over NBD with strata's server, for tests and
 * benchmarks until strata-daemon drives the server (not installed).
 *
 * It takes the subset of qemu-nbd 7.2's command line the tests use, so a
 * test can start either program with the same arguments:
 *
 *   nbd-serve [-k PATH | -b HOST -p PORT] [-x NAME] [-D DESC] [-f FMT]
 *             [-r] [-e SHARED] [-t] [-A] [--discard=ignore|unmap]
 *             [--detect-zeroes=off|on|unmap] [--cache=MODE] [--aio=MODE]
 *             IMAGE
 *
 * -e is qemu-nbd's "shared": the connection limit (default 1; 0 is
 * unlimited).  Without -t the program exits once its first client has
 * left, as qemu-nbd does.  SIGTERM and SIGINT stop the server cleanly.
 */
#include <getopt.h>
#include <glib-unix.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "strata/backend.h"
#include "strata/block.h"
#include "strata/loop.h"
#include "strata/nbd-server.h"

static bool quit;

static gboolean on_signal(gpointer opaque)
{
    quit = true;
    return G_SOURCE_CONTINUE;
}

static void usage(void)
{
    fprintf(stderr, "usage: nbd-serve [-k PATH | -b HOST -p PORT] [-x NAME] "
            "[-D DESC] [-f FMT] [-r] [-e N] [-t] [-A] IMAGE\n");
    exit(1);
}

int main(int argc, char **argv)
{
    static const struct option longopts[] = {
        { "socket", required_argument, NULL, 'k' },
        { "bind", required_argument, NULL, 'b' },
        { "port", required_argument, NULL, 'p' },
        { "export-name", required_argument, NULL, 'x' },
        { "description", required_argument, NULL, 'D' },
        { "format", required_argument, NULL, 'f' },
        { "read-only", no_argument, NULL, 'r' },
        { "shared", required_argument, NULL, 'e' },
        { "persistent", no_argument, NULL, 't' },
        { "allocation-depth", no_argument, NULL, 'A' },
        { "discard", required_argument, NULL, 'd' },
        { "detect-zeroes", required_argument, NULL, 'z' },
        { "cache", required_argument, NULL, 'c' },
        { "aio", required_argument, NULL, 'a' },
        { NULL, 0, NULL, 0 },
    };
    const char *sock = NULL, *host = NULL, *port = "10809", *name = "";
    const char *desc = NULL, *fmt = NULL;
    bool readonly = false, persistent = false, depth = false;
    unsigned long shared = 1;
    json_t *opts = json_object();
    int c;

    while ((c = getopt_long(argc, argv, "k:b:p:x:D:f:re:tA", longopts,
                            NULL)) != -1) {
        switch (c) {
        case 'k': sock = optarg; break;
        case 'b': host = optarg; break;
        case 'p': port = optarg; break;
        case 'x': name = optarg; break;
        case 'D': desc = optarg; break;
        case 'f': fmt = optarg; break;
        case 'r': readonly = true; break;
        case 'e': shared = strtoul(optarg, NULL, 0); break;
        case 't': persistent = true; break;
        case 'A': depth = true; break;
        case 'd':
            json_object_set_new(opts, "discard", json_string(optarg));
            break;
        case 'z':
            json_object_set_new(opts, "detect-zeroes", json_string(optarg));
            break;
        case 'c':
            /* none and directsync bypass the host cache, as qemu-nbd. */
            if (!strcmp(optarg, "none") || !strcmp(optarg, "directsync")) {
                json_object_set_new(opts, "cache",
                                    json_pack("{sb}", "direct", 1));
            }
            break;
        case 'a':
            json_object_set_new(opts, "file",
                                json_pack("{ss}", "aio", optarg));
            break;
        default:
            usage();
        }
    }
    if (optind != argc - 1) {
        usage();
    }
    if (fmt) {
        json_object_set_new(opts, "driver", json_string(fmt));
    }

    GError *err = NULL;
    BlockNode *bs = node_open(argv[optind], opts,
                              readonly ? 0 : NODE_O_RDWR, &err);
    if (!bs) {
        fprintf(stderr, "nbd-serve: Failed to blk_new_open '%s': %s\n",
                argv[optind], err->message);
        return 1;
    }

    NbdServerAddr addr = { .type = NBD_ADDR_UNIX, .path = sock };
    if (!sock) {
        addr = (NbdServerAddr) {
            .type = NBD_ADDR_INET, .host = host ? host : "0.0.0.0",
            .port = port,
        };
    }
    NbdExportOptions eo = {
        .id = "export0",
        .node_name = node_get_name(bs),
        .name = name,
        .description = desc,
        .writable = !readonly,
        .allocation_depth = depth,
    };
    if (!nbd_server_start(&addr, shared, &err) ||
        !nbd_export_add(&eo, &err)) {
        fprintf(stderr, "nbd-serve: %s\n", err->message);
        return 1;
    }

    g_unix_signal_add(SIGTERM, on_signal, NULL);
    g_unix_signal_add(SIGINT, on_signal, NULL);
    bool served = false;
    while (!quit) {
        loop_iterate(true);
        served |= nbd_server_client_count() > 0;
        if (!persistent && served && nbd_server_client_count() == 0) {
            break;
        }
    }
    nbd_server_stop(NULL);
    node_unref(bs);
    return 0;
}
