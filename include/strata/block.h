/*
 * The node graph: public API for tools, jobs, exports and QMP.
 *
 * Threading: every function here runs in the main thread.  Graph changes
 * (attach, detach, replace, reopen) are transactions: they either complete or
 * leave the graph exactly as it was, and they report why in *errp.
 */
#ifndef STRATA_BLOCK_H
#define STRATA_BLOCK_H

#include <glib.h>
#include <jansson.h>
#include <stdbool.h>
#include <stdint.h>
#include "strata/coroutine.h"
#include "strata/iov.h"

typedef struct BlockNode BlockNode;
typedef struct BlockChild BlockChild;
typedef struct BlockChildClass BlockChildClass;
typedef struct BlockDriver BlockDriver;
typedef struct BlockBackend BlockBackend;

/* ---- Permissions (bit values and lock bytes as in QEMU 7.2) ---- */
enum {
    BLK_PERM_CONSISTENT_READ = 0x01,
    BLK_PERM_WRITE = 0x02,
    BLK_PERM_WRITE_UNCHANGED = 0x04,
    BLK_PERM_RESIZE = 0x08,
    BLK_PERM_ALL = 0x0f,
};
#define BLK_PERM_COUNT 4

/* "consistent read, write" (caller frees); "" for 0. */
char *perm_names(uint64_t perm);
/* One permission's QEMU name: "consistent read", "write", ... */
const char *perm_name(uint64_t single_perm);

/* ---- Open flags ---- */
enum {
    NODE_O_RDWR = 0x0002,
    NODE_O_NOCACHE = 0x0020,  /* cache.direct=on: O_DIRECT */
    NODE_O_NO_BACKING = 0x0100, /* do not open the backing file */
    NODE_O_CHECK = 0x1000,      /* opened for a check: no repair on open,
                                   corrupt images open read-write */
    NODE_O_NO_FLUSH = 0x0200, /* cache.no-flush=on */
    NODE_O_PROTOCOL = 0x8000, /* the filename names a protocol node */
    NODE_O_RESIZE = 0x20000,   /* backend: take the resize permission too */
    NODE_O_NO_SHARE = 0x40000, /* backend: do not share write/resize (qemu-img) */
    /*
     * Opened to be described, not read or written (qemu-img info, a new
     * image's backing file): drivers may leave out children that only
     * data I/O needs (qcow2's external data file) and need no keys
     * (encrypted images), as QEMU's BDRV_O_NO_IO.  Children keep it,
     * except those holding metadata.
     */
    NODE_O_NO_IO = 0x10000,
};

/* ---- Child roles (flags, as in QEMU's BdrvChildRole) ---- */
enum {
    CHILD_ROLE_DATA = 1 << 0,
    CHILD_ROLE_METADATA = 1 << 1,
    CHILD_ROLE_FILTERED = 1 << 2,
    CHILD_ROLE_COW = 1 << 3,
    CHILD_ROLE_PRIMARY = 1 << 4,
    CHILD_ROLE_IMAGE = CHILD_ROLE_DATA | CHILD_ROLE_METADATA,
};

/* ---- Opening nodes ---- */

/*
 * Open a node graph from a filename and/or options (either may be NULL;
 * options is consumed).  Filenames may be plain paths, "json:{...}" or
 * "protocol:..." forms.  Without a "driver" option the format is probed.
 * The node gets an automatic "#blockNNN" name unless "node-name" is given.
 * Returns a node with one reference owned by the caller.
 */
BlockNode *node_open(const char *filename, json_t *options, int flags,
                     GError **errp);
void node_ref(BlockNode *bs);
void node_unref(BlockNode *bs);
/*
 * Whether an open failed because the backing chain comes back to an image
 * it already holds ("Backing file 'x' creates an infinite loop.").  That
 * message names the culprit itself, so callers show it as it is, without
 * the "Could not open ...: " context they give other open errors.
 */
