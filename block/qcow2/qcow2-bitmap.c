/*
 * Persistent dirty bitmaps in qcow2 (see qcow2-bitmap.h).
 *
 * On disk (QEMU's bitmaps extension): the header extension gives the
 * number of bitmaps and the offset and size of the bitmap directory; each
 * directory entry (24 bytes, then extra data, then the name, padded to 8)
 * names a bitmap table, granularity and flags (in-use, auto = enabled);
 * each table entry points at one cluster of bitmap data, or says the
 * cluster is all zeroes (0) or all ones (bit 0).  The data is the bitmap
 * serialised least significant bit first (hbitmap.h).
 *
 * The autoclear bit BITMAPS says the bitmaps are valid: a program that
 * does not know them clears it on a write.  While the image is open
 * read-write the bitmaps are marked in use (their data on disk is stale
 * until close); a bitmap found in use at open belonged to a writer that
 * did not close cleanly, and is kept, reported and unusable
 * (inconsistent).
 *
 * Storing follows QEMU's order so that the same operations give the same
 * file: every changed bitmap gets new data clusters and a new table, then
 * a new directory is written and the header switched to it, then the old
 * directory and tables are freed.  Marking in use at open rewrites the
 * directory in place with the autoclear bit cleared around the write.
 */
#include <errno.h>
#include <inttypes.h>
#include <string.h>

#include <glib.h>

#include "strata/dirty-bitmap.h"

#include "qcow2.h"
#include "qcow2-bitmap.h"

#define BME_MAX_TABLE_SIZE 0x8000000u
#define BME_MAX_PHYS_SIZE 0x20000000u   /* bytes of bitmap in memory */
#define BME_MAX_GRANULARITY_BITS 31
#define BME_MIN_GRANULARITY_BITS 9
#define BME_MAX_NAME_SIZE 1023
#define BME_RESERVED_FLAGS 0xfffffffcu
#define BME_FLAG_IN_USE (1u << 0)
#define BME_FLAG_AUTO (1u << 1)
#define BME_TABLE_ENTRY_RESERVED_MASK 0xff000000000001feull
#define BME_TABLE_ENTRY_OFFSET_MASK 0x00fffffffffffe00ull
#define BME_TABLE_ENTRY_FLAG_ALL_ONES 1ull
#define BME_DIR_ENTRY_HEADER 24
#define BT_DIRTY_TRACKING_BITMAP 1

/* One directory entry, in host byte order. */
typedef struct Qcow2Bitmap {
    uint64_t table_offset;
    uint32_t table_size;             /* entries */
    uint32_t flags;
    uint8_t granularity_bits;
    char *name;
    DirtyBitmap *dbm;                /* while storing */
} Qcow2Bitmap;

static void bitmap_free(gpointer p)
{
    Qcow2Bitmap *bm = p;
    g_free(bm->name);
    g_free(bm);
}

static uint32_t nb_bitmaps(const Qcow2State *s)
{
    return s->has_bitmaps_ext ? s->bitmaps_ext.nb_bitmaps : 0;
}

static uint64_t dir_entry_size(size_t name_size, size_t extra_size)
{
    return (BME_DIR_ENTRY_HEADER + name_size + extra_size + 7) & ~7ull;
}

static int check_table_entry(uint64_t entry, uint64_t cluster_size)
{
    uint64_t offset = entry & BME_TABLE_ENTRY_OFFSET_MASK;

    if (entry & BME_TABLE_ENTRY_RESERVED_MASK) {
        return -EINVAL;
    }
    if (offset && ((entry & BME_TABLE_ENTRY_FLAG_ALL_ONES) ||
                   offset % cluster_size)) {
        return -EINVAL;
    }
    return 0;
}

static int64_t bitmap_bytes_needed(int64_t len, uint32_t granularity)
{
    int64_t bits = (len + granularity - 1) / granularity;
    return (bits + 7) / 8;
}

static int check_constraints(BlockNode *bs, const char *name,
                             uint32_t granularity, GError **errp)
{
    Qcow2State *s = bs->opaque;
    int gbits = __builtin_ctz(granularity);
    int64_t len = node_getlength(bs);
    int64_t bytes;

    if (len < 0) {
        error_setg_errno(errp, (int)-len, "Failed to get size of '%s'",
                         node_get_name(bs));
        return (int)len;
    }
    if (gbits > BME_MAX_GRANULARITY_BITS) {
        error_setg(errp, "Granularity exceeds maximum (%llu bytes)",
                   1ULL << BME_MAX_GRANULARITY_BITS);
        return -EINVAL;
    }
    if (gbits < BME_MIN_GRANULARITY_BITS) {
        error_setg(errp, "Granularity is under minimum (%llu bytes)",
                   1ULL << BME_MIN_GRANULARITY_BITS);
        return -EINVAL;
    }
    bytes = bitmap_bytes_needed(len, granularity);
    if ((uint64_t)bytes > BME_MAX_PHYS_SIZE ||
        (uint64_t)bytes > (uint64_t)BME_MAX_TABLE_SIZE * s->cluster_size) {
        error_setg(errp, "Too much space will be occupied by the bitmap. "
                   "Use larger granularity");
        return -EINVAL;
    }
    if (strlen(name) > BME_MAX_NAME_SIZE) {
        error_setg(errp, "Name length exceeds maximum (%u characters)",
                   BME_MAX_NAME_SIZE);
        return -EINVAL;
    }
    return 0;
}

