/*
 * QEMU 7.2's op blockers: which operations a node refuses while a block
 * job uses it, while it is the backing node of another, or while a job
 * holds it for a later step (the node a mirror will replace, from
 * job-complete on).  Every command QEMU guards with bdrv_op_is_blocked()
 * asks node_op_check(), so that they all give the same refusal.
 */
#ifndef STRATA_OP_BLOCKERS_H
#define STRATA_OP_BLOCKERS_H

#include <stdbool.h>
#include "strata/block.h"

/* The operations guarded (QEMU's BlockOpType, those strata has). */
typedef enum BlockOpType {
    BLOCK_OP_BACKUP_SOURCE,
    BLOCK_OP_BACKUP_TARGET,
    BLOCK_OP_COMMIT_SOURCE,
    BLOCK_OP_COMMIT_TARGET,
    BLOCK_OP_DRIVE_DEL,          /* blockdev-del */
    BLOCK_OP_EXTERNAL_SNAPSHOT,  /* blockdev-snapshot, blockdev-snapshot-sync */
    BLOCK_OP_MIRROR_REPLACE,     /* the node a mirror's `replaces` names */
    BLOCK_OP_MIRROR_SOURCE,
    BLOCK_OP_MIRROR_TARGET,
    BLOCK_OP_RESIZE,             /* block_resize */
    BLOCK_OP_STREAM,
} BlockOpType;

/*
 * QEMU 7.2's bdrv_op_is_blocked(bs, op): false with "Node 'x' is busy:
 * REASON" when something blocks op on bs.  A block job using bs blocks
 * every op ("block device is in use by block job: mirror"); being the
 * backing node of y blocks all but commit-target, stream and backup
 * source/target ("node is used as backing hd of 'y'"); a node blocked
 * with node_op_block_all() refuses every op with that reason.  The
 * newest reason is named, as QEMU lists blockers newest first: a
 * node_op_block_all() reason is taken as newer than every edge (the
 * edges a blocked node could still get, a blockdev-add naming it as a
 * backing node, are left out of the order).
 */
bool node_op_check(BlockNode *bs, BlockOpType op, GError **errp);

/*
 * QEMU's bdrv_op_block_all(bs, reason) for an owner: every op on bs is
 * refused with "Node 'x' is busy: REASON" until node_op_unblock_all(bs,
 * owner).  The caller keeps bs alive meanwhile.
 */
void node_op_block_all(BlockNode *bs, const void *owner, const char *reason);
void node_op_unblock_all(BlockNode *bs, const void *owner);

#endif