bool node_error_is_backing_loop(const GError *err);
/* The identity (st_dev, st_ino) of the file holding bs's data, if any. */
bool node_get_file_id(BlockNode *bs, uint64_t *dev, uint64_t *ino);

BlockNode *node_find(const char *node_name);
/* Iterate all nodes: pass NULL first. */
BlockNode *node_next(BlockNode *bs);

const char *node_get_name(const BlockNode *bs);
const char *node_get_filename(const BlockNode *bs);
const char *node_get_format_name(const BlockNode *bs);
const BlockDriver *node_get_driver(const BlockNode *bs);
/* The backing file the image names, as a path (relative names resolved
 * against the image's directory); NULL if none, or if the image's storage
 * has no directory (a quorum).  Caller frees. */
char *node_get_full_backing_filename(BlockNode *bs);
/* bs's backing child is not the image its header names (QEMU's
 * bdrv_backing_overridden): given at blockdev-add, or replaced since. */
bool node_backing_overridden(BlockNode *bs);
/* bs's backing child was just opened from the name bs's header gives,
 * with no options of its own (QEMU's implicit backing): its filename is
 * the name expected from then on, so it does not count as overridden. */
void node_backing_opened_from_header(BlockNode *bs);
bool node_is_read_only(const BlockNode *bs);
int node_get_flags(const BlockNode *bs);
int64_t node_getlength(BlockNode *bs); /* -errno on error */
/* Bytes the image occupies on disk (st_blocks), or -errno / -ENOTSUP. */
int64_t node_get_allocated_file_size(BlockNode *bs);
/* The first child carrying the node's data (file or filtered child). */
BlockNode *node_primary_child(BlockNode *bs);
/* The child the node's data comes from when it is a filter, else NULL. */
BlockNode *node_filtered_child(BlockNode *bs);
/* Walk past filters to the first non-filter node. */
BlockNode *node_skip_filters(BlockNode *bs);
/* The driver's cancel_in_flight, if any (QEMU's bdrv_cancel_in_flight). */
void node_cancel_in_flight(BlockNode *bs);
/* A job's filter made without a node name: the node the user named or the
 * chain goes on to shows through it (QEMU's implicit nodes). */
void node_set_implicit(BlockNode *bs);
/* bs, or below its implicit filters (bdrv_skip_implicit_filters). */
BlockNode *node_skip_implicit_filters(BlockNode *bs);
/* Whether discards reach the storage (discard=unmap, QEMU's BDRV_O_UNMAP). */
bool node_discards_unmap(const BlockNode *bs);
/*
 * QEMU's bdrv_can_write_zeroes_with_unmap: zeroes written with
 * REQ_MAY_UNMAP are cheap (discard=unmap and the driver can punch holes).
 */
bool node_can_write_zeroes_with_unmap(const BlockNode *bs);
/*
 * QEMU's bdrv_recurse_can_replace: may `to_replace` be replaced by a node
 * whose data is bs's (a mirror of bs) without an abrupt change of data
 * any user sees?  (block/replace.c)
 */
bool node_recurse_can_replace(BlockNode *bs, BlockNode *to_replace);

/* Cumulative permissions other users hold on bs. */
void node_get_cumulative_perm(const BlockNode *bs, uint64_t *perm,
                              uint64_t *shared);

/* ---- Graph edits (transactions) ---- */

/* Attach child_bs under parent as child `name`; permissions from parent's driver. */
BlockChild *node_attach_child(BlockNode *parent, BlockNode *child_bs,
                              const char *name, unsigned role, GError **errp);
/* Attach with an explicit parent class (backends, jobs, tests). */
BlockChild *child_attach(BlockNode *child_bs, const char *name,
                         const BlockChildClass *klass, unsigned role,
                         uint64_t perm, uint64_t shared, void *opaque,
                         GError **errp);
