/*
 * The block-layer side of x-blockdev-set-iothread, apart from the
 * generated QAPI types (whose names overlap the library's, e.g.
 * PreallocMode).  Private to the QMP layer.
 */
#ifndef QAPI_NODE_LOOP_H
#define QAPI_NODE_LOOP_H

#include <stdbool.h>
#include <glib.h>

/*
 * QEMU's checks before moving node_name to another loop: the node exists,
 * and unless force no block backend sits on it.
 */
bool node_loop_check(const char *node_name, bool force, GError **errp);

#endif
