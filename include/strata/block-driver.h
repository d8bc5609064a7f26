/*
 * The driver interface and the node/edge structures drivers see.
 *
 * A driver is one const BlockDriver table in its own file under
 * block/drivers/.  Every callback is optional unless stated; block/io.c and
 * block/node.c fill in the defaults, check ranges, alignment and permissions
 * before calling a driver, and count requests in flight.  A driver never
 * calls another driver: it reaches its children through child_co_*().
 */
#ifndef STRATA_BLOCK_DRIVER_H
#define STRATA_BLOCK_DRIVER_H

#include "strata/block.h"
#include "strata/block-ops.h"
#include "strata/error.h"
#include "strata/opts.h"
#include "strata/units.h"

/* What a parent class tells the graph about itself. */
struct BlockChildClass {
    const char *kind;                       /* "node", "backend", "job" */
    bool parent_is_node;
    char *(*get_parent_desc)(BlockChild *c); /* for error messages */
    /* Drain notifications: stop issuing new requests / resume. */
    void (*drained_begin)(BlockChild *c);
    void (*drained_end)(BlockChild *c);
    /* True while the parent still has requests in flight. */
    bool (*drained_poll)(BlockChild *c);
    /*
     * The node is about to move to another thread's loop (node_set_loop),
     * with everything connected to it: may the parent follow?  NULL: it
     * cannot (QEMU's "Changing iothreads is not supported by ...").
     * set_loop tells it afterwards, with the nodes still drained.
     */
    bool (*can_set_loop)(BlockChild *c, StrataLoop *loop, GError **errp);
    void (*set_loop)(BlockChild *c, StrataLoop *loop);
};

struct BlockChild {
    char *name;               /* role name: "file", "backing", "root" ... */
    unsigned role;            /* CHILD_ROLE_* */
    const BlockChildClass *klass;
    void *opaque;             /* the parent: BlockNode*, BlockBackend*, Job* */
    BlockNode *bs;            /* the child node */
    uint64_t perm, shared;
    /*
     * During a reopen the edge holds the union/intersection of its old and
     * new permissions; these are the new ones, which the read-only and
     * conflict checks use (has_final says they are set).
     */
    uint64_t final_perm, final_shared;
    bool has_final;
    bool inherits;            /* opened by its parent: follows its reopen */
    GPtrArray *freezers;      /* owner strings, one per freeze */
    bool parent_quiesced;     /* drained_begin was sent to the parent */
};

/* State of one node during a reopen transaction. */
typedef struct ReopenState {
    BlockNode *bs;
    json_t *options;     /* the full new option set (driver takes from it) */
    json_t *requested;   /* the same, untouched: what the node keeps on commit */
    int flags;           /* new open flags */
    bool read_only;
    bool read_only_given; /* named in the node's own options, not inherited */
    int detect_zeroes;   /* DETECT_ZEROES_* after the reopen */
    bool discard_unmap;
    /*
     * true: options left out keep their old values (qemu-io's reopen);
     * false: they go back to their defaults (blockdev-reopen), and a driver
     * refuses to reset what it cannot change.
     */
    bool keep_old;
    bool backing_missing; /* !keep_old and neither "backing" nor "backing.driver" */
    void *opaque;        /* driver's prepared state */
    uint64_t perm_old, shared_old; /* scratch for the permission switch */
} ReopenState;

struct BlockDriver {
    const char *format_name;
    const char *protocol_name;   /* "file", "null-co", "blkdebug" ... */
    size_t instance_size;
    bool is_format;              /* may be probed / has a "file" child */
    bool is_filter;              /* data is the filtered child's data */
    /*
     * A job's own filter, removed when the job ends: nobody may freeze a
     * link to it (QEMU's never_freeze on commit_top and mirror_top).
     */
    bool never_freeze;
    bool supports_backing;

    /* 0..100: how sure the driver is that buf (the first 512+ bytes) is its format. */
    int (*probe)(const uint8_t *buf, int buf_size, const char *filename);
    /* Turn "proto:rest" into options (e.g. filename=rest). */
    bool (*parse_filename)(const char *filename, json_t *options,
                           GError **errp);
    /*
     * Open: take the options the driver knows from `options` (the node
     * checks for leftovers afterwards), open children with
     * node_open_child(), fill bs->bl where needed.
     */
    int (*open)(BlockNode *bs, json_t *options, int flags, GError **errp);
    void (*close)(BlockNode *bs);
    /* Fill bs->bl from the children's limits and the driver's needs. */
    void (*refresh_limits)(BlockNode *bs);
    /* Options that describe this node, for "json:{...}" filenames. */
    void (*refresh_filename)(BlockNode *bs);