/* Detach (fails only when the edge is frozen). Drops the edge's reference. */
bool child_detach(BlockChild *c, GError **errp);
/* Change the permissions an edge takes and shares. */
bool child_set_perm(BlockChild *c, uint64_t perm, uint64_t shared,
                    GError **errp);
/* Point c at new_bs instead of its current node. */
bool child_replace_node(BlockChild *c, BlockNode *new_bs, GError **errp);
/* Move every parent of `from` (except those in `from`'s own subtree) to `to`. */
bool node_replace(BlockNode *from, BlockNode *to, GError **errp);
/*
 * Recompute the filename of bs and of the nodes above it after a graph
 * change (a new backing node makes a json: name out of date).
 */
void node_refresh_filename(BlockNode *bs);
/* bs's filename again from its subtree's current shape, children first
 * (QEMU refreshes so before it shows a node's filename). */
void node_refresh_filename_tree(BlockNode *bs);
/* Re-run the permission calculation below bs (after a driver-state change). */
bool node_refresh_perms(BlockNode *bs, GError **errp);

BlockNode *child_node(const BlockChild *c);
const char *child_name(const BlockChild *c);
/* Children of bs: iterate with prev == NULL first. */
BlockChild *node_next_child(BlockNode *bs, BlockChild *prev);
BlockChild *node_next_parent(BlockNode *bs, BlockChild *prev);
BlockChild *node_find_child(BlockNode *bs, const char *name);
void child_get_perm(const BlockChild *c, uint64_t *perm, uint64_t *shared);
/* "node 'x'", "block device 'drive0'", "commit job 'c0'" */
char *child_parent_desc(const BlockChild *c);

/* ---- Freeze counters (seed 002: the GRAPH_MOD replacement) ---- */

/*
 * Anyone may freeze an edge; `owner` says who, for error messages.  A frozen
 * edge cannot be detached or retargeted.  Freezes nest: each unfreeze drops
 * one freeze by the same owner.
 */
void child_freeze(BlockChild *c, const char *owner);
void child_unfreeze(BlockChild *c, const char *owner);
int child_frozen_count(const BlockChild *c);
/* False + error naming the owner when c is frozen. */
bool child_check_not_frozen(const BlockChild *c, const char *action,
                            GError **errp);
/* Freeze every edge on the filtered/backing path from top down to base. */
bool chain_freeze(BlockNode *top, BlockNode *base, const char *owner,
                  GError **errp);
void chain_unfreeze(BlockNode *top, BlockNode *base, const char *owner);
/* The edge through which bs's data comes from below (backing, else the
 * filtered child), the path chain_freeze() walks; NULL at the bottom. */
BlockChild *chain_child(BlockNode *bs);

/* ---- Reopen (transaction over several nodes) ---- */

typedef struct ReopenQueue ReopenQueue;

/*
 * Queue bs for reopen with new options (merged over its current options;
 * NULL keeps them) and read-only state.  Consumes options.  Children whose
 * options are given inline ("file.cache.direct") are queued too.
 */
ReopenQueue *reopen_queue_add(ReopenQueue *q, BlockNode *bs, json_t *options,
                              bool read_only);
/*
 * The same with keep_old_opts false (blockdev-reopen): options is the whole
 * new option set, what it leaves out goes back to its default, and "backing"
 * must be given when the node has one.  Children opened with the node follow
 * with the options given inline for them (none: their defaults).
 */
ReopenQueue *reopen_queue_add_opts(ReopenQueue *q, BlockNode *bs,
                                   json_t *options, bool read_only,
                                   bool keep_old_opts);
/* Prepare all, switch permissions, commit all; or abort all. Frees q. */
bool reopen_multiple(ReopenQueue *q, GError **errp);
void reopen_queue_free(ReopenQueue *q);
/* Convenience: one node, new read-only state, options (may be NULL). */
bool node_reopen(BlockNode *bs, json_t *options, bool read_only,
                 GError **errp);

/* ---- Drain ---- */

