/*
 * Named dirty bitmaps of a node (strata/dirty-bitmap.h): the flags, the
 * byte <-> bit mapping over an HBitmap, and the marking that block/io.c
 * calls for every write, zero write and discard.
 */
#include <inttypes.h>
#include <string.h>

#include <glib.h>

#include "strata/block-driver.h"
#include "strata/dirty-bitmap.h"

struct DirtyBitmap {
    BlockNode *bs;
    char *name;                  /* NULL: anonymous */
    unsigned gran_bits;
    int64_t size;                /* bytes covered (the node's length) */
    HBitmap *hb;                 /* one bit per chunk */
    bool disabled;
    bool persistent;
    bool inconsistent;
    bool busy;
    bool readonly;
    /* While a job owns the bitmap (QEMU's successor): the anonymous
     * bitmap that records writes meanwhile; see dirty_bitmap_successor. */
    DirtyBitmap *successor;
    GList *link;                 /* in bs->dirty_bitmaps: O(1) release */
};

static uint64_t chunks(unsigned gran_bits, int64_t bytes)
{
    return ((uint64_t)bytes + (1ull << gran_bits) - 1) >> gran_bits;
}

/* The index keys are the bitmaps' own names (freed with the bitmap). */
static void index_name(DirtyBitmap *bm)
{
    BlockNode *bs = bm->bs;

    if (!bm->name) {
        return;
    }
    if (!bs->dirty_bitmap_names) {
        bs->dirty_bitmap_names = g_hash_table_new(g_str_hash, g_str_equal);
    }
    g_hash_table_replace(bs->dirty_bitmap_names, bm->name, bm);
}

DirtyBitmap *node_create_dirty_bitmap(BlockNode *bs, uint32_t granularity,
                                      const char *name, GError **errp)
{
    DirtyBitmap *bm;
    int64_t len;

    g_assert(granularity >= 512 && !(granularity & (granularity - 1)));
    if (name) {
        if (node_find_dirty_bitmap(bs, name)) {
            error_setg(errp, "Bitmap already exists: %s", name);
            return NULL;
        }
        if (strlen(name) > DIRTY_BITMAP_MAX_NAME) {
            error_setg(errp, "Bitmap name too long: %s", name);
            return NULL;
        }
    }
    len = node_getlength(bs);
    if (len < 0) {
        error_setg_errno(errp, (int)-len, "could not get length of device");
        return NULL;
    }
    bm = g_new0(DirtyBitmap, 1);
    bm->gran_bits = (unsigned)__builtin_ctz(granularity);
    bm->hb = hbitmap_new(chunks(bm->gran_bits, len));
    if (!bm->hb) {
        g_free(bm);
        error_setg(errp, "Could not allocate dirty bitmap");
        return NULL;
    }
    bm->bs = bs;
    bm->name = g_strdup(name);
    bm->size = len;
    bs->dirty_bitmaps = g_list_prepend(bs->dirty_bitmaps, bm);
    bm->link = bs->dirty_bitmaps;
    index_name(bm);
    return bm;
}

void dirty_bitmap_release(DirtyBitmap *bm)
{
    BlockNode *bs = bm->bs;

    if (bm->name && bs->dirty_bitmap_names &&
        g_hash_table_lookup(bs->dirty_bitmap_names, bm->name) == bm) {
        g_hash_table_remove(bs->dirty_bitmap_names, bm->name);
    }
    bs->dirty_bitmaps = g_list_delete_link(bs->dirty_bitmaps, bm->link);
    if (!bs->dirty_bitmaps && bs->dirty_bitmap_names) {
        g_hash_table_destroy(bs->dirty_bitmap_names);
        bs->dirty_bitmap_names = NULL;
    }
    hbitmap_free(bm->hb);
    g_free(bm->name);
    g_free(bm);
}

void node_release_dirty_bitmaps(BlockNode *bs)
{
    while (bs->dirty_bitmaps) {
        dirty_bitmap_release(bs->dirty_bitmaps->data);
    }
}

DirtyBitmap *node_find_dirty_bitmap(BlockNode *bs, const char *name)
{
    if (!bs->dirty_bitmap_names) {
        return NULL;
    }
    return g_hash_table_lookup(bs->dirty_bitmap_names, name);
}

