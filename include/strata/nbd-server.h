/*
 * The NBD server: exports of block nodes over the NBD protocol.
 *
 * This is the library layer the daemon drives.  The QMP commands map onto
 * it one to one:
 *
 *   nbd-server-start    nbd_server_start()
 *   nbd-server-stop     nbd_server_stop()
 *   block-export-add    nbd_export_add()         (type 'nbd')
 *   nbd-server-add      nbd_export_add() with legacy_add set
 *   block-export-del    nbd_export_del()
 *   nbd-server-remove   nbd_export_del()         (every export here is NBD)
 *   query-block-exports nbd_export_query()
 *   BLOCK_EXPORT_DELETED  a listener from nbd_export_add_deleted_listener()
 *
 * There is one server per process, as in QEMU.  Everything runs in the main
 * thread's loop; each client is served by coroutines, so a slow or stalled
 * client never blocks the loop, the other clients or the caller.
 *
 * Errors are GErrors carrying QEMU 7.2's messages (qemu-storage-daemon's
 * replies to the same commands), so scripts that match on them keep working.
 */
#ifndef STRATA_NBD_SERVER_H
#define STRATA_NBD_SERVER_H

#include <glib.h>
#include <stdbool.h>
#include <stdint.h>

/* Where the server listens (QEMU's SocketAddress, the flat form). */
typedef enum {
    NBD_ADDR_UNIX,      /* path: a unix socket, created (and removed at stop) */
    NBD_ADDR_INET,      /* host and port: every address host resolves to */
    NBD_ADDR_FD,        /* fd: an already listening socket, now ours */
} NbdAddrType;

typedef struct NbdServerAddr {
    NbdAddrType type;
    const char *path;   /* unix */
    const char *host;   /* inet: NULL or "" means every local address */
    const char *port;   /* inet: a number or a service name */
    bool ipv4, ipv6;    /* inet: restrict to one family when only one is set */
    int fd;             /* fd */
} NbdServerAddr;

/*
 * Start listening.  max_connections 0 means unlimited (qemu-storage-
 * daemon's default); with a limit, further clients wait in the listen
 * backlog until one leaves.  Errors: "NBD server already running", or the
 * socket error in QEMU's words ("Failed to bind socket to PATH: ...").
 */
bool nbd_server_start(const NbdServerAddr *addr, uint32_t max_connections,
                      GError **errp);
bool nbd_server_is_running(void);
/*
 * Close every export (clients are disconnected, as with mode 'hard'), wait
 * until they are gone, and stop listening.  "NBD server not running".
 * May be called from a coroutine (it yields while waiting) or from the
 * loop's thread outside one (it runs the loop).
 */
bool nbd_server_stop(GError **errp);

/* A dirty bitmap to offer as the meta context qemu:dirty-bitmap:NAME. */
typedef struct NbdExportBitmap {
    const char *node;   /* NULL: the exported node or one below it */
    const char *name;
} NbdExportBitmap;

/* block-export-add's arguments for type 'nbd' (BlockExportOptions). */
typedef struct NbdExportOptions {
    const char *id;           /* export id (block-export-add's 'id') */
    const char *node_name;    /* node to export */
    const char *name;         /* NBD export name; NULL: the node name */
    const char *description;  /* NULL: none */
    bool writable;
    bool writethrough;        /* flush after every write */
    /*
     * The node stays in the thread it runs in (block-export-add's
     * fixed-iothread): moving it is refused while the export exists.
     */
    bool fixed_loop;
    bool allocation_depth;    /* also offer qemu:allocation-depth */
    /*
     * Dirty bitmaps offered, in this order; each is busy (no command may
     * change or remove it) until the export is deleted.  A read-only
     * export of a writable node refuses an enabled bitmap.
     */
    const NbdExportBitmap *bitmaps;
    size_t nr_bitmaps;
    /*
     * nbd-server-add's rules instead of block-export-add's: a read-only node
     * is exported read-only even when writable is asked, rather than being
     * refused; name defaults to node_name (nbd-server-add's 'device') and
     * id to name, so a name that is no valid id is refused as in QEMU.
     */
    bool legacy_add;
} NbdExportOptions;

/*
 * Add an export.  Errors (QEMU 7.2's, in the order it checks them):
 * "Invalid block export id", "Block export id 'x' is already in use",
 * "Cannot find device='' nor node-name='x'" (a GenericError in QEMU too),
 * "Cannot export read-only node as writable",
 * a permission conflict, "NBD server not running", "export name 'x' too
 * long", "description 'x' too long", "NBD server already has export named
 * 'x'", then per bitmap "Bitmap 'x' is not found" (a bare name), "Node 'x'
 * not found" / "Dirty bitmap 'x' not found" ({node, name}), a bitmap busy
 * or inconsistent, "Enabled bitmap 'x' incompatible with readonly
 * export".
 */
bool nbd_export_add(const NbdExportOptions *opts, GError **errp);

typedef enum {
    NBD_REMOVE_SAFE,    /* refuse while clients are connected */
    NBD_REMOVE_HARD,    /* disconnect them */
} NbdRemoveMode;

/*
 * Remove an export.  New clients cannot reach it at once; it is deleted
 * (and the deleted listeners called) when its last client and request are
 * gone, which with no client is before the next loop iteration ends.
 * Errors: "Export 'x' is not found", "Export 'x' is already shutting down",
 * "export 'x' still in use" (safe mode with clients connected).
 */
bool nbd_export_del(const char *id, NbdRemoveMode mode, GError **errp);

/* One entry of query-block-exports (BlockExportInfo; type is always nbd). */
typedef struct NbdExportInfo {
    char *id;
    char *node_name;
    bool shutting_down;
} NbdExportInfo;

/*
 * Every export, the newest first, as query-block-exports lists them
 * (exports being removed included, with shutting_down set).
 */
NbdExportInfo *nbd_export_query(size_t *count);
void nbd_export_info_free(NbdExportInfo *info, size_t count);

/*
 * Whether an export with this id exists.  Every export here is an NBD
 * export, so nbd-server-remove's "Block export 'x' is not an NBD export"
 * can only come from other export types the QMP layer may add.
 */
bool nbd_export_exists(const char *id);

/*
 * Called with the export id when an export has been deleted (after
 * nbd_export_del or nbd_server_stop, once its clients are gone).  The QMP
 * layer emits BLOCK_EXPORT_DELETED from here.  Returns a handle for
 * nbd_export_remove_deleted_listener().
 */
typedef void NbdExportDeletedFunc(const char *id, void *opaque);
unsigned nbd_export_add_deleted_listener(NbdExportDeletedFunc *fn,
                                         void *opaque);
void nbd_export_remove_deleted_listener(unsigned handle);

/* Number of clients currently connected to the server (for tests, stats). */
unsigned nbd_server_client_count(void);

/*
 * The busy wait of the exports served by the main loop (nbd/spin.c), in
 * ns: 0 turns it off, a positive value caps it (it never exceeds 128 us).
 * An export in an iothread follows the iothread's poll-max-ns instead;
 * QEMU 7.2's main loop has no poll-max-ns, hence the environment
 * variable, which the daemon reads at start-up.
 */
#define NBD_SERVER_MAIN_POLL_ENV "STRATA_MAIN_LOOP_POLL_MAX_NS"
void nbd_server_set_main_poll_max_ns(int64_t ns);
/* Set it from NBD_SERVER_MAIN_POLL_ENV if that is set. */
bool nbd_server_main_poll_from_env(GError **errp);

#endif
