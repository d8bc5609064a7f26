/*
 * The SHUTDOWN event.  qemu-storage-daemon 7.2 never sends it; strata does,
 * as QEMU 7.2's system emulator, so that whoever drives the daemon can tell
 * an exit it asked for from a crash (docs/qmp.md).
 */
#ifndef QAPI_SHUTDOWN_H
#define QAPI_SHUTDOWN_H

#include "qapi-types.h"

/*
 * The daemon starts to shut down for `cause` (host-qmp-quit, host-signal):
 * SHUTDOWN goes to every negotiated client before anything the shutdown
 * does (events of exports and jobs, quit's reply), the first time only.
 */
void qapi_announce_shutdown(ShutdownCause cause);

#endif