    /* Creation. options: size, preallocation, ... (consumed). */
    int (*create)(const char *filename, json_t *options, GError **errp);
    /* Create options this driver accepts (for -o help), NULL-terminated. */
    const char *const *create_opts;
    /*
     * Size measurement (see node_measure): options are the creation
     * options, in_bs the image to be copied or NULL.  Coroutine context.
     */
    bool (*measure)(json_t *options, BlockNode *in_bs, BlockMeasureInfo *info,
                    GError **errp);

    /*
     * Permissions.  child_perm: given what the node's parents take (perm)
     * and share (shared), what must the node take/share on child c?  Called
     * with c->role; during open and reopen the node's flags may be the
     * reopen-state's (rs != NULL).
     */
    void (*child_perm)(BlockNode *bs, BlockChild *c, unsigned role,
                       const ReopenState *rs, uint64_t perm, uint64_t shared,
                       uint64_t *nperm, uint64_t *nshared);
    /* Protocol-level permission check (file locks); commit or abort follows. */
    int (*check_perm)(BlockNode *bs, uint64_t perm, uint64_t shared,
                      GError **errp);
    void (*set_perm)(BlockNode *bs, uint64_t perm, uint64_t shared);
    void (*abort_perm_update)(BlockNode *bs);

    /* Reopen: prepare may fail; commit and abort may not. */
    /*
     * A reopen keeps the node's options unless new ones replace them; the
     * driver may drop from old_opts (flat keys) what new_opts (flat)
     * supersedes beyond the same key, as QEMU's bdrv_join_options.
     */
    void (*reopen_join_options)(json_t *new_opts, json_t *old_opts);
    int (*reopen_prepare)(ReopenState *rs, GError **errp);
    void (*reopen_commit)(ReopenState *rs);
    void (*reopen_abort)(ReopenState *rs);
    /*
     * After a committed reopen, once the node's new read-only state and
     * every edge's new permissions are in force (qcow2 marks its bitmaps
     * in use again when it became writable).  Cannot fail the reopen.
     */
    void (*reopen_commit_post)(ReopenState *rs);

