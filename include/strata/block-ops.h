/*
 * Operations on one node that the tools and the daemon share: what a
 * driver can do, what a node says about itself, internal snapshots,
 * check, amend, make-empty, backing-file change, size measurement, and
 * synchronous forms of block status.
 *
 * Callers never touch a BlockDriver or a BlockNode's fields: these
 * functions check that the driver can do the operation (QEMU 7.2's
 * message when it cannot), drain where QEMU's callers do (the snapshot
 * operations; not check, amend or make-empty, which jobs call on nodes
 * they are parents of), and run the driver in a coroutine.  Every function may be called
 * from coroutine context or from outside one: outside, it runs the work in
 * a new coroutine and drives the loop until it is done.  Nothing here
 * prints or exits; errors come back as -errno and, where a person reads
 * them, in *errp (which may be NULL).
 */
#ifndef STRATA_BLOCK_OPS_H
#define STRATA_BLOCK_OPS_H

#include "strata/block.h"

/* Request limits a node advertises (all in bytes; 0 = no limit). */
typedef struct BlockLimits {
    uint32_t request_alignment; /* offsets/lengths handed to the driver */
    uint32_t min_mem_alignment; /* buffers must be aligned to this */
    uint32_t opt_mem_alignment;
    uint64_t max_transfer;
    uint64_t opt_transfer;
    uint32_t pwrite_zeroes_alignment;
    uint64_t max_pwrite_zeroes;
    uint32_t pdiscard_alignment;
    uint64_t max_pdiscard;
} BlockLimits;

/* What a driver says about the image (QEMU's BlockDriverInfo). */
typedef struct BlockDriverInfo {
    int64_t cluster_size;
    int64_t vm_state_offset;
    bool is_dirty;
} BlockDriverInfo;

/* What a consistency check found (QEMU's BdrvCheckResult). */
typedef struct BlockCheckResult {
    int64_t corruptions, leaks, check_errors;
    int64_t corruptions_fixed, leaks_fixed;
    int64_t image_end_offset;
    int64_t total_clusters, allocated_clusters;
    int64_t fragmented_clusters, compressed_clusters;
} BlockCheckResult;

/* What a check may repair. */
enum { CHECK_FIX_LEAKS = 1, CHECK_FIX_ERRORS = 2 };

/* One internal snapshot, as qemu-img snapshot -l shows it. */
typedef struct NodeSnapshot {
    char id_str[128];
    char name[256];
    uint64_t vm_state_size;
    uint32_t date_sec, date_nsec;
    uint64_t vm_clock_nsec;
    uint64_t icount;               /* UINT64_MAX: not recorded */
} NodeSnapshot;

/* The size a new image would take (QEMU's BlockMeasureInfo). */
typedef struct BlockMeasureInfo {
    uint64_t required;
    uint64_t fully_allocated;
    bool has_bitmaps;              /* bitmaps is meaningful */
    uint64_t bitmaps;
} BlockMeasureInfo;

/* ---- Drivers ---- */

typedef enum {
    DRIVER_CAN_CREATE,         /* image creation */
    DRIVER_CAN_AMEND,          /* option amendment */
    DRIVER_CAN_COMPRESS,       /* compressed writes */
    DRIVER_CAN_MEASURE,        /* size measurement */
    DRIVER_IS_FORMAT,          /* an image format over a storage node */
    DRIVER_IS_FILTER,
    DRIVER_HAS_BACKING,        /* images may have backing files */
} DriverFeature;

bool driver_has(const BlockDriver *drv, DriverFeature f);
const char *driver_format_name(const BlockDriver *drv);
/* "file", "nbd", ...; NULL for formats. */
const char *driver_protocol_name(const BlockDriver *drv);
/* Creation option names, NULL-terminated; NULL if it has none. */
const char *const *driver_create_opts(const BlockDriver *drv);

/* ---- What a node says about itself (block/info.c) ---- */