/* QEMU's rules for a directory entry (also for one about to be written). */
static bool dir_entry_ok(BlockNode *bs, uint64_t table_offset,
                         uint32_t table_size, uint32_t flags, uint8_t type,
                         uint8_t gbits, uint16_t name_size)
{
    Qcow2State *s = bs->opaque;
    uint64_t phys;
    int64_t len;

    if (table_size == 0 || table_offset == 0 ||
        table_offset % s->cluster_size || table_size > BME_MAX_TABLE_SIZE ||
        gbits > BME_MAX_GRANULARITY_BITS ||
        gbits < BME_MIN_GRANULARITY_BITS || (flags & BME_RESERVED_FLAGS) ||
        name_size > BME_MAX_NAME_SIZE || type != BT_DIRTY_TRACKING_BITMAP) {
        return false;
    }
    phys = (uint64_t)table_size * s->cluster_size;
    len = node_getlength(bs);
    if (len < 0 || phys > BME_MAX_PHYS_SIZE) {
        return false;
    }
    /*
     * A valid bitmap must cover the disk; one in use may be too small (the
     * image was resized and the bitmap not stored again).
     */
    if (!(flags & BME_FLAG_IN_USE) &&
        (uint64_t)len > ((phys * 8) << gbits)) {
        return false;
    }
    return true;
}

/* The directory as a list of Qcow2Bitmap; NULL and a message if broken. */
static GPtrArray *bitmap_list_load(BlockNode *bs, uint64_t offset,
                                   uint64_t size, GError **errp)
{
    Qcow2State *s = bs->opaque;
    uint8_t *dir;
    GPtrArray *list;
    uint64_t pos = 0;
    uint32_t n = 0;
    int ret;

    if (size == 0) {
        error_setg(errp, "Requested bitmap directory size is zero");
        return NULL;
    }
    if (size > QCOW2_MAX_BITMAP_DIRECTORY_SIZE) {
        error_setg(errp, "Requested bitmap directory size is too big");
        return NULL;
    }
    dir = g_try_malloc(size);
    if (!dir) {
        error_setg(errp, "Failed to allocate space for bitmap directory");
        return NULL;
    }
    ret = child_co_pread(bs->file, (int64_t)offset, (int64_t)size, dir, 0);
    if (ret < 0) {
        error_setg_errno(errp, -ret, "Failed to read bitmap directory");
        g_free(dir);
        return NULL;
    }
    list = g_ptr_array_new_with_free_func(bitmap_free);
    while (pos < size) {
        uint8_t *e = dir + pos;
        uint64_t toff;
        uint32_t tsize, flags, extra;
        uint16_t name_size;
        uint64_t esize;
        Qcow2Bitmap *bm;

        if (pos + BME_DIR_ENTRY_HEADER > size) {
            goto broken;
        }
        if (++n > nb_bitmaps(s)) {
            error_setg(errp, "More bitmaps found than specified in header "
                       "extension");
            goto fail;
        }
        memcpy(&toff, e, 8);
        memcpy(&tsize, e + 8, 4);
        memcpy(&flags, e + 12, 4);
        memcpy(&name_size, e + 18, 2);
        memcpy(&extra, e + 20, 4);
        toff = be64toh(toff);
        tsize = be32toh(tsize);
        flags = be32toh(flags);
        name_size = be16toh(name_size);
        extra = be32toh(extra);
        esize = dir_entry_size(name_size, extra);
        if (pos + esize > size) {
            goto broken;
        }
        if (extra != 0) {
            error_setg(errp, "Bitmap extra data is not supported");
            goto fail;
        }
        if (!dir_entry_ok(bs, toff, tsize, flags, e[16], e[17], name_size)) {
            error_setg(errp, "Bitmap '%.*s' doesn't satisfy the constraints",
                       (int)name_size,
                       (const char *)e + BME_DIR_ENTRY_HEADER + extra);
            goto fail;
        }
        bm = g_new0(Qcow2Bitmap, 1);
        bm->table_offset = toff;
        bm->table_size = tsize;
        bm->flags = flags;
        bm->granularity_bits = e[17];
        bm->name = g_strndup((const char *)e + BME_DIR_ENTRY_HEADER + extra,
                             name_size);
        g_ptr_array_add(list, bm);
        pos += esize;
    }
    if (n != nb_bitmaps(s)) {
        error_setg(errp, "Less bitmaps found than specified in header "
                   "extension");
        goto fail;
    }
    g_free(dir);
    return list;

broken:
    error_setg(errp, "Broken bitmap directory");
fail:
    g_free(dir);
    g_ptr_array_free(list, true);
    return NULL;
}

static Qcow2Bitmap *find_bitmap(GPtrArray *list, const char *name)
{
    for (guint i = 0; i < list->len; i++) {
        Qcow2Bitmap *bm = list->pdata[i];
        if (!strcmp(bm->name, name)) {
            return bm;
        }
    }
    return NULL;
}

/*
 * Name -> entry of list, for a lookup per bitmap of the node: with up to
 * 65535 bitmaps, find_bitmap() for each made closing take minutes.  The
 * keys belong to the entries.
 */
static GHashTable *index_bitmaps(GPtrArray *list)
{
    GHashTable *h = g_hash_table_new(g_str_hash, g_str_equal);

    for (guint i = 0; i < list->len; i++) {
        Qcow2Bitmap *bm = list->pdata[i];
        g_hash_table_insert(h, bm->name, bm);
    }
    return h;
}

