/*
 * x-strata-discard-backing on the copy-on-read filter (cor-discard.h).
 *
 * A range the filter copied into its file (the top image) is never read
 * from the backing images again: the top answers every read of it.  The
 * images below can give it up -- made unallocated (child_co_unallocate),
 * so a qcow2 frees its clusters -- provided nobody else reads them: an
 * overlay of their own, an export, a job.  Every image below one that has
 * another user is kept too, since that user reads through it.
 *
 * Safety: the range must be in the top for good before it leaves the
 * images below, or a crash between the two would leave a chain whose top
 * falls through to dropped data.  The copy's write may still sit in the
 * top's caches (a qcow2's L2 tables), so ranges are only noted when
 * copied and dropped at the filter's next flush, after the top is
 * flushed; a range the top no longer allocates by then is left alone.
 *
 * No reopen in the request path: the images are reopened read-write when
 * the filter opens and read-only when it closes (a reopen drains, which
 * would wait for the very flush that asked for it).  The close flushes
 * first, so what was noted is dropped by then.
 */
#include <errno.h>
#include <string.h>

#include "strata/block-driver.h"
#include "strata/block-events.h"
#include "strata/error.h"
#include "strata/hbitmap.h"
#include "cor-discard.h"

#define OPT_NAME "x-strata-discard-backing"

/* A node of the chain below the top, down to the last one dropped from. */
typedef struct CorEntry {
    BlockNode *bs;
    BlockChild *above;  /* the link from the node above: backing or filtered */
    BlockChild *edge;   /* the filter's own, with write; NULL: a filter */
    bool reopened;      /* made read-write here, read-only again at close */
    bool warned;        /* its other user was logged */
} CorEntry;

struct CorDiscard {
    BlockNode *cor;
    GArray *entries;    /* CorEntry, top down */
    HBitmap *pending;   /* clusters of the top copied since the last flush */
    int64_t gran;       /* bytes per bit: the top's cluster size */
    char *owner;        /* freeze owner, when the freeze is ours */
    BlockNode *frozen_to;
    CoMutex lock;       /* one flush's drops at a time */
};

static CorEntry *entry(CorDiscard *d, guint i)
{
    return &g_array_index(d->entries, CorEntry, i);
}

/* Only the chain (and the filter's edge) uses e->bs. */
static bool entry_unshared(const CorEntry *e, GError **errp)
{
    for (GList *l = e->bs->parents; l; l = l->next) {
        BlockChild *c = l->data;
        if (c == e->above || c == e->edge) {
            continue;
        }
        char *who = child_parent_desc(c);
        error_setg(errp, "Parameter '" OPT_NAME "' needs the image '%s' to "
                   "have no other users than its overlay, but %s uses it",
                   e->bs->node_name, who);
        g_free(who);
        return false;
    }
    return true;
}

bool cor_discard_is_edge(const BlockChild *c)
{
    return !(c->role & CHILD_ROLE_FILTERED);
}

void cor_discard_close(CorDiscard *d)
{
    if (!d) {
        return;
    }
    for (guint i = 0; i < d->entries->len; i++) {
        CorEntry *e = entry(d, i);
        if (e->edge) {
            child_detach(e->edge, NULL);
            e->edge = NULL;
        }
    }
    for (guint i = 0; i < d->entries->len; i++) {
        CorEntry *e = entry(d, i);
        if (e->reopened) {
            GError *err = NULL;
            if (!node_reopen(e->bs, NULL, true, &err)) {
                warn_print(OPT_NAME ": node '%s' stays read-write: %s",
                           e->bs->node_name, err->message);
                g_error_free(err);
            }
            node_unref(e->bs);
        }
    }
    if (d->frozen_to) {
        chain_unfreeze(d->cor, d->frozen_to, d->owner);
        node_unref(d->frozen_to);
    }
    if (d->pending) {
        hbitmap_free(d->pending);
    }
    g_array_free(d->entries, TRUE);
    g_free(d->owner);
    g_free(d);
}

/* The nodes below the top down to bottom, and the checks that need no change. */
static bool collect(CorDiscard *d, BlockNode *top, BlockNode *bottom,
                    GError **errp)
{
    for (BlockChild *above = top->backing; above;) {
        CorEntry e = { .bs = above->bs, .above = above };
        if (!entry_unshared(&e, errp)) {
            return false;
        }
        if (!bottom && !child_check_not_frozen(above, "drop data below",
                                               errp)) {
            return false;
        }
        if (!e.bs->drv->is_filter && !node_can_unallocate(e.bs)) {
            error_setg(errp, "Parameter '" OPT_NAME "': format '%s' of node "
                       "'%s' cannot make ranges unallocated (give 'bottom' "
                       "to stop above it)", e.bs->drv->format_name,
                       e.bs->node_name);
            return false;
        }
        g_array_append_val(d->entries, e);
        if (e.bs == bottom) {
            break;
        }
        above = chain_child(e.bs);
    }
    return true;
}