GList *node_dirty_bitmaps(BlockNode *bs)
{
    return bs->dirty_bitmaps;
}

bool node_has_readonly_bitmaps(BlockNode *bs)
{
    for (GList *l = bs->dirty_bitmaps; l; l = l->next) {
        if (((DirtyBitmap *)l->data)->readonly) {
            return true;
        }
    }
    return false;
}

const char *dirty_bitmap_name(const DirtyBitmap *bm) { return bm->name; }
BlockNode *dirty_bitmap_node(const DirtyBitmap *bm) { return bm->bs; }
int64_t dirty_bitmap_size(const DirtyBitmap *bm) { return bm->size; }
bool dirty_bitmap_enabled(const DirtyBitmap *bm) { return !bm->disabled; }
bool dirty_bitmap_persistent(const DirtyBitmap *bm) { return bm->persistent; }
bool dirty_bitmap_busy(const DirtyBitmap *bm) { return bm->busy; }
bool dirty_bitmap_readonly(const DirtyBitmap *bm) { return bm->readonly; }

uint32_t dirty_bitmap_granularity(const DirtyBitmap *bm)
{
    return 1u << bm->gran_bits;
}

bool dirty_bitmap_inconsistent(const DirtyBitmap *bm)
{
    return bm->inconsistent;
}

void dirty_bitmap_set_enabled(DirtyBitmap *bm, bool enabled)
{
    bm->disabled = !enabled;
}

void dirty_bitmap_set_persistent(DirtyBitmap *bm, bool persistent)
{
    bm->persistent = persistent;
}

/* An inconsistent bitmap cannot record; QEMU also makes it busy-proof. */
void dirty_bitmap_set_inconsistent(DirtyBitmap *bm)
{
    bm->inconsistent = true;
    bm->disabled = true;
}

void dirty_bitmap_recover(DirtyBitmap *bm)
{
    bm->inconsistent = false;
    bm->disabled = false;
    if (hbitmap_size(bm->hb)) {
        hbitmap_set(bm->hb, 0, hbitmap_size(bm->hb));
    }
}

void dirty_bitmap_set_busy(DirtyBitmap *bm, bool busy)
{
    bm->busy = busy;
}

void dirty_bitmap_set_readonly(DirtyBitmap *bm, bool readonly)
{
    bm->readonly = readonly;
}

int dirty_bitmap_check(const DirtyBitmap *bm, unsigned flags, GError **errp)
{
    if ((flags & DIRTY_BITMAP_BUSY) && bm->busy) {
        error_setg(errp, "Bitmap '%s' is currently in use by another "
                   "operation and cannot be used", bm->name);
        return -1;
    }
    if ((flags & DIRTY_BITMAP_RO) && bm->readonly) {
        error_setg(errp, "Bitmap '%s' is readonly and cannot be modified",
                   bm->name);
        return -1;
    }
    if ((flags & DIRTY_BITMAP_INCONSISTENT) && bm->inconsistent) {
        error_setg(errp, "Bitmap '%s' is inconsistent and cannot be used\n"
                   "Try block-dirty-bitmap-remove to delete this bitmap "
                   "from disk", bm->name);
        return -1;
    }
    return 0;
}

/* The chunks [first, first + n) that the byte range touches. */
static bool byte_range(const DirtyBitmap *bm, int64_t offset, int64_t bytes,
                       uint64_t *first, uint64_t *n)
{
    if (offset < 0 || bytes <= 0 || offset >= bm->size) {
        return false;
    }
    bytes = MIN(bytes, bm->size - offset);
    *first = (uint64_t)offset >> bm->gran_bits;
    *n = (((uint64_t)(offset + bytes - 1)) >> bm->gran_bits) - *first + 1;
    return true;
}

void dirty_bitmap_set(DirtyBitmap *bm, int64_t offset, int64_t bytes)
{
    uint64_t first, n;
    if (byte_range(bm, offset, bytes, &first, &n)) {
        hbitmap_set(bm->hb, first, n);
    }
}