static int bitmap_table_load(BlockNode *bs, uint64_t offset, uint32_t size,
                             uint64_t **table)
{
    Qcow2State *s = bs->opaque;
    uint64_t *t = g_try_new(uint64_t, size);
    int ret;

    if (!t) {
        return -ENOMEM;
    }
    ret = child_co_pread(bs->file, (int64_t)offset, (int64_t)size * 8, t, 0);
    if (ret < 0) {
        g_free(t);
        return ret;
    }
    for (uint32_t i = 0; i < size; i++) {
        t[i] = be64toh(t[i]);
        if (check_table_entry(t[i], s->cluster_size) < 0) {
            g_free(t);
            return -EINVAL;
        }
    }
    *table = t;
    return 0;
}

static void clear_bitmap_table(BlockNode *bs, uint64_t *t, uint32_t size)
{
    Qcow2State *s = bs->opaque;

    for (uint32_t i = 0; i < size; i++) {
        uint64_t addr = t[i] & BME_TABLE_ENTRY_OFFSET_MASK;
        if (addr) {
            qcow2_free_clusters(bs, addr, s->cluster_size,
                                QCOW2_DISCARD_ALWAYS);
            t[i] = 0;
        }
    }
}

/* Free a bitmap's data clusters and its table. */
static int free_bitmap_clusters(BlockNode *bs, uint64_t *offset,
                                uint32_t *size)
{
    uint64_t *t;
    int ret = bitmap_table_load(bs, *offset, *size, &t);

    if (ret < 0) {
        return ret;
    }
    clear_bitmap_table(bs, t, *size);
    qcow2_free_clusters(bs, *offset, (uint64_t)*size * 8,
                        QCOW2_DISCARD_OTHER);
    g_free(t);
    *offset = 0;
    *size = 0;
    return 0;
}

static uint64_t table_entries_for(const Qcow2State *s, const DirtyBitmap *d)
{
    return qcow2_size_to_clusters(s, dirty_bitmap_serialization_size(
                                         d, 0, dirty_bitmap_size(d)));
}

static int load_bitmap_data(BlockNode *bs, const uint64_t *t, uint32_t size,
                            DirtyBitmap *d)
{
    Qcow2State *s = bs->opaque;
    int64_t bm_size = dirty_bitmap_size(d);
    uint64_t n = table_entries_for(s, d);
    int64_t limit = dirty_bitmap_serialization_coverage(d, s->cluster_size);
    uint8_t *buf;
    int ret = 0;

    if (n != size || n > BME_MAX_TABLE_SIZE) {
        return -EINVAL;
    }
    buf = g_malloc(s->cluster_size);
    for (uint64_t i = 0; i < n; i++) {
        int64_t offset = (int64_t)i * limit;
        int64_t count = MIN(bm_size - offset, limit);
        uint64_t data = t[i] & BME_TABLE_ENTRY_OFFSET_MASK;

        if (!data) {
            if (t[i] & BME_TABLE_ENTRY_FLAG_ALL_ONES) {
                dirty_bitmap_deserialize_ones(d, offset, count);
            }
            continue;
        }
        ret = child_co_pread(bs->file, (int64_t)data,
                             (int64_t)s->cluster_size, buf, 0);
        if (ret < 0) {
            break;
        }
        dirty_bitmap_deserialize_part(d, buf, offset, count);
    }
    g_free(buf);
    return ret < 0 ? ret : 0;
}

static DirtyBitmap *load_bitmap(BlockNode *bs, Qcow2Bitmap *bm,
                                GError **errp)
{
    DirtyBitmap *d = node_create_dirty_bitmap(bs, 1u << bm->granularity_bits,
                                              bm->name, errp);
    uint64_t *t = NULL;
    int ret;

    if (!d || (bm->flags & BME_FLAG_IN_USE)) {
        /* In use: the data on disk is stale, not worth reading. */
        return d;
    }
    ret = bitmap_table_load(bs, bm->table_offset, bm->table_size, &t);
    if (ret < 0) {
        error_setg_errno(errp, -ret, "Could not read bitmap_table table "
                         "from image for bitmap '%s'", bm->name);
        dirty_bitmap_release(d);
        return NULL;
    }
    ret = load_bitmap_data(bs, t, bm->table_size, d);
    g_free(t);
    if (ret < 0) {
        error_setg_errno(errp, -ret, "Could not read bitmap '%s' from image",
                         bm->name);
        dirty_bitmap_release(d);
        return NULL;
    }
    return d;
}

