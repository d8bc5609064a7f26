/*
 * The NBD server and exports as the QMP commands and strata-daemon's
 * --nbd-server and --export drive them (qapi/cmd-nbd.c, qapi/cmd-export.c).
 * The command line goes through the same generated readers
 * (NbdServerOptions, BlockExportOptions) and the same code as the commands.
 */
#ifndef STRATA_QAPI_NBD_EXPORT_H
#define STRATA_QAPI_NBD_EXPORT_H

#include <glib.h>
#include "qapi-types.h"

/*
 * nbd-server-start with the flat address form --nbd-server uses; monitor
 * says whether a QMP command asks (descriptor addresses differ).
 */
bool qapi_nbd_server_start_flat(SocketAddress *addr, bool monitor,
                                const char *tls_creds,
                                const char *tls_authz,
                                bool has_max_connections,
                                uint32_t max_connections, GError **errp);

/* --nbd-server ARG (dotted keys or JSON), as qemu-storage-daemon. */
bool qapi_nbd_server_cmdline(const char *arg, GError **errp);

/* --export ARG (dotted keys or JSON): read, then block-export-add. */
bool qapi_export_cmdline(const char *arg, GError **errp);

/* Emit BLOCK_EXPORT_DELETED for deleted exports (idempotent). */
void qapi_exports_init(void);

/*
 * Close every export (clients disconnected, the events sent) and stop the
 * NBD server, if it runs.  The daemon calls it at shutdown before jobs and
 * nodes go (qemu-storage-daemon's order), so no request reaches a node
 * being closed.
 */
void qapi_exports_close_all(void);

#endif
