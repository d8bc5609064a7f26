/*
 * Node facts that only a monitor asks about, and the events nodes raise
 * for it: the write threshold (QEMU's block/write-threshold.c), the
 * highest offset written, which parents hold a node, and image corruption
 * found by a format driver.
 *
 * The block layer cannot call up into the QMP layer, so whoever turns
 * these into QMP events registers a listener; without one they are
 * dropped.
 */
#ifndef STRATA_BLOCK_EVENTS_H
#define STRATA_BLOCK_EVENTS_H

#include <stdbool.h>
#include <stdint.h>
#include "strata/block.h"

typedef struct NodeEventListener {
    /* A write went past bs's threshold (which is then reset to 0). */
    void (*write_threshold)(BlockNode *bs, uint64_t amount_exceeded,
                            uint64_t threshold);
    /*
     * A format driver found bs's metadata corrupt; offset and size are -1
     * when unknown; fatal: the image is now marked corrupt.
     */
    void (*image_corrupted)(BlockNode *bs, const char *msg, int64_t offset,
                            int64_t size, bool fatal);
    /*
     * A request through a backend that reports errors failed on bs with
     * the positive errno error; device: the backend's name (NULL: none).
     * Called in the thread that runs bs.
     */
    void (*io_error)(BlockNode *bs, const char *device, bool is_read,
                     int error);
} NodeEventListener;

/* Replace the listener (NULL: none).  The struct must outlive its use. */
void node_events_set_listener(const NodeEventListener *l);

/* 0 disables the threshold. */
void node_set_write_threshold(BlockNode *bs, uint64_t threshold);
uint64_t node_get_write_threshold(const BlockNode *bs);
/* The end of the furthest write or discard bs has seen. */
uint64_t node_wr_highest_offset(const BlockNode *bs);

/* detect-zeroes: 0 off, 1 on, 2 unmap (QAPI's order). */
int node_get_detect_zeroes(const BlockNode *bs);

/*
 * Called by block/io.c for every write, zero write and discard: either
 * may cross the threshold, only writes move the highest offset (QEMU's
 * rules).
 */
void node_note_write(BlockNode *bs, int64_t offset, int64_t bytes,
                     bool discard);
/*
 * Called by block/io.c with each discard a driver carried out (ret: its
 * result); the file drivers' statistics in query-blockstats.
 */
void node_note_discard(BlockNode *bs, int64_t bytes, int ret);
void node_get_discard_stats(const BlockNode *bs, uint64_t *nb_ok,
                            uint64_t *nb_failed, uint64_t *bytes_ok);

/* Called by format drivers when they find corruption. */
void node_report_corruption(BlockNode *bs, const char *msg, int64_t offset,
                            int64_t size, bool fatal);

/* Called by backends that report errors (blk_set_report_io_errors()). */
void node_report_io_error(BlockNode *bs, const char *device, bool is_read,
                          int error);

/* Who holds an edge from above: a node, a backend or a job. */
typedef enum {
    PARENT_NODE,
    PARENT_BACKEND,
    PARENT_JOB,
    PARENT_OTHER,
} ParentKind;
ParentKind child_parent_kind(const BlockChild *c);
/* The parent object (BlockNode *, BlockBackend *, Job *): its identity. */
void *child_parent(const BlockChild *c);

#endif
