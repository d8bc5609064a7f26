/* strata-daemon's option handlers (tools/daemon/). */
#ifndef STRATA_DAEMON_H
#define STRATA_DAEMON_H

#include <stdbool.h>
#include <glib.h>

/* --chardev: a listening socket (QEMU's socket chardev options). */
bool daemon_chardev_option(const char *arg, GError **errp);

/* --object: secret (tools/common/objects.c); iothread refused for now. */
void daemon_object_option(const char *arg);

/* Close exports, jobs and nodes as QEMU does when it stops. */
void daemon_shutdown(void);

#endif
