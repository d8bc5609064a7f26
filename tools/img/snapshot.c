/*
 * strata-img snapshot [--object objectdef] [--image-opts] [-U] [-q]
 *                     [-l | -a snapshot | -c snapshot | -d snapshot] filename
 *
 * qemu-img snapshot: list, apply, create or delete internal snapshots,
 * with its output ("Snapshot list:" table) and messages.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "strata/block-driver.h"
#include "strata/units.h"
#include "img.h"

enum { ACT_LIST = 1, ACT_APPLY, ACT_CREATE, ACT_DELETE };

void img_snapshot_dump_header(void)
{
    printf("%-10s%-17s%8s%20s%13s%11s", "ID", "TAG", "VM SIZE", "DATE",
           "VM CLOCK", "ICOUNT");
}

void img_snapshot_dump(const SnapshotInfo *sn)
{
    char date[128], clock[128], icount[32] = "";
    time_t t = sn->date_sec;
    struct tm tm;
    uint64_t secs = sn->vm_clock_nsec / 1000000000ull;
    char *size = size_to_str(sn->vm_state_size);

    localtime_r(&t, &tm);
    strftime(date, sizeof(date), "%Y-%m-%d %H:%M:%S", &tm);
    snprintf(clock, sizeof(clock), "%02d:%02d:%02d.%03d", (int)(secs / 3600),
             (int)((secs / 60) % 60), (int)(secs % 60),
             (int)((sn->vm_clock_nsec / 1000000) % 1000));
    if (sn->icount != UINT64_MAX) {
        snprintf(icount, sizeof(icount), "%" PRId64, (int64_t)sn->icount);
    }
    printf("%-9s %-16s %8s%20s%13s%11s", sn->id_str, sn->name, size, date,
           clock, icount);
    g_free(size);
}

typedef struct SnapCo {
    BlockNode *bs;
    int action;
    const char *name;
    SnapshotInfo sn;
    GError *err;
    int ret;
} SnapCo;

/*
 * QEMU's snapshot fallback: a node whose driver cannot do snapshots hands
 * the request to its primary child (raw or blkdebug over a qcow2 image),
 * unless another child also holds data of the image, which would then be
 * left out of the snapshot.  NULL: nowhere to go.
 */
BlockNode *img_snapshot_fallback(BlockNode *bs)
{
    BlockChild *primary = NULL;
    for (GList *l = bs->children; l; l = l->next) {
        BlockChild *c = l->data;
        if (c->role & CHILD_ROLE_PRIMARY) {
            primary = c;
        }
    }
    if (!primary) {
        return NULL;
    }
    for (GList *l = bs->children; l; l = l->next) {
        BlockChild *c = l->data;
        if (c != primary && (c->role & (CHILD_ROLE_DATA | CHILD_ROLE_METADATA |
                                        CHILD_ROLE_FILTERED))) {
            return NULL;
        }
    }
    return primary->bs;
}

static bool can_do(const BlockDriver *drv, int action)
{
    switch (action) {
    case ACT_LIST:
        return drv->snapshot_list;
    case ACT_CREATE:
        return drv->snapshot_create;
    case ACT_APPLY:
        return drv->snapshot_goto;
    default:
        return drv->snapshot_delete;
    }
}

/* The node that does the work for action, or NULL if none can. */
static BlockNode *snapshot_node(BlockNode *bs, int action)
{
    while (bs && !can_do(bs->drv, action)) {
        bs = img_snapshot_fallback(bs);
    }
    return bs;
}

int img_snapshot_list(BlockNode *bs, SnapshotInfo **list)
{
    *list = NULL;
    bs = snapshot_node(bs, ACT_LIST);
    return bs ? bs->drv->snapshot_list(bs, list) : -ENOTSUP;
}

static void coroutine_fn snap_co(void *opaque)
{
    SnapCo *c = opaque;
    BlockNode *bs = snapshot_node(c->bs, c->action);

    if (!bs) {
        /* qemu-img's words for each; create reports the errno only */
        c->ret = -ENOTSUP;
        if (c->action == ACT_APPLY) {
            error_setg(&c->err, "Block driver does not support snapshots");
        } else if (c->action == ACT_DELETE) {
            error_setg(&c->err, "Block format '%s' used by device '' does "
                       "not support internal snapshots",
                       c->bs->drv->format_name);
        }
        return;
    }
    switch (c->action) {
    case ACT_CREATE:
        c->ret = bs->drv->snapshot_create(bs, &c->sn, &c->err);
        break;
    case ACT_APPLY:
        c->ret = bs->drv->snapshot_goto(bs, c->name, &c->err);
        break;
    case ACT_DELETE:
        c->ret = bs->drv->snapshot_delete(bs, c->sn.id_str, c->sn.name,
                                          &c->err);
        break;
    }
}