void node_drain_begin(BlockNode *bs);
void node_drain_end(BlockNode *bs);
void drain_all_begin(void);
void drain_all_end(void);
bool node_is_quiesced(const BlockNode *bs);

/* ---- Threads: the loop a node runs in (block/node-loop.c) ---- */

/* The node's loop: an iothread's, or the main one. */
StrataLoop *node_loop(const BlockNode *bs);
/*
 * Move bs and every node connected to it to loop (NULL: the main loop),
 * as QEMU's bdrv_try_change_aio_context: each parent that is not a node
 * is asked first (a backend in use, an export with fixed-iothread refuse),
 * then the nodes are drained, moved, and released.  Main thread only.
 */
bool node_set_loop(BlockNode *bs, StrataLoop *loop, GError **errp);
/*
 * Run fn(opaque) in a coroutine in bs's loop and come back (see
 * co_call_in): how main-thread code reaches a node in an iothread.
 */
void node_co_call(BlockNode *bs, CoroutineEntry *fn, void *opaque);

/* ---- I/O through an edge (coroutine context; -errno results) ---- */

enum {
    REQ_FUA = 0x1,           /* write through to stable storage */
    REQ_MAY_UNMAP = 0x2,     /* zeroes may be written as a hole */
    REQ_NO_FALLBACK = 0x4,   /* fail with -ENOTSUP rather than write data */
    REQ_WRITE_UNCHANGED = 0x8, /* the data written is what is there already */
    REQ_WRITE_COMPRESSED = 0x10, /* store compressed (whole clusters) */
    REQ_PREFETCH = 0x20,     /* read for a side effect (copy-on-read): no data */
    /*
     * A write (or zero write) that waits for every overlapping request in
     * flight on the node it is issued on, reads included, and that
     * overlapping requests coming later wait for: the clusters it touches
     * are its own meanwhile (QEMU's BDRV_REQ_SERIALISING).  Not passed
     * down to the nodes below.
     */
    REQ_SERIALISING = 0x40,
};

int coroutine_fn child_co_preadv(BlockChild *c, int64_t offset, int64_t bytes,
                                 IOVec *qiov, size_t qiov_offset, int flags);
int coroutine_fn child_co_pwritev(BlockChild *c, int64_t offset, int64_t bytes,
                                  IOVec *qiov, size_t qiov_offset, int flags);
int coroutine_fn child_co_pread(BlockChild *c, int64_t offset, int64_t bytes,
                                void *buf, int flags);
int coroutine_fn child_co_pwrite(BlockChild *c, int64_t offset, int64_t bytes,
                                 const void *buf, int flags);
int coroutine_fn child_co_pwrite_zeroes(BlockChild *c, int64_t offset,
                                        int64_t bytes, int flags);
int coroutine_fn child_co_pdiscard(BlockChild *c, int64_t offset,
                                   int64_t bytes);
/*
 * Not a guest discard: the range becomes unallocated in the node's format
 * layer and reads fall through to its backing file (a guest discard makes
 * qcow2 clusters read as zeroes instead).  Whole clusters; edges keep
 * their data.  Needs WRITE on c, ignores the discard policy (it changes
 * where data is read from, not whether space is given back).  With
 * unless_dirty (a bitmap on c's node), the range is left alone and
 * -EAGAIN returned if any of it is marked there once the overlapping
 * requests have ended; writes that come later wait for this one.  A
 * caller giving it vouches that the backing file holds what the range
 * held (commit copied it there): no dirty bitmap is marked then; without
 * it the range counts as written.
 * -ENOTSUP: the format cannot.
 */
/* Whether bs's format can make ranges unallocated (child_co_unallocate). */
bool node_can_unallocate(const BlockNode *bs);
struct DirtyBitmap;
int coroutine_fn child_co_unallocate(BlockChild *c, int64_t offset,
                                     int64_t bytes,
                                     const struct DirtyBitmap *unless_dirty);
