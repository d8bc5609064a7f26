/* Internal snapshots for the QMP handlers (see snapshot-node.h). */
#include <errno.h>
#include <string.h>

#include "strata/block-ops.h"
#include "strata/error.h"
#include "snapshot-node.h"

static void to_node_snap(const SnapshotInfo *si, NodeSnap *sn)
{
    g_strlcpy(sn->id, si->id_str, sizeof(sn->id));
    g_strlcpy(sn->name, si->name, sizeof(sn->name));
    sn->vm_state_size = si->vm_state_size;
    sn->date_sec = si->date_sec;
    sn->date_nsec = si->date_nsec;
    sn->vm_clock_nsec = si->vm_clock_nsec;
    sn->icount = si->icount;
}

bool snap_supported(BlockNode *bs)
{
    SnapshotInfo *list = NULL;
    int n = node_snapshot_list(bs, &list);

    g_free(list);
    return n != -ENOTSUP;
}

int snap_find(BlockNode *bs, const char *id, const char *name, NodeSnap *out,
              GError **errp)
{
    SnapshotInfo *list = NULL;
    int n = node_snapshot_list(bs, &list);
    int found = 0;

    if (n < 0) {
        error_setg(errp, "Failed to get a snapshot list: %s", g_strerror(-n));
        return n;
    }
    for (int i = 0; i < n && !found; i++) {
        if ((!id || !strcmp(list[i].id_str, id)) &&
            (!name || !strcmp(list[i].name, name))) {
            to_node_snap(&list[i], out);
            found = 1;
        }
    }
    g_free(list);
    return found;
}

int snap_take(BlockNode *bs, NodeSnap *sn, GError **errp)
{
    SnapshotInfo si = { .icount = UINT64_MAX };
    /* With no guest, QEMU's virtual clock in the daemon is wall time. */
    int64_t now = g_get_real_time();
    int ret;

    g_strlcpy(si.name, sn->name, sizeof(si.name));
    si.date_sec = (uint32_t)(now / G_USEC_PER_SEC);
    si.date_nsec = (uint32_t)(now % G_USEC_PER_SEC) * 1000;
    si.vm_clock_nsec = (uint64_t)now * 1000;
    ret = node_snapshot_create(bs, &si, errp);
    if (ret < 0) {
        return ret;
    }
    /* The driver chose the ID; the new snapshot is the one named so. */
    if (snap_find(bs, NULL, sn->name, sn, NULL) != 1) {
        to_node_snap(&si, sn);
    }
    return 0;
}

int snap_delete(BlockNode *bs, const char *id, const char *name,
                GError **errp)
{
    return node_snapshot_delete(bs, id, name, errp);
}
