/*
 * Debug events: points in drivers where blkdebug can inject errors or
 * suspend requests.  Names and order follow QEMU's BlkdebugEvent so that
 * blkdebug rule files written for QEMU work unchanged.
 */
#ifndef STRATA_DEBUG_EVENT_H
#define STRATA_DEBUG_EVENT_H

#include "strata/block.h"

#define BLKDBG_EVENTS(X)                                                       \
    X(L1_UPDATE, "l1_update")                                                  \
    X(L1_GROW_ALLOC_TABLE, "l1_grow_alloc_table")                              \
    X(L1_GROW_WRITE_TABLE, "l1_grow_write_table")                              \
    X(L1_GROW_ACTIVATE_TABLE, "l1_grow_activate_table")                        \
    X(L2_LOAD, "l2_load")                                                      \
    X(L2_UPDATE, "l2_update")                                                  \
    X(L2_UPDATE_COMPRESSED, "l2_update_compressed")                            \
    X(L2_ALLOC_COW_READ, "l2_alloc_cow_read")                                  \
    X(L2_ALLOC_WRITE, "l2_alloc_write")                                        \
    X(READ_AIO, "read_aio")                                                    \
    X(READ_BACKING_AIO, "read_backing_aio")                                    \
    X(READ_COMPRESSED, "read_compressed")                                      \
    X(WRITE_AIO, "write_aio")                                                  \
    X(WRITE_COMPRESSED, "write_compressed")                                    \
    X(VMSTATE_LOAD, "vmstate_load")                                            \
    X(VMSTATE_SAVE, "vmstate_save")                                            \
    X(COW_READ, "cow_read")                                                    \
    X(COW_WRITE, "cow_write")                                                  \
    X(REFTABLE_LOAD, "reftable_load")                                          \
    X(REFTABLE_GROW, "reftable_grow")                                          \
    X(REFTABLE_UPDATE, "reftable_update")                                      \
    X(REFBLOCK_LOAD, "refblock_load")                                          \
    X(REFBLOCK_UPDATE, "refblock_update")                                      \
    X(REFBLOCK_UPDATE_PART, "refblock_update_part")                            \
    X(REFBLOCK_ALLOC, "refblock_alloc")                                        \
    X(REFBLOCK_ALLOC_HOOKUP, "refblock_alloc_hookup")                          \
    X(REFBLOCK_ALLOC_WRITE, "refblock_alloc_write")                            \
    X(REFBLOCK_ALLOC_WRITE_BLOCKS, "refblock_alloc_write_blocks")              \
    X(REFBLOCK_ALLOC_WRITE_TABLE, "refblock_alloc_write_table")                \
    X(REFBLOCK_ALLOC_SWITCH_TABLE, "refblock_alloc_switch_table")              \
    X(CLUSTER_ALLOC, "cluster_alloc")                                          \
    X(CLUSTER_ALLOC_BYTES, "cluster_alloc_bytes")                              \
    X(CLUSTER_FREE, "cluster_free")                                            \
    X(FLUSH_TO_OS, "flush_to_os")                                              \
    X(FLUSH_TO_DISK, "flush_to_disk")                                          \
    X(PWRITEV_RMW_HEAD, "pwritev_rmw_head")                                    \
    X(PWRITEV_RMW_AFTER_HEAD, "pwritev_rmw_after_head")                        \
    X(PWRITEV_RMW_TAIL, "pwritev_rmw_tail")                                    \
    X(PWRITEV_RMW_AFTER_TAIL, "pwritev_rmw_after_tail")                        \
    X(PWRITEV, "pwritev")                                                      \
    X(PWRITEV_ZERO, "pwritev_zero")                                            \
    X(PWRITEV_DONE, "pwritev_done")                                            \
    X(EMPTY_IMAGE_PREPARE, "empty_image_prepare")                              \
    X(L1_SHRINK_WRITE_TABLE, "l1_shrink_write_table")                          \
    X(L1_SHRINK_FREE_L2_CLUSTERS, "l1_shrink_free_l2_clusters")                \
    X(COR_WRITE, "cor_write")                                                  \
    X(CLUSTER_ALLOC_SPACE, "cluster_alloc_space")                              \
    X(NONE, "none")

typedef enum {
#define BLKDBG_ENUM(id, name) BLKDBG_##id,
    BLKDBG_EVENTS(BLKDBG_ENUM)
#undef BLKDBG_ENUM
    BLKDBG__MAX,
} BlkdebugEvent;

extern const char *const blkdbg_event_names[BLKDBG__MAX + 1];
/* -1 if name is not an event. */
int blkdbg_event_from_name(const char *name);

/*
 * Signal event at the node below c (drivers call this with their file child
 * just before the corresponding I/O).  Only the node directly below sees it,
 * as in QEMU 7.2: a raw node between a format and blkdebug hides the
 * format's events, and rule files depend on that.  Coroutine context:
 * blkdebug may suspend here.
 */
void coroutine_fn child_debug_event(BlockChild *c, BlkdebugEvent event);

/*
 * added by blkdebug: qemu-io prints "blkdebug: Suspended request 'TAG'" and
 * "blkdebug: Resuming request 'TAG'" when breakpoints fire or are resumed.
 * The library never prints, so a tool installs a sink for these lines (one
 * line per call, without the newline).  Without a sink they are dropped, as
 * QEMU does under qtest.
 */
typedef void BlkdebugNoticeFunc(const char *line);
void blkdbg_set_notice_func(BlkdebugNoticeFunc *fn);
void blkdbg_notice(const char *fmt, ...) G_GNUC_PRINTF(1, 2);

#endif