/* The children every format and filter may have; NULL when absent. */
BlockChild *node_file_child(BlockNode *bs);
BlockChild *node_backing_child(BlockNode *bs);
BlockNode *node_file(BlockNode *bs);
BlockNode *node_backing(BlockNode *bs);
/* The CHILD_ROLE_* flags of an edge. */
unsigned child_role(const BlockChild *c);
/* The backing file and format the image header names ("" for none). */
const char *node_backing_file(const BlockNode *bs);
const char *node_backing_format(const BlockNode *bs);
/* Guest data is encrypted (info's "encrypted"). */
bool node_is_encrypted(const BlockNode *bs);
/* The name of the device (backend) using bs, "" if none has a name. */
const char *node_device_name(BlockNode *bs);
void node_get_limits(const BlockNode *bs, BlockLimits *bl);
/* A medium is present in bs and in every node below it (bdrv_is_inserted). */
bool node_is_inserted(BlockNode *bs);
/*
 * QEMU's bdrv_get_info(): 0 with *bdi filled, or -ENOTSUP when neither
 * the node nor (for filters) the nodes it filters can answer.
 */
int node_get_info(BlockNode *bs, BlockDriverInfo *bdi);
/*
 * The driver's specific information (qemu-img info's "format-specific"
 * data, without the union wrapper), NULL when it has none (*errp unset)
 * or on error.
 */
json_t *node_get_specific_info(BlockNode *bs, GError **errp);

/*
 * QEMU's ImageInfo for one image without its backing image
 * (bdrv_query_image_info()): what strata-img info prints and what QMP
 * returns as a node's "image".  Optional members are absent as stated.
 */
typedef struct NodeImageInfo {
    char *filename;
    char *format;
    bool has_dirty_flag;           /* the driver answers get_info */
    bool dirty_flag;
    bool has_actual_size;
    int64_t actual_size;
    int64_t virtual_size;
    int64_t cluster_size;          /* 0: not known */
    bool encrypted;
    char *backing_filename;        /* NULL: no backing file */
    char *full_backing_filename;   /* NULL: cannot be determined */
    char *backing_filename_format; /* NULL: not recorded */
    NodeSnapshot *snapshots;       /* nb_snapshots of them */
    int nb_snapshots;
    json_t *format_specific;       /* the driver's "data", NULL: none */
} NodeImageInfo;

/* NULL with *errp set when the image cannot be read. */
NodeImageInfo *node_query_image_info(BlockNode *bs, GError **errp);
void node_image_info_free(NodeImageInfo *info);

/* ---- Internal snapshots (block/snapshot.c) ---- */

/*
 * Nodes whose driver has no snapshots pass the request to their primary
 * child when that is the only child holding data (raw over qcow2, a
 * filter): the node that does the work, or NULL.
 */
BlockNode *node_snapshot_fallback(BlockNode *bs);
/* The number of snapshots with *list (g_free) filled, or -ENOTSUP. */
int node_snapshot_list(BlockNode *bs, NodeSnapshot **list);
/*
 * The first snapshot matching id and name (NULL: any), as QEMU's
 * bdrv_snapshot_find_by_id_and_name: 1 with *out filled, 0 if none,
 * -errno when the list cannot be read (-ENOTSUP: no internal snapshots).
 */
int node_snapshot_find(BlockNode *bs, const char *id, const char *name,
                       NodeSnapshot *out);
/* Whether bs (or the node it passes snapshots to) has internal snapshots. */
bool node_snapshot_supported(BlockNode *bs);
/*
 * Take a snapshot named by sn (an empty id_str lets the driver choose
 * one; date and VM clock as given).  -errno with *errp set.
 */
int node_snapshot_create(BlockNode *bs, NodeSnapshot *sn, GError **errp);
/* Revert to a snapshot found by ID, else by name. */
int node_snapshot_goto(BlockNode *bs, const char *id_or_name, GError **errp);
/* Delete the first snapshot matching both id and name (NULL: any). */
int node_snapshot_delete(BlockNode *bs, const char *id, const char *name,
                         GError **errp);
