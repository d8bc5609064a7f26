/*
 * The write threshold, the highest written offset and the node events a
 * monitor listens to (include/strata/block-events.h).
 */
#include <string.h>
#include "block-int.h"
#include "strata/block-events.h"

static const NodeEventListener *listener;

void node_events_set_listener(const NodeEventListener *l)
{
    listener = l;
}

void node_set_write_threshold(BlockNode *bs, uint64_t threshold)
{
    bs->write_threshold = threshold;
}

uint64_t node_get_write_threshold(const BlockNode *bs)
{
    return bs->write_threshold;
}

uint64_t node_wr_highest_offset(const BlockNode *bs)
{
    return bs->wr_highest_offset;
}

int node_get_detect_zeroes(const BlockNode *bs)
{
    return bs->detect_zeroes;
}

void node_note_write(BlockNode *bs, int64_t offset, int64_t bytes,
                     bool discard)
{
    uint64_t end = (uint64_t)offset + (uint64_t)bytes;
    uint64_t wtr = bs->write_threshold;

    if (!discard && end > bs->wr_highest_offset) {
        bs->wr_highest_offset = end;
    }
    if (wtr > 0 && end > wtr) {
        /* Once only, as QEMU: the threshold disarms itself. */
        bs->write_threshold = 0;
        if (listener && listener->write_threshold) {
            listener->write_threshold(bs, end - wtr, wtr);
        }
    }
}

void node_note_discard(BlockNode *bs, int64_t bytes, int ret)
{
    if (ret < 0) {
        bs->discard_nb_failed++;
    } else {
        bs->discard_nb_ok++;
        bs->discard_bytes_ok += (uint64_t)bytes;
    }
}

void node_get_discard_stats(const BlockNode *bs, uint64_t *nb_ok,
                            uint64_t *nb_failed, uint64_t *bytes_ok)
{
    *nb_ok = bs->discard_nb_ok;
    *nb_failed = bs->discard_nb_failed;
    *bytes_ok = bs->discard_bytes_ok;
}

void node_report_corruption(BlockNode *bs, const char *msg, int64_t offset,
                            int64_t size, bool fatal)
{
    if (listener && listener->image_corrupted) {
        listener->image_corrupted(bs, msg, offset, size, fatal);
    }
}

void node_report_io_error(BlockNode *bs, const char *device, bool is_read,
                          int error)
{
    if (listener && listener->io_error) {
        listener->io_error(bs, device, is_read, error);
    }
}

ParentKind child_parent_kind(const BlockChild *c)
{
    const char *kind = c->klass->kind;

    if (c->klass->parent_is_node) {
        return PARENT_NODE;
    }
    if (kind && !strcmp(kind, "backend")) {
        return PARENT_BACKEND;
    }
    if (kind && !strcmp(kind, "job")) {
        return PARENT_JOB;
    }
    return PARENT_OTHER;
}

void *child_parent(const BlockChild *c)
{
    return c->opaque;
}