/* Write the directory (new clusters, or in place) and return where. */
static int bitmap_list_store(BlockNode *bs, GPtrArray *list,
                             uint64_t *offset, uint64_t *size, bool in_place)
{
    Qcow2State *s = bs->opaque;
    uint64_t dir_size = 0, dir_offset = 0, pos = 0;
    uint8_t *dir;
    int ret;

    for (guint i = 0; i < list->len; i++) {
        dir_size += dir_entry_size(strlen(((Qcow2Bitmap *)
                                           list->pdata[i])->name), 0);
    }
    if (dir_size == 0 || dir_size > QCOW2_MAX_BITMAP_DIRECTORY_SIZE) {
        return -EINVAL;
    }
    if (in_place) {
        if (*size != dir_size || *offset == 0) {
            return -EINVAL;
        }
        dir_offset = *offset;
    }
    dir = g_try_malloc0(dir_size);
    if (!dir) {
        return -ENOMEM;
    }
    for (guint i = 0; i < list->len; i++) {
        Qcow2Bitmap *bm = list->pdata[i];
        uint16_t name_size = (uint16_t)strlen(bm->name);
        uint64_t toff = htobe64(bm->table_offset);
        uint32_t tsize = htobe32(bm->table_size);
        uint32_t flags = htobe32(bm->flags);
        uint16_t ns = htobe16(name_size);
        uint8_t *e = dir + pos;

        if (!dir_entry_ok(bs, bm->table_offset, bm->table_size, bm->flags,
                          BT_DIRTY_TRACKING_BITMAP, bm->granularity_bits,
                          name_size)) {
            g_free(dir);
            return -EINVAL;
        }
        memcpy(e, &toff, 8);
        memcpy(e + 8, &tsize, 4);
        memcpy(e + 12, &flags, 4);
        e[16] = BT_DIRTY_TRACKING_BITMAP;
        e[17] = bm->granularity_bits;
        memcpy(e + 18, &ns, 2);
        memcpy(e + BME_DIR_ENTRY_HEADER, bm->name, name_size);
        pos += dir_entry_size(name_size, 0);
    }
    if (!in_place) {
        ret = qcow2_alloc_clusters(bs, qcow2_size_to_clusters(s, dir_size),
                                   &dir_offset);
        if (ret < 0) {
            g_free(dir);
            return ret;
        }
    }
    ret = qcow2_check_overlap(bs, in_place ? QCOW2_OL_BITMAP_DIRECTORY : 0,
                              dir_offset, dir_size);
    if (ret >= 0) {
        ret = child_co_pwrite(bs->file, (int64_t)dir_offset,
                              (int64_t)dir_size, dir, 0);
    }
    g_free(dir);
    if (ret < 0) {
        if (!in_place) {
            qcow2_free_clusters(bs, dir_offset, dir_size,
                                QCOW2_DISCARD_OTHER);
        }
        return ret;
    }
    if (!in_place) {
        *offset = dir_offset;
        *size = dir_size;
    }
    return 0;
}

/*
 * Flags changed, nothing else: rewrite the directory where it is, with
 * the autoclear bit off meanwhile so that a crash in the middle leaves
 * bitmaps every reader distrusts rather than a half-written directory.
 */
static int update_dir_in_place(BlockNode *bs, GPtrArray *list)
{
    Qcow2State *s = bs->opaque;
    int ret;

    if (!(s->autoclear_features & QCOW2_AUTOCLEAR_BITMAPS) ||
        list->len == 0 || list->len != nb_bitmaps(s)) {
        return -EINVAL;
    }
    s->autoclear_features &= ~(uint64_t)QCOW2_AUTOCLEAR_BITMAPS;
    ret = qcow2_update_header(bs);
    if (ret < 0) {
        return ret;
    }
    uint64_t off = s->bitmaps_ext.bitmap_directory_offset;
    uint64_t size = s->bitmaps_ext.bitmap_directory_size;
    ret = bitmap_list_store(bs, list, &off, &size, true);
    if (ret < 0) {
        return ret;
    }
    ret = qcow2_update_header(bs);
    if (ret < 0) {
        return ret;
    }
    s->autoclear_features |= QCOW2_AUTOCLEAR_BITMAPS;
    return qcow2_update_header(bs);
}

static void set_ext(Qcow2State *s, uint32_t nb, uint64_t offset,
                    uint64_t size)
{
    s->bitmaps_ext.nb_bitmaps = nb;
    s->bitmaps_ext.reserved32 = 0;
    s->bitmaps_ext.bitmap_directory_offset = offset;
    s->bitmaps_ext.bitmap_directory_size = size;
    s->has_bitmaps_ext = nb > 0;
}

/* A new directory for list (empty: the extension goes), then the old one
 * is freed. */
static int update_ext_and_dir(BlockNode *bs, GPtrArray *list)
{
    Qcow2State *s = bs->opaque;
    uint64_t new_offset = 0, new_size = 0;
    uint32_t new_nb = 0;
    uint64_t old_offset = s->bitmaps_ext.bitmap_directory_offset;
    uint64_t old_size = s->bitmaps_ext.bitmap_directory_size;
    uint32_t old_nb = nb_bitmaps(s);
    bool old_has = s->has_bitmaps_ext;
    uint64_t old_autoclear = s->autoclear_features;
    int ret;

    if (list && list->len) {
        new_nb = list->len;
        if (new_nb > QCOW2_MAX_BITMAPS) {
            return -EINVAL;
        }
        ret = bitmap_list_store(bs, list, &new_offset, &new_size, false);
        if (ret < 0) {
            return ret;
        }
        ret = qcow2_cache_flush(s->l2_cache);
        if (ret >= 0) {
            ret = qcow2_cache_flush(s->refcount_cache);
        }
        if (ret < 0) {
            goto fail;
        }
        s->autoclear_features |= QCOW2_AUTOCLEAR_BITMAPS;
    } else {
        s->autoclear_features &= ~(uint64_t)QCOW2_AUTOCLEAR_BITMAPS;
    }
    set_ext(s, new_nb, new_offset, new_size);
    ret = qcow2_update_header(bs);
    if (ret < 0) {
        goto fail;
    }
    if (old_has && old_size > 0) {
        qcow2_free_clusters(bs, old_offset, old_size, QCOW2_DISCARD_OTHER);
    }
    return 0;

fail:
    if (new_offset) {
        qcow2_free_clusters(bs, new_offset, new_size, QCOW2_DISCARD_OTHER);
    }
    set_ext(s, old_nb, old_offset, old_size);
    s->has_bitmaps_ext = old_has;
    s->autoclear_features = old_autoclear;
    return ret;
}

