/*
 * QEMU 7.2's op blockers (strata/op-blockers.h).  QEMU keeps a list of
 * blockers per op on each node; here the blockers of edges are read from
 * the node's parents (a block job's edge, a backing edge), and only the
 * ones a job adds beside its edges are kept in a list.
 */
#include "strata/op-blockers.h"
#include "strata/block-events.h"
#include "strata/block-ops.h"
#include "strata/blockjob.h"
#include "strata/error.h"

typedef struct Blocker {
    BlockNode *bs;
    const void *owner;
    char *reason;
} Blocker;

/* Oldest first. */
static GList *blockers;

void node_op_block_all(BlockNode *bs, const void *owner, const char *reason)
{
    Blocker *b = g_new(Blocker, 1);
    b->bs = bs;
    b->owner = owner;
    b->reason = g_strdup(reason);
    blockers = g_list_append(blockers, b);
}

void node_op_unblock_all(BlockNode *bs, const void *owner)
{
    for (GList *l = blockers; l; l = l->next) {
        Blocker *b = l->data;
        if (b->bs == bs && b->owner == owner) {
            blockers = g_list_delete_link(blockers, l);
            g_free(b->reason);
            g_free(b);
            return;
        }
    }
}

/* The ops a backing edge leaves open on its child (QEMU's
 * bdrv_backing_attach): commit into it, stream from it, back it up. */
static bool backing_allows(BlockOpType op)
{
    return op == BLOCK_OP_COMMIT_TARGET || op == BLOCK_OP_STREAM ||
           op == BLOCK_OP_BACKUP_SOURCE || op == BLOCK_OP_BACKUP_TARGET;
}

bool node_op_check(BlockNode *bs, BlockOpType op, GError **errp)
{
    char *reason = NULL;

    /* Parents are listed oldest first: the last reason is the newest. */
    for (BlockChild *c = node_next_parent(bs, NULL); c;
         c = node_next_parent(bs, c)) {
        if (child_parent_kind(c) == PARENT_JOB &&
            job_is_block_job(child_parent(c))) {
            Job *job = child_parent(c);
            g_free(reason);
            reason = g_strdup_printf("block device is in use by block job: "
                                     "%s", job_type_name(job_type(job)));
        } else if (child_parent_kind(c) == PARENT_NODE &&
                   (child_role(c) & CHILD_ROLE_COW) && !backing_allows(op)) {
            BlockNode *parent = child_parent(c);
            const char *name = node_device_name(parent);
            g_free(reason);
            reason = g_strdup_printf("node is used as backing hd of '%s'",
                                     *name ? name : node_get_name(parent));
        }
    }
    for (GList *l = blockers; l; l = l->next) {
        Blocker *b = l->data;
        if (b->bs == bs) {
            g_free(reason);
            reason = g_strdup(b->reason);
        }
    }
    if (reason) {
        error_setg(errp, "Node '%s' is busy: %s", node_get_name(bs), reason);
        g_free(reason);
        return false;
    }
    return true;
}