void dirty_bitmap_reset(DirtyBitmap *bm, int64_t offset, int64_t bytes)
{
    uint64_t first, n;
    if (byte_range(bm, offset, bytes, &first, &n)) {
        hbitmap_reset(bm->hb, first, n);
    }
}

void dirty_bitmap_clear(DirtyBitmap *bm)
{
    hbitmap_reset_all(bm->hb);
}

HBitmap *dirty_bitmap_backup(const DirtyBitmap *bm)
{
    return hbitmap_copy(bm->hb);
}

void dirty_bitmap_restore(DirtyBitmap *bm, HBitmap *backup)
{
    g_assert(hbitmap_size(backup) == hbitmap_size(bm->hb));
    hbitmap_free(bm->hb);
    bm->hb = backup;
}

bool dirty_bitmap_get(const DirtyBitmap *bm, int64_t offset)
{
    return offset >= 0 && hbitmap_get(bm->hb, (uint64_t)offset >> bm->gran_bits);
}

static int64_t search(const DirtyBitmap *bm, int64_t offset, int64_t bytes,
                      bool dirty)
{
    uint64_t first, n;
    int64_t r;

    if (!byte_range(bm, offset, bytes, &first, &n)) {
        return -1;
    }
    r = dirty ? hbitmap_next_set(bm->hb, first, n)
              : hbitmap_next_clear(bm->hb, first, n);
    if (r < 0) {
        return -1;
    }
    /* A chunk that starts before offset answers for offset itself. */
    return MAX(offset, (int64_t)((uint64_t)r << bm->gran_bits));
}

int64_t dirty_bitmap_next_dirty(const DirtyBitmap *bm, int64_t offset,
                                int64_t bytes)
{
    return search(bm, offset, bytes, true);
}

int64_t dirty_bitmap_next_clean(const DirtyBitmap *bm, int64_t offset,
                                int64_t bytes)
{
    return search(bm, offset, bytes, false);
}

/* Whole chunks, the last one too even past the end, as QEMU counts. */
int64_t dirty_bitmap_count(const DirtyBitmap *bm)
{
    return (int64_t)(hbitmap_count(bm->hb) << bm->gran_bits);
}

char *dirty_bitmap_sha256(const DirtyBitmap *bm)
{
    return hbitmap_sha256(bm->hb);
}

bool dirty_bitmap_merge(DirtyBitmap *dst, const DirtyBitmap *src,
                        GError **errp)
{
    if (dirty_bitmap_check(dst, DIRTY_BITMAP_DEFAULT, errp) ||
        dirty_bitmap_check(src, DIRTY_BITMAP_ALLOW_RO, errp)) {
        return false;
    }
    if (src->size != dst->size) {
        error_setg(errp, "Bitmaps are of different sizes (destination size "
                   "is %" PRId64 ", source size is %" PRId64 ") and can't be "
                   "merged", dst->size, src->size);
        return false;
    }
    if (src->gran_bits == dst->gran_bits) {
        hbitmap_merge(dst->hb, src->hb);
        return true;
    }
    /* Different chunk sizes: every dirty run of src marks dst's chunks. */
    for (int64_t o = dirty_bitmap_next_dirty(src, 0, src->size); o >= 0;) {
        int64_t end = dirty_bitmap_next_clean(src, o, src->size - o);
        if (end < 0) {
            end = src->size;
        }
        dirty_bitmap_set(dst, o, end - o);
        o = end < src->size ? dirty_bitmap_next_dirty(src, end,
                                                      src->size - end) : -1;
    }
    return true;
}

void node_dirty_bitmaps_truncate(BlockNode *bs, int64_t bytes)
{
    for (GList *l = bs->dirty_bitmaps; l; l = l->next) {
        DirtyBitmap *bm = l->data;
        if (hbitmap_truncate(bm->hb, chunks(bm->gran_bits, bytes))) {
            bm->size = bytes;
        }
    }
}

void node_set_dirty(BlockNode *bs, int64_t offset, int64_t bytes)
{
    for (GList *l = bs->dirty_bitmaps; l; l = l->next) {
        DirtyBitmap *bm = l->data;
        if (!bm->disabled) {
            dirty_bitmap_set(bm, offset, bytes);
        }
    }
}

