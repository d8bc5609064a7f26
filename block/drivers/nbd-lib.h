/*
 * libnbd, loaded when the first nbd node is opened rather than at start.
 *
 * libnbd brings gnutls, libxml2, ICU and libstdc++ with it (some twenty
 * shared libraries); linking it made every strata program map and relocate
 * them at start, though only the NBD client driver uses it.  The driver
 * calls libnbd through nbd_lib, a table of the functions it uses, typed
 * from <libnbd.h> so that the compiler checks every call as before.
 */
#ifndef STRATA_NBD_LIB_H
#define STRATA_NBD_LIB_H

#include <stdbool.h>
#include <glib.h>
#include <libnbd.h>

/* Every libnbd function the driver calls. */
#define NBD_LIB_FUNCTIONS(F)                                                  \
    F(create) F(close) F(get_error) F(get_errno)                              \
    F(set_export_name) F(add_meta_context) F(set_pread_initialize)            \
    F(aio_connect_socket) F(aio_disconnect) F(aio_get_fd)                     \
    F(aio_get_direction) F(aio_notify_read) F(aio_notify_write)               \
    F(aio_is_ready) F(aio_is_dead) F(aio_is_closed)                           \
    F(get_size) F(is_read_only) F(get_block_size)                             \
    F(can_flush) F(can_fua) F(can_trim) F(can_zero) F(can_fast_zero)          \
    F(can_meta_context) F(can_multi_conn)                                     \
    F(aio_pread) F(aio_pwrite) F(aio_zero) F(aio_trim) F(aio_flush)           \
    F(aio_block_status)

typedef struct NbdLib {
#define NBD_LIB_MEMBER(name) __typeof__(nbd_##name) *name;
    NBD_LIB_FUNCTIONS(NBD_LIB_MEMBER)
#undef NBD_LIB_MEMBER
} NbdLib;

/*
 * Filled by the first successful nbd_lib_load(); read only by code that
 * runs for a node whose open loaded it.
 */
extern NbdLib nbd_lib;

/*
 * Load libnbd once (later calls return at once).  False with errp set if
 * it cannot be loaded or lacks a function; a later call tries again.
 */
bool nbd_lib_load(GError **errp);

#endif
