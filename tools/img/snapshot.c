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

#include "strata/block-ops.h"
#include "strata/error.h"
#include "strata/opts.h"
#include "strata/units.h"
#include "img.h"

enum { ACT_LIST = 1, ACT_APPLY, ACT_CREATE, ACT_DELETE };

void img_snapshot_dump_header(void)
{
    printf("%-10s%-17s%8s%20s%13s%11s", "ID", "TAG", "VM SIZE", "DATE",
           "VM CLOCK", "ICOUNT");
}

void img_snapshot_dump(const NodeSnapshot *sn)
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
    GError *err = NULL;

    switch (action) {
    case ACT_LIST: {
        NodeSnapshot *list = NULL;
        int n = node_snapshot_list(bs, &list);
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
        NodeSnapshot sn = { .icount = 0 };
        int r;

        g_strlcpy(sn.name, name, sizeof(sn.name));
        sn.date_sec = (uint32_t)(now / G_USEC_PER_SEC);
        sn.date_nsec = (uint32_t)((now % G_USEC_PER_SEC) * 1000);
        r = node_snapshot_create(bs, &sn, &err);
        if (r < 0) {
            /* QEMU's snapshot creation reports an errno and nothing more */
            tool_error("Could not create snapshot '%s': %d (%s)", name,
                       r, g_strerror(-r));
            ret = 1;
        }
        break;
    }
    case ACT_APPLY:
        if (node_snapshot_goto(bs, name, &err) < 0) {
            tool_error("Could not apply snapshot '%s': %s", name,
                       err->message);
            ret = 1;
        }
        break;
    case ACT_DELETE: {
        /* As qemu-img: the snapshot is looked up by name only. */
        NodeSnapshot sn;
        if (node_snapshot_find(bs, NULL, name, &sn) != 1) {
            tool_error("Could not delete snapshot '%s': snapshot not found",
                       name);
            ret = 1;
        } else {
            if (node_snapshot_delete(bs, sn.id_str, sn.name, &err) < 0) {
                tool_error("Could not delete snapshot '%s': %s", name,
                           err->message);
                ret = 1;
            }
        }
        break;
    }
    }
    g_clear_error(&err);
    blk_unref(blk);
    return ret;
}