    /*
     * Data path.  offset/bytes are multiples of bl.request_alignment (io.c
     * bounces otherwise), bytes <= bl.max_transfer, and for writes the edge
     * holds BLK_PERM_WRITE or WRITE_UNCHANGED.  Return 0 or -errno.
     */
    int (*co_preadv)(BlockNode *bs, int64_t offset, int64_t bytes,
                     IOVec *qiov, size_t qiov_offset, int flags);
    int (*co_pwritev)(BlockNode *bs, int64_t offset, int64_t bytes,
                      IOVec *qiov, size_t qiov_offset, int flags);
    /*
     * REQ_WRITE_COMPRESSED writes: the driver checks the alignment it
     * needs; without this callback they fail with -ENOTSUP.
     */
    int (*co_pwritev_compressed)(BlockNode *bs, int64_t offset, int64_t bytes,
                                 IOVec *qiov, size_t qiov_offset);
    /* -ENOTSUP makes io.c write a buffer of zeroes instead (unless NO_FALLBACK). */
    int (*co_pwrite_zeroes)(BlockNode *bs, int64_t offset, int64_t bytes,
                            int flags);
    int (*co_pdiscard)(BlockNode *bs, int64_t offset, int64_t bytes);
    /*
     * Make [offset, offset + bytes) unallocated in this node, so that reads
     * fall through to its backing file (child_co_unallocate): whole
     * clusters, the partial ones at the edges keep their data.  NULL: the
     * format cannot (child_co_unallocate fails with -ENOTSUP).
     */
    int (*co_unallocate)(BlockNode *bs, int64_t offset, int64_t bytes);
    /*
     * Copy offload (strata/copy-range.h), QEMU's two-step scheme: the
     * source's driver gets copy_range_from with bs = src's node and
     * passes it on (a filter or raw to its child with
     * child_co_copy_range_from, a protocol to the target side with
     * child_co_copy_range_to); the target's driver gets copy_range_to
     * with bs = dst's node and passes it down the same way until a
     * protocol driver that holds both ends copies.  io.c-style checks,
     * in-flight counting and write accounting are done around each call
     * (block/copy-range.c).  -ENOTSUP: cannot offload this one, nothing
     * was written that a read/write copy does not write again.
     */
    int (*co_copy_range_from)(BlockNode *bs, BlockChild *src, int64_t src_off,
                              BlockChild *dst, int64_t dst_off,
                              int64_t bytes, int read_flags, int write_flags);
    int (*co_copy_range_to)(BlockNode *bs, BlockChild *src, int64_t src_off,
                            BlockChild *dst, int64_t dst_off, int64_t bytes,
                            int read_flags, int write_flags);
    int (*co_flush_to_os)(BlockNode *bs);
    int (*co_flush_to_disk)(BlockNode *bs);
    /*
     * Flush the node and everything below it in one call, instead of the
     * steps above and the flush of each writable child (QEMU's
     * bdrv_co_flush hook: quorum votes on its children's results).
     */
    int (*co_flush)(BlockNode *bs);
    int (*co_truncate)(BlockNode *bs, int64_t offset, bool exact,
                       PreallocMode prealloc, GError **errp);
    /* See node_co_block_status.  Without it: all data, allocated. */
    int (*co_block_status)(BlockNode *bs, bool want_zero, int64_t offset,
                           int64_t bytes, int64_t *pnum, int64_t *map,
                           BlockNode **file);
    int64_t (*getlength)(BlockNode *bs);
    /* Removable media: false while there is no medium (NULL: always). */
    bool (*is_inserted)(BlockNode *bs);
    /* The length may change behind our back (host devices): never cache. */
    bool has_variable_length;
    int64_t (*get_allocated_file_size)(BlockNode *bs);
    /*
     * The identity of the file a protocol node opened (st_dev, st_ino), so
     * that a backing chain that comes back to an image it has already
     * opened is caught however the names differ.  false: none known.
     */
    bool (*get_file_id)(BlockNode *bs, uint64_t *dev, uint64_t *ino);
    int (*get_info)(BlockNode *bs, BlockDriverInfo *bdi);
    /* Driver-specific lines for qemu-io "info" / img info; may be NULL. */
    json_t *(*get_specific_info)(BlockNode *bs, GError **errp);
    /*
     * Consistency check (qemu-img check); fix is CHECK_FIX_*.  Problems
     * found go to report as they are found (see node_check()).
     */
    int (*co_check)(BlockNode *bs, BlockCheckResult *res, int fix,
                    NodeCheckReport *report, void *opaque);
    /*
     * The VM state area (savevm; qemu-io read/write -b), pos bytes into
     * it; coroutine context.  Without them, requests go to the primary
     * child (vmstate.c).
     */
    int (*co_load_vmstate)(BlockNode *bs, IOVec *qiov, int64_t pos);
    int (*co_save_vmstate)(BlockNode *bs, IOVec *qiov, int64_t pos);
    /*
     * Internal snapshots (coroutine context).  create: an empty id_str
     * lets the driver choose one.  goto: by ID, else by name.  delete: the
     * first snapshot matching both (NULL matches anything).  list: the
     * number of snapshots, *list allocated (g_free).
     */
    int (*snapshot_create)(BlockNode *bs, NodeSnapshot *sn, GError **errp);
    int (*snapshot_goto)(BlockNode *bs, const char *id_or_name,
                         GError **errp);
    int (*snapshot_delete)(BlockNode *bs, const char *id, const char *name,
                           GError **errp);
    int (*snapshot_list)(BlockNode *bs, NodeSnapshot **list);
    /*
     * Make a read-only node show a snapshot's data instead of its own
     * (qemu-img convert -l): the first snapshot matching id and name (NULL
     * matches anything).  Not undone: the node is closed afterwards.
     */
    int (*snapshot_load_tmp)(BlockNode *bs, const char *id, const char *name,
                             GError **errp);
    /*
     * Forget all data, so that the image reads through to its backing file
     * again (qemu-img commit).  Coroutine context; without it, -ENOTSUP.
     */
    int (*make_empty)(BlockNode *bs, GError **errp);
    /*
     * Change options of an existing image (qemu-img amend).  options: the
     * amend options given, by their creation names (bools as booleans,
     * sizes and numbers as integers or, past INT64_MAX, as text, strings
     * as strings); force: --force.  status (may be NULL) reports progress
     * as done out of total.  Coroutine context; without it, the format
     * "does not support option amendment".
     */
    int (*amend)(BlockNode *bs, json_t *options, bool force,
                 void (*status)(void *opaque, int64_t done, int64_t total),
                 void *opaque, GError **errp);

