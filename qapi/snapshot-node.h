/*
 * Internal snapshots of a node for the QMP handlers (qapi/cmd-snapshot.c),
 * over strata/block-ops.h's node_snapshot_* API.  A file of its own because
 * the library's SnapshotInfo and the schema's SnapshotInfo (the generated
 * type QMP replies with) share a name and cannot meet in one unit.
 */
#ifndef QAPI_SNAPSHOT_NODE_H
#define QAPI_SNAPSHOT_NODE_H

#include <stdint.h>
#include "strata/block.h"

typedef struct NodeSnap {
    char id[128];
    char name[256];
    uint64_t vm_state_size;
    uint32_t date_sec, date_nsec;
    uint64_t vm_clock_nsec;
    uint64_t icount;               /* UINT64_MAX: not recorded */
} NodeSnap;

/* Whether bs (or the node it passes snapshots to) has internal snapshots. */
bool snap_supported(BlockNode *bs);
/*
 * QEMU's bdrv_snapshot_find_by_id_and_name(): the first snapshot matching
 * id and name (NULL: any; not both NULL).  1 with *out filled, 0 if none,
 * -errno with "Failed to get a snapshot list: ..." in *errp.
 */
int snap_find(BlockNode *bs, const char *id, const char *name, NodeSnap *out,
              GError **errp);
/* Take a snapshot named sn->name, dated now; sn->id is the ID it got. */
int snap_take(BlockNode *bs, NodeSnap *sn, GError **errp);
int snap_delete(BlockNode *bs, const char *id, const char *name,
                GError **errp);

#endif