int coroutine_fn qcow2_load_dirty_bitmaps(BlockNode *bs, int flags,
                                          bool *header_updated,
                                          GError **errp)
{
    Qcow2State *s = bs->opaque;
    bool writable = (flags & NODE_O_RDWR) != 0;
    GPtrArray *list;
    GSList *created = NULL;
    bool needs_update = false;
    GError *err = NULL;

    *header_updated = false;
    if (nb_bitmaps(s) == 0) {
        return 0;
    }
    list = bitmap_list_load(bs, s->bitmaps_ext.bitmap_directory_offset,
                            s->bitmaps_ext.bitmap_directory_size, &err);
    if (!list) {
        goto fail;
    }
    for (guint i = 0; i < list->len; i++) {
        Qcow2Bitmap *bm = list->pdata[i];
        DirtyBitmap *d;

        if ((bm->flags & BME_FLAG_IN_USE) &&
            node_find_dirty_bitmap(bs, bm->name)) {
            continue;
        }
        d = load_bitmap(bs, bm, &err);
        if (!d) {
            goto fail;
        }
        dirty_bitmap_set_persistent(d, true);
        if (bm->flags & BME_FLAG_IN_USE) {
            dirty_bitmap_set_inconsistent(d);
        } else {
            bm->flags |= BME_FLAG_IN_USE;
            needs_update = true;
        }
        if (!(bm->flags & BME_FLAG_AUTO)) {
            dirty_bitmap_set_enabled(d, false);
        }
        created = g_slist_prepend(created, d);
    }
    if (needs_update && writable) {
        int ret = update_dir_in_place(bs, list);
        if (ret < 0) {
            error_setg_errno(&err, -ret, "Can't update bitmap directory");
            goto fail;
        }
        *header_updated = true;
    }
    for (GSList *l = created; l && !writable; l = l->next) {
        dirty_bitmap_set_readonly(l->data, true);
    }
    g_slist_free(created);
    g_ptr_array_free(list, true);
    return 0;

fail:
    for (GSList *l = created; l; l = l->next) {
        dirty_bitmap_release(l->data);
    }
    g_slist_free(created);
    if (list) {
        g_ptr_array_free(list, true);
    }
    /*
     * A check (with or without repair) fails to open as qemu-img check
     * 7.2 does: the bitmap's damage is its whole report (img-check-bitmaps).
     */
    if (writable || (flags & NODE_O_CHECK)) {
        g_propagate_error(errp, err);
        return -EINVAL;
    }
    /*
     * QEMU refuses to open the image at all; reading it cannot harm the
     * bitmaps, so a read-only open goes on without them.
     */
    warn_print("%s: warning: Could not load the bitmaps of '%s': %s",
               g_get_prgname() ? g_get_prgname() : "strata",
               node_get_filename(bs), err->message);
    /* Writes would go unrecorded: no reopen read-write (qcow2.c). */
    g_free(s->bitmaps_damaged);
    s->bitmaps_damaged = g_strdup(err->message);
    g_error_free(err);
    return 0;
}

static uint64_t *store_bitmap_data(BlockNode *bs, DirtyBitmap *d,
                                   uint32_t *table_size, GError **errp)
{
    Qcow2State *s = bs->opaque;
    int64_t bm_size = dirty_bitmap_size(d);
    const char *name = dirty_bitmap_name(d);
    uint64_t n = table_entries_for(s, d);
    int64_t limit, offset;
    uint64_t *t;
    uint8_t *buf;

    if (n > BME_MAX_TABLE_SIZE || n * s->cluster_size > BME_MAX_PHYS_SIZE) {
        error_setg(errp, "Bitmap '%s' is too big", name);
        return NULL;
    }
    t = g_try_new0(uint64_t, MAX(n, 1));
    if (!t) {
        error_setg(errp, "No memory");
        return NULL;
    }
    buf = g_malloc(s->cluster_size);
    limit = dirty_bitmap_serialization_coverage(d, s->cluster_size);
    offset = 0;
    while (offset < bm_size &&
           (offset = dirty_bitmap_next_dirty(d, offset,
                                             bm_size - offset)) >= 0) {
        /* The whole cluster of bitmap holding this dirty bit. */
        uint64_t cluster = (uint64_t)(offset / limit);
        int64_t end;
        uint64_t write_size, off;
        int ret;

        offset = (int64_t)cluster * limit;
        end = MIN(bm_size, offset + limit);
        write_size = dirty_bitmap_serialization_size(d, offset, end - offset);
        ret = qcow2_alloc_clusters(bs, 1, &off);
        if (ret < 0) {
            error_setg_errno(errp, -ret, "Failed to allocate clusters for "
                             "bitmap '%s'", name);
            goto fail;
        }
        t[cluster] = off;
        dirty_bitmap_serialize_part(d, buf, offset, end - offset);
        memset(buf + write_size, 0, s->cluster_size - write_size);
        ret = qcow2_check_overlap(bs, 0, off, s->cluster_size);
        if (ret < 0) {
            error_setg_errno(errp, -ret, "Qcow2 overlap check failed");
            goto fail;
        }
        ret = child_co_pwrite(bs->file, (int64_t)off,
                              (int64_t)s->cluster_size, buf, 0);
        if (ret < 0) {
            error_setg_errno(errp, -ret, "Failed to write bitmap '%s' to "
                             "file", name);
            goto fail;
        }
        offset = end;
    }
    *table_size = (uint32_t)n;
    g_free(buf);
    return t;

fail:
    clear_bitmap_table(bs, t, (uint32_t)n);
    g_free(buf);
    g_free(t);
    return NULL;
}