int64_t dirty_bitmap_serialization_coverage(const DirtyBitmap *bm,
                                            uint64_t len)
{
    return (int64_t)((len * 8) << bm->gran_bits);
}

uint64_t dirty_bitmap_serialization_size(const DirtyBitmap *bm,
                                         int64_t offset, int64_t bytes)
{
    uint64_t first, n;
    if (!byte_range(bm, offset, bytes, &first, &n)) {
        return 0;
    }
    return hbitmap_serialized_bytes(n);
}

void dirty_bitmap_serialize_part(const DirtyBitmap *bm, uint8_t *buf,
                                 int64_t offset, int64_t bytes)
{
    uint64_t first, n;
    if (byte_range(bm, offset, bytes, &first, &n)) {
        hbitmap_serialize(bm->hb, buf, first, n);
    }
}

void dirty_bitmap_deserialize_part(DirtyBitmap *bm, const uint8_t *buf,
                                   int64_t offset, int64_t bytes)
{
    uint64_t first, n;
    if (byte_range(bm, offset, bytes, &first, &n)) {
        hbitmap_deserialize(bm->hb, buf, first, n);
    }
}

void dirty_bitmap_deserialize_ones(DirtyBitmap *bm, int64_t offset,
                                   int64_t bytes)
{
    dirty_bitmap_set(bm, offset, bytes);
}

/* ---- Successors (QEMU's bdrv_dirty_bitmap_create_successor & co.) ---- */

bool dirty_bitmap_recording(const DirtyBitmap *bm)
{
    return !bm->disabled || (bm->successor && !bm->successor->disabled);
}

DirtyBitmap *dirty_bitmap_successor(const DirtyBitmap *bm)
{
    return bm->successor;
}

bool dirty_bitmap_create_successor(DirtyBitmap *bm, GError **errp)
{
    DirtyBitmap *child;

    if (dirty_bitmap_check(bm, DIRTY_BITMAP_BUSY, errp)) {
        return false;
    }
    if (bm->successor) {
        error_setg(errp, "Cannot create a successor for a bitmap that "
                   "already has one");
        return false;
    }
    child = node_create_dirty_bitmap(bm->bs, 1u << bm->gran_bits, NULL,
                                     errp);
    if (!child) {
        return false;
    }
    /* The successor records if the parent did; the parent is frozen. */
    child->disabled = bm->disabled;
    bm->disabled = true;
    bm->successor = child;
    bm->busy = true;
    return true;
}

DirtyBitmap *dirty_bitmap_abdicate(DirtyBitmap *bm)
{
    DirtyBitmap *child = bm->successor;

    g_assert(child);
    /* The name moves to the child: so does its index entry. */
    if (bm->name) {
        g_hash_table_remove(bm->bs->dirty_bitmap_names, bm->name);
    }
    child->name = bm->name;
    bm->name = NULL;
    index_name(child);
    child->persistent = bm->persistent;
    bm->persistent = false;
    bm->successor = NULL;
    bm->busy = false;
    dirty_bitmap_release(bm);
    return child;
}

DirtyBitmap *dirty_bitmap_reclaim(DirtyBitmap *bm)
{
    DirtyBitmap *child = bm->successor;

    g_assert(child);
    hbitmap_merge(bm->hb, child->hb);
    bm->disabled = child->disabled;
    bm->busy = false;
    bm->successor = NULL;
    dirty_bitmap_release(child);
    return bm;
}

void dirty_bitmap_merge_internal(DirtyBitmap *dst, const DirtyBitmap *src)
{
    g_assert(dst->size == src->size);
    if (src->gran_bits == dst->gran_bits) {
        hbitmap_merge(dst->hb, src->hb);
        return;
    }
    for (int64_t o = dirty_bitmap_next_dirty(src, 0, src->size); o >= 0;) {
        int64_t end = dirty_bitmap_next_clean(src, o, src->size - o);
        if (end < 0) {
            end = src->size;
        }
        dirty_bitmap_set(dst, o, end - o);
        o = end < src->size ? dirty_bitmap_next_dirty(src, end,
                                                      src->size - end) : -1;
    }
}