CorDiscard *cor_discard_open(BlockNode *cor, BlockNode *bottom,
                             GError **errp)
{
    BlockNode *top = node_skip_filters(cor->file->bs);
    CorDiscard *d = g_new0(CorDiscard, 1);
    BlockDriverInfo bdi;

    d->cor = cor;
    d->entries = g_array_new(FALSE, TRUE, sizeof(CorEntry));
    co_mutex_init(&d->lock);
    if (cor->read_only) {
        error_setg(errp, "Parameter '" OPT_NAME "' needs a writable node, "
                   "but '%s' is read-only", cor->node_name);
        goto fail;
    }
    if (!top || !collect(d, top, bottom, errp)) {
        goto fail;
    }
    if (d->entries->len == 0) {
        return d;       /* no backing file: nothing will ever be dropped */
    }
    d->gran = node_get_info(top, &bdi) == 0 && bdi.cluster_size > 0
              ? bdi.cluster_size : 65536;
    int64_t len = node_getlength(top);
    if (len < 0) {
        error_setg_errno(errp, (int)-len, "Could not inquire the size of "
                         "'%s'", top->node_name);
        goto fail;
    }
    d->pending = hbitmap_new((uint64_t)(len + d->gran - 1) / d->gran + 1);

    /* A changed chain would have the top fall through to other images. */
    if (!bottom) {
        BlockNode *last = entry(d, d->entries->len - 1)->bs;
        d->owner = g_strdup_printf("copy-on-read node '%s'", cor->node_name);
        if (!chain_freeze(cor, last, d->owner, errp)) {
            goto fail;
        }
        node_ref(last);
        d->frozen_to = last;
    }
    for (guint i = 0; i < d->entries->len; i++) {
        CorEntry *e = entry(d, i);
        if (e->bs->drv->is_filter) {
            continue;
        }
        if (e->bs->read_only) {
            if (!node_reopen(e->bs, NULL, false, errp)) {
                goto fail;
            }
            node_ref(e->bs);
            e->reopened = true;
        }
        char *name = g_strdup_printf("discard-backing%u", i);
        e->edge = node_attach_child(cor, e->bs, name, 0, errp);
        g_free(name);
        if (!e->edge) {
            goto fail;
        }
    }
    return d;

fail:
    cor_discard_close(d);
    return NULL;
}

void cor_discard_note(CorDiscard *d, int64_t offset, int64_t bytes)
{
    if (!d->pending || bytes <= 0) {
        return;
    }
    uint64_t first = (uint64_t)offset / d->gran;
    uint64_t last = (uint64_t)(offset + bytes - 1) / d->gran;
    if (last >= hbitmap_size(d->pending)) {
        hbitmap_truncate(d->pending, last + 1);
    }
    hbitmap_set(d->pending, first, last - first + 1);
}

/*
 * How many entries, from the top, may be dropped from now: those before
 * the first that gained another user (logged once for it).
 */
static guint usable(CorDiscard *d)
{
    for (guint i = 0; i < d->entries->len; i++) {
        CorEntry *e = entry(d, i);
        GError *err = NULL;
        if (!entry_unshared(e, &err)) {
            if (!e->warned) {
                warn_print("%s; it and the images below it keep their data",
                           err->message);
                e->warned = true;
            }
            g_error_free(err);
            return i;
        }
    }
    return d->entries->len;
}

/*
 * Drop [off, off + bytes), which the top allocates, from the first n
 * entries; returns how many of them are still fine to use (a failing
 * one, and those below it, are left alone from then on in this flush).
 */
static guint coroutine_fn drop_range(CorDiscard *d, guint n, int64_t off,
                                     int64_t bytes)
{
    for (guint i = 0; i < n; i++) {
        CorEntry *e = entry(d, i);
        if (!e->edge) {
            continue;
        }
        int ret = child_co_unallocate(e->edge, off, bytes, NULL);
        if (ret < 0) {
            warn_print(OPT_NAME ": could not drop data from '%s': %s",
                       e->bs->node_name, strerror(-ret));
            return i;
        }
    }
    return n;
}

static void coroutine_fn drop(CorDiscard *d, HBitmap *ranges)
{
    BlockNode *top = node_skip_filters(d->cor->file->bs);
    int64_t len = node_getlength(top);
    uint64_t size = hbitmap_size(ranges);
    guint n = usable(d);

    for (int64_t bit = hbitmap_next_set(ranges, 0, size);
         bit >= 0 && n > 0 && len > 0;) {
        int64_t end_bit = hbitmap_next_clear(ranges, (uint64_t)bit,
                                             size - (uint64_t)bit);
        if (end_bit < 0) {
            end_bit = (int64_t)size;
        }
        int64_t off = bit * d->gran;
        int64_t end = MIN(end_bit * d->gran, len);
        while (off < end && n > 0) {
            int64_t pnum;
            int r = node_co_is_allocated(top, off, end - off, &pnum);
            if (r < 0 || pnum <= 0) {
                break;
            }
            if (r > 0) {
                n = MIN(n, usable(d));
                n = drop_range(d, n, off, pnum);
            }
            off += pnum;
        }
        if ((uint64_t)end_bit >= size) {
            break;
        }
        bit = hbitmap_next_set(ranges, (uint64_t)end_bit,
                               size - (uint64_t)end_bit);
    }
}

int coroutine_fn cor_discard_flush(CorDiscard *d)
{
    HBitmap *ranges = NULL;
    int ret;

    co_mutex_lock(&d->lock);
    if (d->pending && hbitmap_count(d->pending) > 0) {
        ranges = d->pending;
        d->pending = hbitmap_new(hbitmap_size(ranges));
    }
    /* What the ranges were noted for is on disk before anything drops. */
    ret = node_co_flush(d->cor->file->bs);
    if (ranges && ret < 0) {
        /* Not durable: they wait for a flush that works. */
        uint64_t size = MAX(hbitmap_size(ranges), hbitmap_size(d->pending));
        hbitmap_truncate(ranges, size);
        hbitmap_truncate(d->pending, size);
        hbitmap_merge(ranges, d->pending);
        hbitmap_free(d->pending);
        d->pending = ranges;
        ranges = NULL;
    }
    if (ranges) {
        drop(d, ranges);
        hbitmap_free(ranges);
    }
    co_mutex_unlock(&d->lock);
    return ret;
}
