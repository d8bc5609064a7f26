/*
 * What every block job command (blockdev-mirror, drive-mirror,
 * block-commit, block-stream, blockdev-backup, drive-backup) does with
 * its arguments before it creates the job, with QEMU 7.2's errors:
 * finding the nodes, the defaults of the optional arguments and the job
 * flags (QEMU's op blockers are strata/op-blockers.h's).  The job id needs nothing here: a NULL
 * job id goes to block_job_create(), which applies QEMU's rule.
 */
#ifndef QAPI_BLOCK_JOB_ARGS_H
#define QAPI_BLOCK_JOB_ARGS_H

#include <stdbool.h>
#include <stdint.h>
#include "strata/block.h"
#include "strata/blockjob.h"

/*
 * QEMU's bdrv_lookup_bs(name, name) (blockdev-mirror's device and target,
 * block-stream, blockdev-backup): a node by name, the daemon having no
 * devices; GenericError "Cannot find device='x' nor node-name='x'".
 */
BlockNode *bja_lookup_node(const char *name, GError **errp);

/*
 * QEMU's qmp_get_root_bs() (drive-mirror, drive-backup): as above, then
 * "Need a root block node" for a node another node or a job uses, and
 * "Device has no medium".
 */
BlockNode *bja_root_node(const char *name, GError **errp);

/*
 * block-commit's lookup of its device: DeviceNotFound "Device 'x' not
 * found" (QEMU 7.2 looks it up quietly and says only that).
 */
BlockNode *bja_lookup_device(const char *device, GError **errp);

/* JOB_MANUAL_FINALIZE / JOB_MANUAL_DISMISS for auto-finalize and
 * auto-dismiss set to false (both default to true). */
int bja_job_flags(bool has_auto_finalize, bool auto_finalize,
                  bool has_auto_dismiss, bool auto_dismiss);

/*
 * An on-*-error argument: report when absent.  QEMU 7.2 accepts every
 * value for every job ('auto' is 'enospc' for a job), so there is no
 * check to make.
 */
BlockdevOnError bja_on_error(bool has_on_error, BlockdevOnError on_error);

/*
 * speed: 0 (no limit) when absent.  A negative speed is refused by
 * block_job_create() ("Parameter 'speed' expects a non-negative
 * value"), after the job was created, so that the client sees its
 * created and null statuses as with QEMU; commands must not check it
 * earlier.
 */
int64_t bja_speed(bool has_speed, int64_t speed);

#endif