static int store_bitmap(BlockNode *bs, Qcow2Bitmap *bm, GError **errp)
{
    Qcow2State *s = bs->opaque;
    const char *name = dirty_bitmap_name(bm->dbm);
    uint32_t n = 0;
    uint64_t *t = store_bitmap_data(bs, bm->dbm, &n, errp);
    uint64_t toff = 0;
    int ret;

    if (!t) {
        return -EINVAL;
    }
    ret = qcow2_alloc_clusters(bs, qcow2_size_to_clusters(s, (uint64_t)n * 8),
                               &toff);
    if (ret < 0) {
        error_setg_errno(errp, -ret, "Failed to allocate clusters for "
                         "bitmap '%s'", name);
        toff = 0;
        goto fail;
    }
    ret = qcow2_check_overlap(bs, 0, toff, (uint64_t)n * 8);
    if (ret < 0) {
        error_setg_errno(errp, -ret, "Qcow2 overlap check failed");
        goto fail;
    }
    for (uint32_t i = 0; i < n; i++) {
        t[i] = htobe64(t[i]);
    }
    ret = child_co_pwrite(bs->file, (int64_t)toff, (int64_t)n * 8, t, 0);
    for (uint32_t i = 0; i < n; i++) {
        t[i] = be64toh(t[i]);
    }
    if (ret < 0) {
        error_setg_errno(errp, -ret, "Failed to write bitmap '%s' to file",
                         name);
        goto fail;
    }
    g_free(t);
    bm->table_offset = toff;
    bm->table_size = n;
    return 0;

fail:
    clear_bitmap_table(bs, t, n);
    if (toff) {
        qcow2_free_clusters(bs, toff, (uint64_t)n * 8, QCOW2_DISCARD_OTHER);
    }
    g_free(t);
    return ret;
}

typedef struct DropTable {
    uint64_t offset;
    uint32_t size;
} DropTable;

bool coroutine_fn qcow2_store_persistent_dirty_bitmaps(BlockNode *bs,
                                                       bool release,
                                                       GError **errp)
{
    Qcow2State *s = bs->opaque;
    uint32_t new_nb = nb_bitmaps(s);
    uint64_t new_dir_size = s->has_bitmaps_ext ?
                            s->bitmaps_ext.bitmap_directory_size : 0;
    GArray *drop = g_array_new(false, false, sizeof(DropTable));
    bool need_write = false;
    GPtrArray *list;
    GHashTable *by_name;
    int ret;

    if (new_nb == 0) {
        list = g_ptr_array_new_with_free_func(bitmap_free);
    } else {
        list = bitmap_list_load(bs, s->bitmaps_ext.bitmap_directory_offset,
                                s->bitmaps_ext.bitmap_directory_size, errp);
        if (!list) {
            g_array_free(drop, true);
            return false;
        }
    }

    by_name = index_bitmaps(list);
    for (GList *l = node_dirty_bitmaps(bs); l; l = l->next) {
        DirtyBitmap *d = l->data;
        const char *name = dirty_bitmap_name(d);
        Qcow2Bitmap *bm;

        if (!dirty_bitmap_persistent(d) || dirty_bitmap_inconsistent(d)) {
            continue;
        }
        if (dirty_bitmap_readonly(d)) {
            /* Unchanged; remembered only to be released. */
            bm = g_hash_table_lookup(by_name, name);
            if (bm) {
                bm->dbm = d;
            }
            continue;
        }
        need_write = true;
        if (check_constraints(bs, name, dirty_bitmap_granularity(d),
                              errp) < 0) {
            g_prefix_error(errp, "Bitmap '%s' doesn't satisfy the "
                           "constraints: ", name);
            goto fail;
        }
        bm = g_hash_table_lookup(by_name, name);
        if (!bm) {
            if (++new_nb > QCOW2_MAX_BITMAPS) {
                error_setg(errp, "Too many persistent bitmaps");
                goto fail;
            }
            new_dir_size += dir_entry_size(strlen(name), 0);
            if (new_dir_size > QCOW2_MAX_BITMAP_DIRECTORY_SIZE) {
                error_setg(errp, "Bitmap directory is too large");
                goto fail;
            }
            bm = g_new0(Qcow2Bitmap, 1);
            bm->name = g_strdup(name);
            g_ptr_array_add(list, bm);
            g_hash_table_insert(by_name, bm->name, bm);
        } else {
            DropTable dt = { bm->table_offset, bm->table_size };
            if (!(bm->flags & BME_FLAG_IN_USE)) {
                error_setg(errp, "Bitmap '%s' already exists in the image",
                           name);
                goto fail;
            }
            g_array_append_val(drop, dt);
            bm->table_offset = 0;
            bm->table_size = 0;
        }
        bm->flags = dirty_bitmap_enabled(d) ? BME_FLAG_AUTO : 0;
        bm->granularity_bits =
            (uint8_t)__builtin_ctz(dirty_bitmap_granularity(d));
        bm->dbm = d;
    }

    if (need_write) {
        if (bs->read_only) {
            error_setg(errp, "No write access");
            goto fail;
        }
        for (guint i = 0; i < list->len; i++) {
            Qcow2Bitmap *bm = list->pdata[i];
            if (!bm->dbm || dirty_bitmap_readonly(bm->dbm)) {
                continue;
            }
            if (store_bitmap(bs, bm, errp) < 0) {
                goto fail;
            }
        }
        ret = update_ext_and_dir(bs, list);
        if (ret < 0) {
            error_setg_errno(errp, -ret, "Failed to update bitmap extension");
            goto fail;
        }
        /* The new directory is in place: the old tables can go. */
        for (guint i = 0; i < drop->len; i++) {
            DropTable *dt = &g_array_index(drop, DropTable, i);
            free_bitmap_clusters(bs, &dt->offset, &dt->size);
        }
    }

    if (release) {
        for (guint i = 0; i < list->len; i++) {
            Qcow2Bitmap *bm = list->pdata[i];
            if (bm->dbm) {
                dirty_bitmap_release(bm->dbm);
            }
        }
    }
    g_hash_table_destroy(by_name);
    g_ptr_array_free(list, true);
    g_array_free(drop, true);
    return true;

fail:
    for (guint i = 0; i < list->len; i++) {
        Qcow2Bitmap *bm = list->pdata[i];
        if (!bm->dbm || !bm->table_offset || dirty_bitmap_readonly(bm->dbm)) {
            continue;
        }
        free_bitmap_clusters(bs, &bm->table_offset, &bm->table_size);
    }
    g_hash_table_destroy(by_name);
    g_ptr_array_free(list, true);
    g_array_free(drop, true);
    return false;
}