int img_snapshot(int argc, char **argv)
{
    static const struct option long_options[] = {
        { "help", no_argument, NULL, 'h' },
        { "object", required_argument, NULL, IMG_OPTION_OBJECT },
        { "image-opts", no_argument, NULL, IMG_OPTION_IMAGE_OPTS },
        { "force-share", no_argument, NULL, 'U' },
        { NULL, 0, NULL, 0 },
    };
    ImgOpenSpec spec = { 0 };
    const char *name = NULL;
    bool quiet = false;
    int c, action = 0, ret = 0;

    while ((c = img_getopt(argc, argv, ":la:c:d:hqU", long_options)) != -1) {
        int want = 0;
        switch (c) {
        case 'l': want = ACT_LIST; break;
        case 'a': want = ACT_APPLY; break;
        case 'c': want = ACT_CREATE; break;
        case 'd': want = ACT_DELETE; break;
        case 'q': quiet = true; break;
        default:
            img_open_option(c, optarg, &spec);
        }
        if (want) {
            if (action) {
                img_error_exit("Cannot mix '-l', '-a', '-c', '-d'");
            }
            action = want;
            name = want == ACT_LIST ? NULL : optarg;
        }
    }
    if (optind != argc - 1) {
        img_error_exit("Expecting one image file name");
    }
    (void)quiet;
    if (action != ACT_LIST) {
        spec.flags |= NODE_O_RDWR;
    }
    /*
     * As qemu-img, the backing chain is opened too (and locked): a missing
     * or busy backing file fails the command.
     */
    BlockBackend *blk = img_open(argv[optind], &spec);
    if (!blk) {
        return 1;
    }
    BlockNode *bs = blk_node(blk);
    SnapCo co = { .bs = bs, .action = action, .name = name };

    switch (action) {
    case ACT_LIST: {
        SnapshotInfo *list = NULL;
        int n = img_snapshot_list(bs, &list);
        if (n > 0) {
            printf("Snapshot list:\n");
            img_snapshot_dump_header();
            printf("\n");
            for (int i = 0; i < n; i++) {
                img_snapshot_dump(&list[i]);
                printf("\n");
            }
        }
        g_free(list);
        break;
    }
    case ACT_CREATE: {
        gint64 now = g_get_real_time();
        g_strlcpy(co.sn.name, name, sizeof(co.sn.name));
        co.sn.date_sec = (uint32_t)(now / G_USEC_PER_SEC);
        co.sn.date_nsec = (uint32_t)((now % G_USEC_PER_SEC) * 1000);
        co.sn.icount = 0;
        co_run_sync(snap_co, &co);
        if (co.ret < 0) {
            /* QEMU's snapshot creation reports an errno and nothing more */
            tool_error("Could not create snapshot '%s': %d (%s)", name,
                       co.ret, g_strerror(-co.ret));
            ret = 1;
        }
        break;
    }
    case ACT_APPLY:
        co_run_sync(snap_co, &co);
        if (co.ret < 0) {
            tool_error("Could not apply snapshot '%s': %s", name,
                       co.err ? co.err->message : g_strerror(-co.ret));
            ret = 1;
        }
        break;
    case ACT_DELETE: {
        /* As qemu-img: the snapshot is looked up by name only. */
        SnapshotInfo *list = NULL;
        int n = img_snapshot_list(bs, &list);
        int found = -1;
        for (int i = 0; i < n && found < 0; i++) {
            if (!strcmp(list[i].name, name)) {
                found = i;
            }
        }
        if (found < 0) {
            tool_error("Could not delete snapshot '%s': snapshot not found",
                       name);
            ret = 1;
        } else {
            co.sn = list[found];
            co_run_sync(snap_co, &co);
            if (co.ret < 0) {
                tool_error("Could not delete snapshot '%s': %s", name,
                           co.err ? co.err->message : g_strerror(-co.ret));
                ret = 1;
            }
        }
        g_free(list);
        break;
    }
    }
    if (co.err) {
        g_error_free(co.err);
    }
    blk_unref(blk);
    return ret;
}