    /*
     * Make the image name another backing file (NULL: none) and format
     * (qemu-img rebase); coroutine context.  Without it, -ENOTSUP.
     */
    int (*co_change_backing_file)(BlockNode *bs, const char *file,
                                  const char *fmt);
    /*
     * Persistent dirty bitmaps (strata/dirty-bitmap.h).  The driver loads
     * them at open and stores them at close.  can_store: may one more
     * persistent bitmap be added (QEMU's message prefixes are the
     * caller's); remove: delete it from the image now (absent is no
     * error).  Coroutine context.
     */
    bool (*supports_persistent_dirty_bitmap)(BlockNode *bs);
    bool (*co_can_store_new_dirty_bitmap)(BlockNode *bs, const char *name,
                                          uint32_t granularity,
                                          GError **errp);
    int (*co_remove_persistent_dirty_bitmap)(BlockNode *bs, const char *name,
                                             GError **errp);

    /* blkdebug: an event signalled by a parent driver (debug-event.h). */
    void (*debug_event)(BlockNode *bs, int event);
    /* qemu-io break/resume/remove_break/wait_break: blkdebug only. */
    int (*debug_breakpoint)(BlockNode *bs, const char *event, const char *tag);
    int (*debug_remove_breakpoint)(BlockNode *bs, const char *tag);
    int (*debug_resume)(BlockNode *bs, const char *tag);
    bool (*debug_is_suspended)(BlockNode *bs, const char *tag);

    /* Drain hooks: stop/restart driver-internal activity. */
    void (*drained_begin)(BlockNode *bs);
    void (*drained_end)(BlockNode *bs);
    /*
     * The node now runs in another thread's loop (node_loop(bs)); called
     * from the main thread with the node drained: move timers and
     * watches there.  main_loop_only: the driver cannot leave the main
     * loop (its sockets and timers are not made to move).
     */
    void (*set_loop)(BlockNode *bs);
    bool main_loop_only;
    /*
     * May `to_replace` (somewhere below bs) be replaced by a node showing
     * bs's data without changing what bs's parents see?  NULL: only bs
     * itself, or through the filtered child of a filter.
     */
    bool (*recurse_can_replace)(BlockNode *bs, BlockNode *to_replace);

    /*
     * A force-cancelled job gives up on what it waits for here (QEMU's
     * bdrv_cancel_in_flight): NBD stops waiting for a reconnection, raw
     * passes it on to its file.  NULL: nothing to give up.
     */
    void (*cancel_in_flight)(BlockNode *bs);

    /* Flags (REQ_*) the driver honours on writes and zero writes. */
    int supported_write_flags;
    int supported_zero_flags;
    /* Driver-specific runtime options that reopen may change (NULL: none). */
    const char *const *mutable_opts;
};

struct BlockNode {
    const BlockDriver *drv;
    void *opaque;                /* instance_size bytes of driver state */
    char node_name[64];
    bool auto_named;
    char filename[4096];         /* what `info` and error messages show */
    json_t *options;             /* options as opened (for reopen, info) */
    int open_flags;
    bool read_only;
    /*
     * read-only was among the node's own options (QEMU's explicit options):
     * a reopen of a parent that keeps the old options keeps it.
     */
    bool read_only_given;
    /* auto-read-only=on: a driver that cannot write may open read-only. */
    bool auto_read_only;
    bool force_share;
    int detect_zeroes;           /* DETECT_ZEROES_* */
    bool discard_unmap;          /* discard=unmap */
    int refcnt;

    GList *children;             /* BlockChild*, in attach order */
    GList *parents;              /* BlockChild* whose bs is this node */
    BlockChild *file;            /* shortcuts set by drivers */
    BlockChild *backing;
    /* What the image header names as backing file and its format. */
    char backing_file[4096];
    char backing_format[16];
    /*
     * QEMU's auto_backing_file: the name the backing child is expected to
     * have when nothing overrides it.  The header's name as read (or as
     * last written), replaced by the backing node's filename when that node
     * was opened from the header alone.  A backing child whose filename
     * differs is "overridden" (filename.c), and the node's filename is
     * then a json: name carrying the backing's options.
     */
    char auto_backing_file[4096];

    BlockLimits bl;
    int supported_write_flags;
    int supported_zero_flags;

    /* Permissions as committed (from parents). */
    uint64_t cum_perm, cum_shared;

