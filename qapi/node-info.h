/*
 * The library's side of the node commands.  Apart from the handlers
 * because some library types share names with QAPI's (SnapshotInfo in
 * strata/block-ops.h, JobType and JobStatus in strata/job.h): this file
 * sees only the library's, the handlers only QAPI's.
 */
#ifndef QAPI_NODE_INFO_H
#define QAPI_NODE_INFO_H

#include <glib.h>
#include <jansson.h>
#include <stdbool.h>
#include "strata/block.h"

/*
 * bs described as QEMU 7.2's bdrv_block_device_info() does for a node
 * without a device: flat leaves the backing images out of "image".
 * NULL with *errp set when the image cannot be read.
 */
json_t *node_info_device_json(BlockNode *bs, bool flat, GError **errp);

/*
 * A QEMU block job (not blockdev-create or amend, which QEMU runs without
 * edges) holds the edge c: its id, else NULL.  *job (may be NULL) is the
 * job, for node_info_job_edges.
 */
const char *node_info_block_job(BlockChild *c, void **job);
/* The job's edges (BlockChild *), in the order they were added. */
GSList *node_info_job_edges(void *job);
/* QEMU's "block device is in use by block job: TYPE" type name. */
const char *node_info_job_type(void *job);

#endif
