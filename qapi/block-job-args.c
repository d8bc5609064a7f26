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