int coroutine_fn qcow2_reopen_bitmaps_ro(BlockNode *bs, GError **errp)
{
    if (!qcow2_store_persistent_dirty_bitmaps(bs, false, errp)) {
        return -EINVAL;
    }
    for (GList *l = node_dirty_bitmaps(bs); l; l = l->next) {
        if (dirty_bitmap_persistent(l->data)) {
            dirty_bitmap_set_readonly(l->data, true);
        }
    }
    return 0;
}

int coroutine_fn qcow2_reopen_bitmaps_rw(BlockNode *bs, GError **errp)
{
    Qcow2State *s = bs->opaque;
    GPtrArray *list;
    GSList *ro = NULL;
    bool need_update = false;
    int ret = -EINVAL;

    if (nb_bitmaps(s) == 0) {
        return 0;
    }
    list = bitmap_list_load(bs, s->bitmaps_ext.bitmap_directory_offset,
                            s->bitmaps_ext.bitmap_directory_size, errp);
    if (!list) {
        return -EINVAL;
    }
    for (guint i = 0; i < list->len; i++) {
        Qcow2Bitmap *bm = list->pdata[i];
        DirtyBitmap *d = node_find_dirty_bitmap(bs, bm->name);

        if (!d) {
            error_setg(errp, "Unexpected bitmap '%s' in image '%s'",
                       bm->name, node_get_filename(bs));
            goto out;
        }
        if (!(bm->flags & BME_FLAG_IN_USE)) {
            if (!dirty_bitmap_readonly(d)) {
                error_setg(errp, "Corruption: bitmap '%s' is not marked "
                           "IN_USE in the image '%s' and not marked readonly "
                           "in RAM", bm->name, node_get_filename(bs));
                goto out;
            }
            if (dirty_bitmap_inconsistent(d)) {
                error_setg(errp, "Corruption: bitmap '%s' is inconsistent "
                           "but is not marked IN_USE in the image '%s'",
                           bm->name, node_get_filename(bs));
                goto out;
            }
            bm->flags |= BME_FLAG_IN_USE;
            need_update = true;
        } else if (dirty_bitmap_readonly(d) &&
                   !dirty_bitmap_inconsistent(d)) {
            error_setg(errp, "Corruption: bitmap '%s' is marked IN_USE in "
                       "the image '%s' but it is readonly and consistent in "
                       "RAM", bm->name, node_get_filename(bs));
            goto out;
        }
        if (dirty_bitmap_readonly(d)) {
            ro = g_slist_prepend(ro, d);
        }
    }
    if (need_update) {
        ret = update_dir_in_place(bs, list);
        if (ret < 0) {
            error_setg_errno(errp, -ret, "Cannot update bitmap directory");
            goto out;
        }
    }
    for (GSList *l = ro; l; l = l->next) {
        dirty_bitmap_set_readonly(l->data, false);
    }
    ret = 0;
out:
    g_slist_free(ro);
    g_ptr_array_free(list, true);
    return ret;
}

int coroutine_fn qcow2_truncate_bitmaps_check(BlockNode *bs, GError **errp)
{
    Qcow2State *s = bs->opaque;
    GPtrArray *list;
    int ret = 0;

    if (nb_bitmaps(s) == 0) {
        return 0;
    }
    list = bitmap_list_load(bs, s->bitmaps_ext.bitmap_directory_offset,
                            s->bitmaps_ext.bitmap_directory_size, errp);
    if (!list) {
        return -EINVAL;
    }
    for (guint i = 0; i < list->len; i++) {
        Qcow2Bitmap *bm = list->pdata[i];
        DirtyBitmap *d = node_find_dirty_bitmap(bs, bm->name);

        /* Bitmaps are resized in memory and stored at their new size. */
        if (!d) {
            error_setg(errp, "Cannot resize qcow2 with persistent bitmaps "
                       "that were not loaded into memory");
            ret = -ENOTSUP;
            break;
        }
        if (dirty_bitmap_check(d, DIRTY_BITMAP_DEFAULT, errp)) {
            ret = -ENOTSUP;
            break;
        }
    }
    g_ptr_array_free(list, true);
    return ret;
}

bool qcow2_supports_persistent_dirty_bitmap(BlockNode *bs)
{
    return ((Qcow2State *)bs->opaque)->version >= 3;
}

