/* The block job commands' shared argument handling (block-job-args.h). */
#include "strata/block-events.h"
#include "strata/block-ops.h"
#include "strata/error.h"
#include "block-job-args.h"
#include "transaction.h"

BlockNode *bja_lookup_node(const char *name, GError **errp)
{
    return txn_lookup_node(name, name, errp);
}

BlockNode *bja_root_node(const char *name, GError **errp)
{
    return txn_root_node(name, errp);
}

BlockNode *bja_lookup_device(const char *device, GError **errp)
{
    BlockNode *bs = txn_lookup_node(device, device, NULL);
    if (!bs) {
        error_set_class(errp, STRATA_ERROR_DEVICE_NOT_FOUND,
                        "Device '%s' not found", device);
    }
    return bs;
}

/* The ops a backing edge leaves open on its child (QEMU's
 * bdrv_backing_attach): commit into it, stream from it, back it up. */
static bool backing_allows(BjaOp op)
{
    return op == BJA_OP_COMMIT_TARGET || op == BJA_OP_STREAM ||
           op == BJA_OP_BACKUP_SOURCE || op == BJA_OP_BACKUP_TARGET;
}

bool bja_check_op(BlockNode *bs, BjaOp op, GError **errp)
{
    /* Parents are listed oldest first: the last reason is the newest. */
    char *reason = NULL;
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
    if (reason) {
        error_setg(errp, "Node '%s' is busy: %s", node_get_name(bs), reason);
        g_free(reason);
        return false;
    }
    return true;
}

int bja_job_flags(bool has_auto_finalize, bool auto_finalize,
                  bool has_auto_dismiss, bool auto_dismiss)
{
    int flags = JOB_DEFAULT;
    if (has_auto_finalize && !auto_finalize) {
        flags |= JOB_MANUAL_FINALIZE;
    }
    if (has_auto_dismiss && !auto_dismiss) {
        flags |= JOB_MANUAL_DISMISS;
    }
    return flags;
}

BlockdevOnError bja_on_error(bool has_on_error, BlockdevOnError on_error)
{
    return has_on_error ? on_error : BLOCKDEV_ON_ERROR_REPORT;
}

int64_t bja_speed(bool has_speed, int64_t speed)
{
    return has_speed ? speed : 0;
}
