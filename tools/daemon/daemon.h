/* strata-daemon's option handlers (tools/daemon/). */
#ifndef STRATA_DAEMON_H
#define STRATA_DAEMON_H

#include <stdbool.h>
#include <glib.h>

/* --chardev: a listening socket (QEMU's socket chardev options). */
bool daemon_chardev_option(const char *arg, GError **errp);


/* Close exports, jobs and nodes as QEMU does when it stops. */
void daemon_shutdown(void);

#endif
