/*
 * What the node commands (cmd-block.c, cmd-query.c) share: a node
 * described as QEMU describes it, and the block jobs on its edges.
 */
#ifndef QAPI_NODE_INFO_H
#define QAPI_NODE_INFO_H

#include <glib.h>
#include <jansson.h>
#include <stdbool.h>
#include "qapi-types.h"
#include "strata/block.h"
#include "strata/job.h"

/*
 * bs described as QEMU 7.2's bdrv_block_device_info() does for a node
 * without a device: flat leaves the backing images out of "image".
 * NULL with *errp set when the image cannot be read.
 */
BlockDeviceInfo *node_info_device(BlockNode *bs, bool flat, GError **errp);

/*
 * A QEMU block job (not blockdev-create or amend, which QEMU runs without
 * edges) holds the edge c: its id, else NULL.  *job (may be NULL) is the
 * job.
 */
const char *node_info_block_job(BlockChild *c, Job **job);

#endif
