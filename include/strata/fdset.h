/*
 * File descriptor sets (QEMU's add-fd / remove-fd / query-fdsets), and the
 * "/dev/fdset/N" file names that open a descriptor of set N instead of a
 * path: a management layer that may not let the daemon open files passes
 * them over the QMP socket and names them so.
 *
 * Opening "/dev/fdset/N" with some flags picks the first descriptor of the
 * set (newest first) whose access mode (O_RDONLY, O_WRONLY, O_RDWR) is the
 * one asked for, duplicates it and gives the duplicate the other status
 * flags asked for (O_DIRECT among them), as QEMU does.  A set lives while
 * it has descriptors or open duplicates.
 */
#ifndef STRATA_FDSET_H
#define STRATA_FDSET_H

#include <stdbool.h>
#include <stdint.h>
#include <glib.h>

/* Is name a "/dev/fdset/..." name? */
bool fdset_is_fdset_name(const char *name);

/*
 * Open name ("/dev/fdset/N") with open(2) flags: a new descriptor, or -1
 * with errno and *errp set as QEMU words it.
 */
int fdset_open(const char *name, int flags, GError **errp);

/* The same, with QEMU 10's error messages ("Failed to find fdset
 * /dev/fdset/N", "Failed to find file descriptor with matching
 * flags=0x41"): for migration, whose oracle is QEMU 10.  Block users keep
 * fdset_open(), QEMU 7.2's words. */
int fdset_open_qemu10(const char *name, int flags, GError **errp);

/* Close fd; if it came from fdset_open(), the set forgets it. */
int fdset_close(int fd);

/*
 * Add fd (taken) to set fdset_id, or to the lowest free id if !has_id.
 * Returns the set's id, or -1 with *errp set.
 */
int64_t fdset_add_fd(int fd, bool has_id, int64_t fdset_id,
                     const char *opaque, GError **errp);

/* Mark one descriptor (has_fd) or all of a set removed. */
bool fdset_remove_fd(int64_t fdset_id, bool has_fd, int64_t fd,
                     GError **errp);

/*
 * Close the removed descriptors nobody uses any more; when no client is
 * connected, also those of sets without duplicates in use (QEMU does this
 * when a monitor connection closes).
 */
void fdset_cleanup(bool clients_connected);

/* Walk the sets (ascending id) and their descriptors (newest first). */
typedef void FdsetVisitFn(void *opaque, int64_t fdset_id, int fd,
                          const char *fd_opaque);
void fdset_foreach(FdsetVisitFn *set_start, FdsetVisitFn *fd_fn,
                   void *opaque);

#endif