int coroutine_fn node_co_flush(BlockNode *bs);
/*
 * The node's VM state area (see block/vmstate.c): qiov->size bytes at pos.
 * 0 or -errno (-ENOTSUP: no node on the primary-child path has one).
 */
int coroutine_fn node_co_load_vmstate(BlockNode *bs, IOVec *qiov,
                                      int64_t pos);
int coroutine_fn node_co_save_vmstate(BlockNode *bs, IOVec *qiov,
                                      int64_t pos);
int coroutine_fn child_co_truncate(BlockChild *c, int64_t offset, bool exact,
                                   int prealloc, GError **errp);

/* Block status flags (QEMU's BDRV_BLOCK_*). */
enum {
    BLOCK_DATA = 0x01,
    BLOCK_ZERO = 0x02,
    BLOCK_OFFSET_VALID = 0x04,
    BLOCK_RAW = 0x08,       /* driver: ask the returned file node */
    BLOCK_ALLOCATED = 0x10,
    BLOCK_EOF = 0x20,
    BLOCK_RECURSE = 0x40,   /* driver: also ask the file node for zeroes */
};

/*
 * Status of [offset, offset+bytes) in bs: returns flags for the first
 * *pnum bytes (>0 unless at EOF), or -errno.  map and file say where the data
 * lives when BLOCK_OFFSET_VALID is set.
 */
int coroutine_fn node_co_block_status(BlockNode *bs, bool want_zero,
                                      int64_t offset, int64_t bytes,
                                      int64_t *pnum, int64_t *map,
                                      BlockNode **file);
/*
 * Make the image of bs name another backing file and format (NULL: no
 * backing file), as QEMU's bdrv_change_backing_file: the format driver
 * rewrites its header.  -ENOTSUP for formats without backing files.
 */
int coroutine_fn node_co_change_backing_file(BlockNode *bs, const char *file,
                                             const char *fmt);
/*
 * 1 if the first *pnum bytes are allocated in bs itself (or anywhere in the
 * chain down to but excluding base when above is true), 0 if not, -errno.
 */
int coroutine_fn node_co_is_allocated(BlockNode *bs, int64_t offset,
                                      int64_t bytes, int64_t *pnum);
int coroutine_fn node_co_is_allocated_above(BlockNode *top, BlockNode *base,
                                            bool include_base, int64_t offset,
                                            int64_t bytes, int64_t *pnum);
/*
 * Block status of the chain from bs down to base (included if
 * include_base), with QEMU's rules: *depth is the layer that answered
 * (1 = bs), 0 when no layer allocates the range.
 */
int coroutine_fn node_co_block_status_above(BlockNode *bs, BlockNode *base,
                                            bool include_base, bool want_zero,
                                            int64_t offset, int64_t bytes,
                                            int64_t *pnum, int64_t *map,
                                            BlockNode **file, int *depth);

/* Preallocation modes (QEMU's PreallocMode). */
typedef enum {
    PREALLOC_MODE_OFF = 0,
    PREALLOC_MODE_METADATA,
    PREALLOC_MODE_FALLOC,
    PREALLOC_MODE_FULL,
    PREALLOC_MODE__MAX,
} PreallocMode;
extern const char *const prealloc_mode_names[PREALLOC_MODE__MAX + 1];

/* ---- Image creation ---- */

/*
 * Create an image: fmt names a format or protocol driver, options holds the
 * creation options (size, preallocation, ...; consumed).  Errors are QEMU's.
 */
bool image_create(const char *fmt, const char *filename, json_t *options,
                  GError **errp);
const BlockDriver *driver_find(const char *name);
/*
 * The driver for a protocol name ("file", "nbd+unix"): several drivers
 * may share a format name, so this is not driver_find().
 */
const BlockDriver *driver_find_protocol(const char *proto);
/* NULL-terminated list of driver names (caller frees the array only). */
const char **driver_list(void);

#endif
