/*
 * Write-behind (strata/writeback.h).
 */
#include <errno.h>
#include <fcntl.h>
#include "block-int.h"
#include "strata/loop.h"
#include "strata/pool-class.h"
#include "strata/writeback.h"

static int start_writeback(void *opaque)
{
    int fd = *(int *)opaque;

    /* Offset 0, length 0: the whole file.  Pages already being written
     * are left alone: a call while the last one's writes run costs a walk
     * of the dirty pages only. */
    return sync_file_range(fd, 0, 0, SYNC_FILE_RANGE_WRITE) ? -errno : 0;
}

int coroutine_fn node_co_start_writeback(BlockNode *bs)
{
    int fd = file_node_page_cache_fd(bs);
    int n = 0;

    if (bs->read_only) {
        return 0;
    }
    /* The node stays open (close drains) while the pool thread uses fd. */
    node_inc_in_flight(bs);
    if (fd >= 0) {
        /* A hint: a failure changes nothing the flush will not see. */
        /* Idle class when a job's background copy asks (pool-class.h). */
        thread_pool_co_run_background(start_writeback, &fd);
        n = 1;
    } else {
        /* Taken first: the graph may change while a call below yields. */
        GSList *below = NULL;
        for (GList *l = bs->children; l; l = l->next) {
            BlockChild *c = l->data;
            if (c->perm & (BLK_PERM_WRITE | BLK_PERM_WRITE_UNCHANGED)) {
                node_ref(c->bs);
                below = g_slist_prepend(below, c->bs);
            }
        }
        for (GSList *l = below; l; l = l->next) {
            n += node_co_start_writeback(l->data);
            node_unref(l->data);
        }
        g_slist_free(below);
    }
    node_dec_in_flight(bs);
    return n;
}
