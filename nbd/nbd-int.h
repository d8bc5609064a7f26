/*
 * The NBD server's objects, shared by its files (private to nbd/):
 *   server.c     listening sockets, the export table, the public API
 *   negotiate.c  the handshake and options (meta contexts in meta.c)
 *   transmit.c   requests, one coroutine each, and replies
 */
#ifndef NBD_INT_H
#define NBD_INT_H

#include <stdbool.h>
#include <stdint.h>
#include "strata/backend.h"
#include "strata/coroutine.h"
#include "strata/dirty-bitmap.h"
#include "strata/nbd-server.h"
#include "strata/loop.h"
#include "channel.h"

typedef struct NbdExport NbdExport;
typedef struct NbdClient NbdClient;

struct NbdExport {
    char *id;
    char *name;             /* NULL once shutting down: no new client finds it */
    char *description;
    char *node_name;
    BlockBackend *blk;
    uint64_t size;          /* rounded down to 512 bytes, as QEMU */
    uint16_t flags;         /* transmission flags */
    bool allocation_depth;
    /* qemu:dirty-bitmap:NAME contexts, busy while the export exists. */
    DirtyBitmap **bitmaps;
    size_t nr_bitmaps;
    bool shutting_down;
    int refcount;           /* 1 while user-owned, plus one per client */
    GList *clients;
};

/* Meta contexts chosen by a client with NBD_OPT_SET_META_CONTEXT. */
typedef struct NbdMeta {
    NbdExport *exp;         /* the export they were chosen for */
    bool base_allocation;
    bool allocation_depth;
    bool *bitmaps;          /* exp->nr_bitmaps: which were chosen */
    unsigned count;
} NbdMeta;

/* Forget a choice of contexts (frees what it holds). */
void nbd_meta_reset(NbdMeta *meta);

struct NbdClient {
    NbdChannel *ch;
    int refcount;           /* receive loop + each request in flight */
    int closing;            /* atomic: set from the main thread */
    /* The iothread transmission runs in (NULL: the main loop's). */
    StrataLoop *loop;
    NbdExport *exp;         /* after GO / EXPORT_NAME */
    /* Negotiation state. */
    uint32_t opt;           /* option being handled */
    uint32_t optlen;        /* its payload still unread */
    bool structured_reply;
    bool no_zeroes;
    NbdMeta meta;
    /* Transmission state. */
    GQueue outq;            /* replies waiting to be written (transmit.c) */
    bool writing;           /* a coroutine is writing the queue */
    unsigned inflight;
    CoQueue inflight_slots;
    /*
     * sendfile() cannot be told MSG_NOSIGNAL: zero-copy reads only where
     * the program ignores SIGPIPE (strata-daemon does), else a client
     * hanging up would kill it.
     */
    bool may_sendfile;
};

/* server.c */
NbdExport *nbd_export_find_name(const char *name);
/* Exports that clients may list (NBD_OPT_LIST), in creation order. */
GList *nbd_export_list(void);
void nbd_export_ref(NbdExport *exp);
void nbd_export_unref(NbdExport *exp);
void nbd_client_ref(NbdClient *client);
void nbd_client_unref(NbdClient *client);
/* Stop talking to a client; it is freed when its last request ends. */
void nbd_client_close(NbdClient *client);
static inline bool nbd_client_closing(NbdClient *client)
{
    return g_atomic_int_get(&client->closing);
}

/*
 * negotiate.c: the handshake.  0: transmission may start (client->exp
 * set), 1: the client ended negotiation politely, -1: drop it.
 */
int coroutine_fn nbd_negotiate(NbdClient *client);
/* meta.c: NBD_OPT_LIST_META_CONTEXT and NBD_OPT_SET_META_CONTEXT. */
int coroutine_fn nbd_negotiate_meta(NbdClient *client);
/* Option helpers meta.c shares with negotiate.c (see negotiate.c). */
int coroutine_fn nbd_opt_read(NbdClient *client, void *buf, uint32_t len,
                              bool check_nul);
int coroutine_fn nbd_opt_read_name(NbdClient *client, char **name,
                                   uint32_t *len);
int coroutine_fn nbd_opt_skip(NbdClient *client, uint32_t len);
int coroutine_fn nbd_opt_drop(NbdClient *client, uint32_t type,
                              const char *fmt, ...) G_GNUC_PRINTF(3, 4);
int coroutine_fn nbd_opt_send_rep(NbdClient *client, uint32_t type,
                                  const void *payload, uint32_t len);
int coroutine_fn nbd_opt_send_rep2(NbdClient *client, uint32_t type,
                                   const void *p1, uint32_t len1,
                                   const void *p2, uint32_t len2);
char *nbd_sanitize_name(const char *name);

/*
 * export-bitmaps.c: the bitmaps an export offers, found as QEMU finds
 * them (a bare name in the exported node or below it through filters and
 * backing files, {node, name} anywhere), checked, then marked busy and
 * their nodes referenced; release undoes that.  NULL with *errp set.
 */
DirtyBitmap **nbd_export_bitmaps_take(BlockNode *bs, bool readonly,
                                      const NbdExportBitmap *want, size_t n,
                                      GError **errp);
void nbd_export_bitmaps_release(DirtyBitmap **bitmaps, size_t n);

/* transmit.c: serve requests until the client leaves or is closed. */
void coroutine_fn nbd_transmit(NbdClient *client);

#endif