    /*
     * The loop the node's requests run in (NULL: the main loop); the
     * same for every node of a connected graph (node_set_loop).
     */
    StrataLoop *home;

    /* Drain and requests. */
    int quiesce_counter;
    GSList *drain_sets;          /* per node_drain_begin: the nodes it quiesced */
    int in_flight;               /* atomic: the main thread's drain reads it */
    GQueue tracked_requests;     /* TrackedReq*, oldest first */
    int serialising_requests;    /* how many of them serialise */
    CoQueue serialise_wait;

    int64_t total_bytes;         /* cached length, -1 when unknown */
    ReopenState *reopen_state;   /* while a reopen is being prepared */
    bool probed;                 /* format guessed, not given */
    bool encrypted;              /* guest data is encrypted (info) */
    /*
     * A job's filter made without a node name (QEMU's implicit nodes):
     * its filename and options are its child's, and blockdev-reopen does
     * not replace it (node_set_implicit()).
     */
    bool implicit;
    /*
     * Opened by a parent from options inline (not by reference): only
     * such a node follows its parent's reopen (QEMU's inherits_from).  A
     * node a job inserted above it does not, though it takes over the
     * parent's edge.
     */
    bool opened_by_parent;

    /* Statistics (query-blockstats later). */
    uint64_t rd_bytes, wr_bytes, rd_ops, wr_ops, flush_ops;
    /* block/events.c: the write threshold (0: off), the furthest write. */
    uint64_t write_threshold, wr_highest_offset;
    uint64_t discard_nb_ok, discard_nb_failed, discard_bytes_ok;

    /* Named dirty bitmaps (strata/dirty-bitmap.h), newest first. */
    GList *dirty_bitmaps;
    /*
     * Name -> named bitmap of dirty_bitmaps (block/dirty-bitmap.c): an
     * image may hold 65535 of them, and a linear search per bitmap made
     * opening one take minutes.
     */
    GHashTable *dirty_bitmap_names;

    /*
     * QEMU's write_gen/flushed_gen (block/io.c): finished writes, and the
     * count the last successful flush started at.  Home thread only.
     */
    uint64_t write_gen, flushed_gen;
};

enum { DETECT_ZEROES_OFF = 0, DETECT_ZEROES_ON, DETECT_ZEROES_UNMAP };

/* Register a driver (done for the built-in ones at start-up). */
void driver_register(const BlockDriver *drv);

/*
 * Open a child node for bs from options[name] (a nested object, a flattened
 * "name.*" set, or a string naming an existing node) and attach it.  The
 * sub-options are removed from options.  allow_none: return NULL without
 * error when nothing is given.
 */
BlockChild *node_open_child(BlockNode *bs, json_t *options, const char *name,
                            unsigned role, bool allow_none, GError **errp);

/* Standard permission policies for drivers. */
void node_default_perms(BlockNode *bs, BlockChild *c, unsigned role,
                        const ReopenState *rs, uint64_t perm, uint64_t shared,
                        uint64_t *nperm, uint64_t *nshared);
void node_filter_perms(BlockNode *bs, BlockChild *c, unsigned role,
                       const ReopenState *rs, uint64_t perm, uint64_t shared,
                       uint64_t *nperm, uint64_t *nshared);

/* The two steps of a copy offload (see co_copy_range_from above). */
int coroutine_fn child_co_copy_range_from(BlockChild *src, int64_t src_off,
                                          BlockChild *dst, int64_t dst_off,
                                          int64_t bytes, int read_flags,
                                          int write_flags);
int coroutine_fn child_co_copy_range_to(BlockChild *src, int64_t src_off,
                                        BlockChild *dst, int64_t dst_off,
                                        int64_t bytes, int read_flags,
                                        int write_flags);

/* Set by io.c wrappers when a driver callback returns: in-flight counting. */
void node_inc_in_flight(BlockNode *bs);
void node_dec_in_flight(BlockNode *bs);

/* Forget the cached length of bs and of every node above it (a driver
 * whose length changed other than by truncate calls this). */
void node_invalidate_length(BlockNode *bs);

/* Refresh bl from the driver and children (after open, reopen, attach). */
void node_refresh_limits(BlockNode *bs);

/*
 * The fd of a file or host_device node whose reads go through the page
 * cache (not O_DIRECT), else -1: block/splice.c sends from it.
 */
int file_node_page_cache_fd(BlockNode *bs);

#endif