bool coroutine_fn qcow2_co_can_store_new_dirty_bitmap(BlockNode *bs,
                                                      const char *name,
                                                      uint32_t granularity,
                                                      GError **errp)
{
    Qcow2State *s = bs->opaque;
    uint64_t dir_size = 0;
    uint32_t nb = 0;

    if (node_find_dirty_bitmap(bs, name)) {
        error_setg(errp, "Bitmap already exists: %s", name);
        return false;
    }
    if (s->version < 3) {
        /* Without autoclear bits every open would void the bitmaps. */
        error_setg(errp, "Cannot store dirty bitmaps in qcow2 v2 files");
        goto fail;
    }
    if (check_constraints(bs, name, granularity, errp) != 0) {
        goto fail;
    }
    for (GList *l = node_dirty_bitmaps(bs); l; l = l->next) {
        if (dirty_bitmap_persistent(l->data)) {
            nb++;
            dir_size += dir_entry_size(strlen(dirty_bitmap_name(l->data)), 0);
        }
    }
    nb++;
    dir_size += dir_entry_size(strlen(name), 0);
    if (nb > QCOW2_MAX_BITMAPS) {
        error_setg(errp, "Maximum number of persistent bitmaps is already "
                   "reached");
        goto fail;
    }
    if (dir_size > QCOW2_MAX_BITMAP_DIRECTORY_SIZE) {
        error_setg(errp, "Not enough space in the bitmap directory");
        goto fail;
    }
    return true;

fail:
    g_prefix_error(errp, "Can't make bitmap '%s' persistent in '%s': ", name,
                   node_get_name(bs));
    return false;
}

int coroutine_fn qcow2_co_remove_persistent_dirty_bitmap(BlockNode *bs,
                                                         const char *name,
                                                         GError **errp)
{
    Qcow2State *s = bs->opaque;
    GPtrArray *list;
    Qcow2Bitmap *bm;
    int ret = 0;

    if (nb_bitmaps(s) == 0) {
        return 0;  /* never stored yet: nothing to remove */
    }
    co_mutex_lock(&s->lock);
    list = bitmap_list_load(bs, s->bitmaps_ext.bitmap_directory_offset,
                            s->bitmaps_ext.bitmap_directory_size, errp);
    if (!list) {
        co_mutex_unlock(&s->lock);
        return -EIO;
    }
    bm = find_bitmap(list, name);
    if (bm) {
        uint64_t toff = bm->table_offset;
        uint32_t tsize = bm->table_size;

        g_ptr_array_remove(list, bm);
        ret = update_ext_and_dir(bs, list);
        if (ret < 0) {
            error_setg_errno(errp, -ret, "Failed to update bitmap extension");
        } else {
            free_bitmap_clusters(bs, &toff, &tsize);
        }
    }
    co_mutex_unlock(&s->lock);
    g_ptr_array_free(list, true);
    return ret;
}

typedef struct InfoCo {
    BlockNode *bs;
    GPtrArray *list;
} InfoCo;

static void coroutine_fn info_co(void *opaque)
{
    InfoCo *i = opaque;
    Qcow2State *s = i->bs->opaque;

    i->list = bitmap_list_load(i->bs, s->bitmaps_ext.bitmap_directory_offset,
                               s->bitmaps_ext.bitmap_directory_size, NULL);
}

json_t *qcow2_bitmap_info(BlockNode *bs)
{
    Qcow2State *s = bs->opaque;
    InfoCo ic = { bs, NULL };
    GPtrArray *list;
    json_t *arr;

    if (nb_bitmaps(s) == 0) {
        return NULL;
    }
    /* Read from the image, as QEMU: the flags on disk are what is shown. */
    if (in_coroutine()) {
        info_co(&ic);
    } else {
        co_run_sync(info_co, &ic);
    }
    list = ic.list;
    if (!list) {
        return NULL;
    }
    arr = json_array();
    for (guint i = 0; i < list->len; i++) {
        Qcow2Bitmap *bm = list->pdata[i];
        json_t *o = json_object();
        json_t *flags = json_array();

        if (bm->flags & BME_FLAG_IN_USE) {
            json_array_append_new(flags, json_string("in-use"));
        }
        if (bm->flags & BME_FLAG_AUTO) {
            json_array_append_new(flags, json_string("auto"));
        }
        json_object_set_new(o, "flags", flags);
        json_object_set_new(o, "name", json_string(bm->name));
        json_object_set_new(o, "granularity",
                            json_integer(1ll << bm->granularity_bits));
        json_array_append_new(arr, o);
    }
    g_ptr_array_free(list, true);
    return arr;
}

uint64_t dirty_bitmaps_qcow2_size(BlockNode *in_bs, uint64_t cluster_size)
{
    uint64_t total = 0, dir = 0;

    for (GList *l = node_dirty_bitmaps(in_bs); l; l = l->next) {
        DirtyBitmap *d = l->data;
        uint64_t bytes, clusters;

        if (!dirty_bitmap_persistent(d)) {
            continue;
        }
        bytes = (uint64_t)bitmap_bytes_needed(dirty_bitmap_size(d),
                                              dirty_bitmap_granularity(d));
        clusters = (bytes + cluster_size - 1) / cluster_size;
        /* Every data cluster, as if the whole bitmap were dirty. */
        total += clusters * cluster_size;
        total += (clusters * 8 + cluster_size - 1) / cluster_size *
                 cluster_size;
        dir += dir_entry_size(strlen(dirty_bitmap_name(d)), 0);
    }
    return total + (dir + cluster_size - 1) / cluster_size * cluster_size;
}