/*
 * Make a read-only node show a snapshot's data (qemu-img convert -l),
 * the first one matching id and name (NULL: any); not undone.
 */
int node_snapshot_load_tmp(BlockNode *bs, const char *id, const char *name,
                           GError **errp);

/* ---- Image maintenance (block/maint.c) ---- */

/*
 * Consistency check; fix is CHECK_FIX_*.  -ENOTSUP when the format has
 * no check.  Each problem (or repair) is reported as it is found, one
 * line in QEMU's words without the newline, to report(opaque, line);
 * qemu-img prints them to stderr.  With report NULL they go to
 * warn_print(), as do those of the repair of a dirty image on open.
 */
typedef void NodeCheckReport(void *opaque, const char *line);
int node_check(BlockNode *bs, BlockCheckResult *res, int fix,
               NodeCheckReport *report, void *opaque);
/*
 * Change options of an existing image (qemu-img amend, x-blockdev-amend):
 * options by their creation names (bools as booleans, numbers as integers
 * or, past INT64_MAX, as text).  status (may be NULL) hears progress.
 */
int node_amend(BlockNode *bs, json_t *options, bool force,
               void (*status)(void *opaque, int64_t done, int64_t total),
               void *opaque, GError **errp);
/*
 * The same from a coroutine (a job), without draining: for changes that
 * the node's other requests cannot race with, as QMP's x-blockdev-amend,
 * which on qcow2 changes only LUKS key slots, as QEMU's.
 */
int coroutine_fn node_co_amend(BlockNode *bs, json_t *options, bool force,
                               GError **errp);
/* Forget all data so that the image reads through to its backing file. */
int node_make_empty(BlockNode *bs, GError **errp);
/*
 * Make the image header name another backing file and format (file NULL:
 * none), as QEMU's bdrv_change_backing_file.  -EINVAL for a format
 * without a file, or (require_format) a file without a format;
 * -ENOTSUP when the format has no backing files.
 */
int node_change_backing_file(BlockNode *bs, const char *file,
                             const char *fmt, bool require_format,
                             GError **errp);
/*
 * How large a new image of format fmt would be (QEMU's bdrv_measure):
 * empty with options' "size", or holding a copy of in_bs (may be NULL).
 * options: the creation options as for node_amend.  The output driver
 * answers: "Block driver 'x' does not support size measurement" if not.
 */
bool node_measure(const char *fmt, json_t *options, BlockNode *in_bs,
                  BlockMeasureInfo *info, GError **errp);

/* ---- Synchronous block status (see node_co_block_status*) ---- */

int node_block_status(BlockNode *bs, bool want_zero, int64_t offset,
                      int64_t bytes, int64_t *pnum, int64_t *map,
                      BlockNode **file);
int node_block_status_above(BlockNode *bs, BlockNode *base,
                            bool include_base, bool want_zero,
                            int64_t offset, int64_t bytes, int64_t *pnum,
                            int64_t *map, BlockNode **file, int *depth);
int node_is_allocated(BlockNode *bs, int64_t offset, int64_t bytes,
                      int64_t *pnum);
int node_is_allocated_above(BlockNode *top, BlockNode *base,
                            bool include_base, int64_t offset, int64_t bytes,
                            int64_t *pnum);

/* ---- blkdebug breakpoints (qemu-io), on the first node that has them ---- */

int node_debug_breakpoint(BlockNode *bs, const char *event, const char *tag);
int node_debug_remove_breakpoint(BlockNode *bs, const char *tag);
int node_debug_resume(BlockNode *bs, const char *tag);
/* 1 when a request tagged tag is stopped, 0 if not, -ENOTSUP. */
int node_debug_is_suspended(BlockNode *bs, const char *tag);

#endif
