/*
 * qcow2 image layout at creation, byte for byte as QEMU 7.2 lays it out.
 *
 * QEMU writes a bare header and a one-block refcount table, then opens the
 * result with its full driver and lets the driver's allocator give the image
 * its size: an L1 table, and for preallocation the L2 tables, refcount
 * blocks and data clusters.  The bytes that end up on disk are what that
 * allocator's first-fit policy produces, including the stale contents of a
 * refcount table it frees and hands out again.  So instead of going through
 * a driver, this file replays the same policy on a model of the image
 * (Q2Create) and issues the writes and truncations it implies:
 *
 *   alloc_noref / alloc_clusters / alloc_clusters_at   first-fit search from
 *       free_index, refcount update with the -EAGAIN restart (and undo) when
 *       a new refcount block had to be placed first (update_refcount,
 *       refblock_get);
 *   refcount_area     self-describing refcount blocks and a new table placed
 *       past the end of the file when the table is full, or for falloc;
 *   grow_l1, l2_get   the L1 table and on-demand L2 tables;
 *   prealloc_metadata QEMU's allocation loop for preallocation=metadata
 *       (and for every mode with an external data file), with its request
 *       size and L2-table limits and the copy-on-write of an unaligned tail;
 *   prealloc_data     the falloc/full path: refcount area, data area, L2s.
 *
 * Invariants.  Refcount blocks and L2 tables are never freed while an image
 * is created, so they live in memory and are written once their content is
 * final; everything else (refcount table entries and tables, L1 sectors,
 * copy-on-write tails, truncations) is done when the model does it, because
 * a freed refcount table may later be overwritten, or not, and either way
 * its bytes are part of the result.  s->len and s->data_len follow the file
 * lengths QEMU's file nodes would report at each step; decisions use them,
 * the real files only have to end up equal.
 */
#include <errno.h>
#include <inttypes.h>
#include <limits.h>
#include <string.h>
#include "strata/backend.h"
#include "strata/block-driver.h"
#include "qcow2-format.h"
#include "qcow2-create.h"

#define MAX_CLUSTER_OFFSET ((1ull << 56) - 1)      /* an L2 entry's range */
#define MAX_REQUEST_BYTES ((uint64_t)INT_MAX & ~511ull)
#define MAX_IMAGE_LENGTH ((int64_t)(INT64_MAX & ~(int64_t)(GiB - 1)))
#define INV_OFFSET UINT64_MAX
/* New refcount blocks one refcount_area() may hold in memory. */
#define MAX_MODEL_REFBLOCK_BYTES (1ull * GiB)

/* ---- The image model ---- */

typedef struct Q2Create {
    BlockBackend *blk;          /* the image file */
    BlockBackend *data_blk;     /* the external data file, or NULL */
    int64_t len, data_len;      /* lengths as QEMU's file nodes see them */
    unsigned cluster_bits;
    uint64_t cs;
    unsigned refcount_order;
    unsigned rb_bits;           /* log2 of the refcounts in one block */
    uint64_t refcount_max;
    unsigned l2_bits;           /* log2 of the entries in one L2 table */
    unsigned l2e_size;          /* 8, or 16 with extended L2 entries */
    uint64_t sc_size;           /* subcluster size (cs without extl2) */

    uint64_t *reftable;         /* the current refcount table ... */
    uint8_t **refblocks;        /* ... and the blocks it points to */
    uint64_t rt_size, rt_offset, rt_max_index;
    uint64_t free_index;        /* first cluster the search starts at */

    uint64_t *l1;
    uint64_t l1_size, l1_offset;
    GHashTable *l2;             /* L1 index -> L2 table not yet written */
} Q2Create;

static uint64_t rc_read(const Q2Create *s, const uint8_t *b, uint64_t j)
{
    unsigned bits = 1u << s->refcount_order;
    uint64_t v = 0;

    if (bits < 8) {
        return (b[j * bits / 8] >> (j * bits % 8)) & ((1u << bits) - 1);
    }
    for (unsigned i = 0; i < bits / 8; i++) {
        v = (v << 8) | b[j * (bits / 8) + i];
    }
    return v;
}

static void rc_write(const Q2Create *s, uint8_t *b, uint64_t j, uint64_t v)
{
    unsigned bits = 1u << s->refcount_order;

    if (bits < 8) {
        unsigned shift = j * bits % 8;
        uint8_t mask = ((1u << bits) - 1) << shift;
        b[j * bits / 8] = (b[j * bits / 8] & ~mask) | (uint8_t)(v << shift);
        return;
    }
    for (unsigned i = bits / 8; i > 0; i--) {
        b[j * (bits / 8) + i - 1] = (uint8_t)v;
        v >>= 8;
    }
}

static uint64_t refcount(const Q2Create *s, uint64_t cluster)
{
    uint64_t ti = cluster >> s->rb_bits;

    if (ti >= s->rt_size || !s->reftable[ti]) {
        return 0;
    }
    return rc_read(s, s->refblocks[ti], cluster & ((1ull << s->rb_bits) - 1));
}

static void note_write(int64_t *len, uint64_t offset, uint64_t bytes)
{
    if ((int64_t)(offset + bytes) > *len) {
        *len = (int64_t)(offset + bytes);
    }
}

static int coroutine_fn write_at(BlockBackend *blk, int64_t *len,
                                 uint64_t offset, const void *buf,
                                 uint64_t bytes)
{
    IOVec v;
    int ret;

    iovec_init_buf(&v, (void *)buf, bytes);
    ret = blk_co_pwritev(blk, (int64_t)offset, (int64_t)bytes, &v, 0);
    iovec_destroy(&v);
    if (ret < 0) {
        return ret;
    }
    note_write(len, offset, bytes);
    return 0;
}

static int coroutine_fn write_table(Q2Create *s, uint64_t offset,
                                    const uint64_t *table, uint64_t entries)
{
    uint64_t *be = g_new(uint64_t, entries ? entries : 1);
    int ret;

    for (uint64_t i = 0; i < entries; i++) {
        be[i] = htobe64(table[i]);
    }
    ret = write_at(s->blk, &s->len, offset, be, entries * 8);
    g_free(be);
    return ret;
}

/* The file is extended the way QEMU's truncate of a file node does it. */
static int coroutine_fn grow_file(BlockBackend *blk, int64_t *len,
                                  uint64_t size, PreallocMode mode,
                                  GError **errp)
{
    int ret = blk_co_truncate(blk, (int64_t)size, false, mode, errp);

    if (ret >= 0) {
        note_write(len, size, 0);
    }
    return ret;
}

/* qcow2_refcount_metadata_size(): refcount blocks and table for n clusters. */
static uint64_t refcount_metadata(const Q2Create *s, uint64_t clusters,
                                  bool generous, uint64_t *blocks_out)
{
    uint64_t per_table_cluster = s->cs / 8;
    uint64_t per_block = 1ull << s->rb_bits;
    uint64_t table = 0, blocks = 0, n = 0, last;

    do {
        last = n;
        blocks = DIV_ROUND_UP(clusters + table + blocks, per_block);
        table = DIV_ROUND_UP(blocks, per_table_cluster);
        n = clusters + blocks + table;
        if (n == last && generous) {
            clusters += DIV_ROUND_UP(table, 2);
            n = 0;
            generous = false;
        }
    } while (n != last);
    *blocks_out = blocks;
    return (blocks + table) * s->cs;
}

static int coroutine_fn update_refcount(Q2Create *s, uint64_t offset,
                                        uint64_t length, bool decrease);

/* First fit from free_index, refcounts untouched (alloc_clusters_noref). */
static int64_t alloc_noref(Q2Create *s, uint64_t size, uint64_t max)
{
    uint64_t n = DIV_ROUND_UP(size, s->cs);

retry:
    for (uint64_t i = 0; i < n; i++) {
        if (refcount(s, s->free_index++)) {
            goto retry;
        }
    }
    if (s->free_index - 1 > (max >> s->cluster_bits)) {
        return -EFBIG;
    }
    return (int64_t)((s->free_index - n) << s->cluster_bits);
}

/*
 * Starting at start (the end of the used part of the file), lay out a new
 * refcount table and the refcount blocks that cover themselves, the table
 * and `additional` clusters after it (qcow2_refcount_area()).  A block just
 * allocated for table index new_index may be handed in (owned from then on).
 * Returns where the additional clusters start, or -errno.
 */
static int64_t coroutine_fn refcount_area(Q2Create *s, uint64_t start,
                                          uint64_t additional, bool exact,
                                          uint64_t new_index,
                                          uint64_t new_offset,
                                          uint8_t *new_block)
{
    uint64_t per_block = 1ull << s->rb_bits;
    uint64_t total, table_size, table_clusters, area_index, extra = 0;
    uint64_t table_offset, end, block_offset, copy;
    uint64_t *table;
    uint8_t **blocks;
    int ret;

    refcount_metadata(s, start / s->cs + additional, !exact, &total);
    /* QEMU compares these counts with the table's byte limit: so do we. */
    if (total > QCOW2_MAX_REFTABLE_BYTES) {
        g_free(new_block);
        return -EFBIG;
    }
    area_index = (start / s->cs) / per_block;
    table_size = exact ? total : total + DIV_ROUND_UP(total, 2);
    table_size = ROUND_UP(table_size, s->cs / 8);
    table_clusters = table_size * 8 / s->cs;
    if (table_size > QCOW2_MAX_REFTABLE_BYTES) {
        g_free(new_block);
        return -EFBIG;
    }

    if (new_offset && new_index >= total) {
        g_free(new_block);
        return -EIO;                /* QEMU asserts this cannot happen */
    }
    table = g_new0(uint64_t, table_size);
    blocks = g_new0(uint8_t *, table_size);
    copy = table_size > s->rt_max_index ? s->rt_max_index + 1 : table_size;
    memcpy(table, s->reftable, copy * 8);
    memcpy(blocks, s->refblocks, copy * sizeof(*blocks));
    if (new_offset) {
        table[new_index] = new_offset;
        blocks[new_index] = new_block;
    }
    for (uint64_t i = area_index; i < total; i++) {
        extra += !table[i];
    }
    if (extra > MAX_MODEL_REFBLOCK_BYTES / s->cs) {
        /* QEMU streams these through its cache; we would hold them all. */
        ret = -ENOMEM;
        goto fail;
    }
    table_offset = start + extra * s->cs;
    end = table_offset + table_clusters * s->cs;

    block_offset = start;
    for (uint64_t i = area_index; i < total; i++) {
        uint64_t first = i * per_block * s->cs;
        if (!table[i]) {
            blocks[i] = g_malloc0(s->cs);
            table[i] = block_offset;
            block_offset += s->cs;
        }
        if (first < end) {
            uint64_t j = first < start ? (start - first) / s->cs : 0;
            uint64_t stop = MIN((end - first) / s->cs, per_block);
            for (; j < stop; j++) {
                if (rc_read(s, blocks[i], j)) {
                    ret = -EIO;     /* QEMU asserts the area is free */
                    goto fail;
                }
                rc_write(s, blocks[i], j, 1);
            }
        }
    }
    note_write(&s->len, start, block_offset - start);
    /*
     * As QEMU: the blocks, then the table, then the header's pointer to
     * it, so that the file on disk stays a consistent image throughout
     * (the header was written first; the final contents follow at the end).
     */
    for (uint64_t i = 0; i < table_size; i++) {
        if (table[i] && blocks[i]) {
            ret = write_at(s->blk, &s->len, table[i], blocks[i], s->cs);
            if (ret < 0) {
                goto fail;
            }
        }
    }
    ret = write_table(s, table_offset, table, table_size);
    if (ret >= 0) {
        struct __attribute__((packed)) {
            uint64_t offset;
            uint32_t clusters;
        } h = { htobe64(table_offset), htobe32((uint32_t)table_clusters) };
        ret = write_at(s->blk, &s->len,
                       offsetof(Qcow2DiskHeader, refcount_table_offset), &h,
                       sizeof(h));
    }
    if (ret < 0) {
        goto fail;
    }

    uint64_t old_offset = s->rt_offset, old_size = s->rt_size;
    for (uint64_t i = copy; i < s->rt_size; i++) {
        g_free(s->refblocks[i]);    /* beyond a shrunk table: dropped */
    }
    g_free(s->reftable);
    g_free(s->refblocks);
    s->reftable = table;
    s->refblocks = blocks;
    s->rt_size = table_size;
    s->rt_offset = table_offset;
    s->rt_max_index = 0;
    for (uint64_t i = table_size; i-- > 0;) {
        if (table[i]) {
            s->rt_max_index = i;
            break;
        }
    }
    /* QEMU only reports a failure to free the old table on stderr. */
    (void)update_refcount(s, old_offset, old_size * 8, true);
    return (int64_t)end;

fail:
    for (uint64_t i = 0; i < table_size; i++) {
        if (i >= copy || blocks[i] != s->refblocks[i]) {
            g_free(blocks[i]);
        }
    }
    g_free(table);
    g_free(blocks);
    return ret;
}

/*
 * The refcount block for cluster, allocated if missing
 * (alloc_refcount_block()).  -EAGAIN tells the caller that metadata was
 * placed and its search for free clusters must start over.
 */
static int coroutine_fn refblock_get(Q2Create *s, uint64_t cluster,
                                     uint8_t **block)
{
    uint64_t ti = cluster >> s->rb_bits;
    uint64_t per_block = 1ull << s->rb_bits;
    uint8_t *buf;
    int64_t nb;
    int ret;

    *block = NULL;
    if (ti < s->rt_size && s->reftable[ti]) {
        *block = s->refblocks[ti];
        return 0;
    }
    nb = alloc_noref(s, s->cs, INT64_MAX);
    if (nb < 0) {
        return (int)nb;
    }
    if (nb == 0) {
        return -EIO;
    }
    if (((uint64_t)nb >> (s->cluster_bits + s->rb_bits)) == ti) {
        /* The block describes itself. */
        buf = g_malloc0(s->cs);
        rc_write(s, buf, ((uint64_t)nb >> s->cluster_bits) & (per_block - 1),
                 1);
    } else {
        ret = update_refcount(s, (uint64_t)nb, s->cs, false);
        if (ret < 0) {
            return ret;
        }
        buf = g_malloc0(s->cs);
    }
    note_write(&s->len, (uint64_t)nb, s->cs);

    if (ti < s->rt_size) {
        uint64_t be = htobe64((uint64_t)nb);
        /* The block is on disk before the table points at it (QEMU too). */
        ret = write_at(s->blk, &s->len, (uint64_t)nb, buf, s->cs);
        if (ret >= 0) {
            ret = write_at(s->blk, &s->len, s->rt_offset + ti * 8, &be, 8);
        }
        if (ret < 0) {
            g_free(buf);
            return ret;
        }
        s->reftable[ti] = (uint64_t)nb;
        s->refblocks[ti] = buf;
        s->rt_max_index = MAX(s->rt_max_index, ti);
        return -EAGAIN;
    }

    /* The table is full: a new one goes past the clusters in use. */
    uint64_t used = MAX(cluster + 1, ((uint64_t)nb >> s->cluster_bits) + 1);
    uint64_t meta = DIV_ROUND_UP(used, per_block) * per_block * s->cs;
    int64_t r = refcount_area(s, meta, 0, false, ti, (uint64_t)nb, buf);
    return r < 0 ? (int)r : -EAGAIN;
}

static int coroutine_fn update_refcount(Q2Create *s, uint64_t offset,
                                        uint64_t length, bool decrease)
{
    uint64_t start, last, co;
    int64_t old_ti = -1;
    uint8_t *block = NULL;
    int ret = 0;

    if (length == 0) {
        return 0;
    }
    start = offset & ~(s->cs - 1);
    last = (offset + length - 1) & ~(s->cs - 1);
    for (co = start; co <= last; co += s->cs) {
        uint64_t cluster = co >> s->cluster_bits;
        int64_t ti = (int64_t)(cluster >> s->rb_bits);
        uint64_t j = cluster & ((1ull << s->rb_bits) - 1), rc;

        if (ti != old_ti) {
            ret = refblock_get(s, cluster, &block);
            if (ret == -EAGAIN && s->free_index > (start >> s->cluster_bits)) {
                s->free_index = start >> s->cluster_bits;
            }
            if (ret < 0) {
                goto fail;
            }
        }
        old_ti = ti;
        rc = rc_read(s, block, j);
        if (decrease ? rc == 0 : rc == s->refcount_max) {
            ret = -EINVAL;
            goto fail;
        }
        rc = decrease ? rc - 1 : rc + 1;
        if (rc == 0 && cluster < s->free_index) {
            s->free_index = cluster;
        }
        rc_write(s, block, j, rc);
    }
    return 0;

fail:
    /* Undo what was done: QEMU retries the whole search after -EAGAIN. */
    if (co > offset) {
        (void)update_refcount(s, offset, co - offset, !decrease);
    }
    return ret;
}

static int64_t coroutine_fn alloc_clusters(Q2Create *s, uint64_t size)
{
    int64_t offset;
    int ret;

    do {
        offset = alloc_noref(s, size, MAX_CLUSTER_OFFSET);
        if (offset < 0) {
            return offset;
        }
        ret = update_refcount(s, (uint64_t)offset, size, false);
    } while (ret == -EAGAIN);
    return ret < 0 ? ret : offset;
}

/* How many of n clusters at offset could be taken (qcow2_alloc_clusters_at). */
static int64_t coroutine_fn alloc_clusters_at(Q2Create *s, uint64_t offset,
                                              uint64_t n)
{
    uint64_t i;
    int ret;

    if (n == 0) {
        return 0;
    }
    do {
        uint64_t cluster = offset >> s->cluster_bits;
        for (i = 0; i < n; i++) {
            if (refcount(s, cluster++)) {
                break;
            }
        }
        ret = update_refcount(s, offset, i << s->cluster_bits, false);
    } while (ret == -EAGAIN);
    return ret < 0 ? ret : (int64_t)i;
}

/* ---- L1 and L2 tables ---- */

/* Exactly min_size entries, placed first fit (qcow2_grow_l1_table()). */
static int coroutine_fn grow_l1(Q2Create *s, uint64_t min_size)
{
    uint64_t *table;
    int64_t offset;
    int ret;

    if (min_size <= s->l1_size) {
        return 0;
    }
    if (min_size > INT_MAX / 8 || min_size > QCOW2_MAX_L1_BYTES / 8) {
        return -EFBIG;
    }
    offset = alloc_clusters(s, min_size * 8);
    if (offset < 0) {
        return (int)offset;
    }
    table = g_new0(uint64_t, min_size);
    if (s->l1_size) {
        memcpy(table, s->l1, s->l1_size * 8);
    }
    ret = write_table(s, (uint64_t)offset, table, min_size);
    if (ret < 0) {
        g_free(table);
        return ret;
    }
    (void)update_refcount(s, s->l1_offset, s->l1_size * 8, true);
    g_free(s->l1);
    s->l1 = table;
    s->l1_size = min_size;
    s->l1_offset = (uint64_t)offset;
    return 0;
}

/*
 * The L2 table of L1 entry index, allocated if missing (l2_allocate()):
 * QEMU writes the empty table and then the 512-byte L1 sector holding the
 * new entry, which may be what extends the file.
 */
static int coroutine_fn l2_get(Q2Create *s, uint64_t index, uint8_t **table)
{
    uint64_t sector[64] = { 0 };
    uint64_t first = index & ~63ull;
    int64_t offset;

    if (index >= s->l1_size) {
        return -EIO;
    }
    if (s->l1[index] & L1E_OFFSET_MASK) {
        *table = g_hash_table_lookup(s->l2, GSIZE_TO_POINTER(index + 1));
        return *table ? 0 : -EIO;
    }
    offset = alloc_clusters(s, s->cs);
    if (offset <= 0) {
        return offset ? (int)offset : -EIO;
    }
    *table = g_malloc0(s->cs);
    g_hash_table_insert(s->l2, GSIZE_TO_POINTER(index + 1), *table);
    note_write(&s->len, (uint64_t)offset, s->cs);
    s->l1[index] = (uint64_t)offset | QCOW_OFLAG_COPIED;
    for (uint64_t i = 0; i < 64 && first + i < s->l1_size; i++) {
        sector[i] = htobe64(s->l1[first + i]);
    }
    return write_at(s->blk, &s->len, s->l1_offset + first * 8, sector,
                    sizeof(sector));
}

/* Write the L2 tables of L1 entries below `below` (their content is final). */
static int coroutine_fn flush_l2(Q2Create *s, uint64_t below)
{
    GHashTableIter it;
    gpointer key, table;
    int ret = 0;

    g_hash_table_iter_init(&it, s->l2);
    while (g_hash_table_iter_next(&it, &key, &table)) {
        uint64_t index = GPOINTER_TO_SIZE(key) - 1;
        if (index < below) {
            if (ret == 0) {
                ret = write_at(s->blk, &s->len, s->l1[index] & L1E_OFFSET_MASK,
                               table, s->cs);
            }
            g_hash_table_iter_remove(&it);
        }
    }
    return ret;
}

/* Point n guest clusters from guest on at host clusters from host on. */
static void link_l2(Q2Create *s, uint8_t *table, uint64_t guest,
                    uint64_t host, uint64_t n)
{
    uint64_t first = (guest >> s->cluster_bits) & ((1ull << s->l2_bits) - 1);

    for (uint64_t i = 0; i < n; i++) {
        uint64_t e = htobe64((host + (i << s->cluster_bits)) |
                             QCOW_OFLAG_COPIED);
        /* Preallocated: the subcluster bitmap stays 0 (nothing written). */
        memcpy(table + (first + i) * s->l2e_size, &e, 8);
    }
}

/* ---- Preallocation ---- */

/* One allocation of a request (QCowL2Meta): its clusters and COW tail. */
typedef struct Q2Meta {
    uint64_t guest, host, n;
    uint64_t cow_offset, cow_bytes;
} Q2Meta;

/*
 * qcow2_alloc_host_offset() for unallocated guest clusters: as many
 * clusters as can be allocated contiguously in the file, one L2 table at a
 * time; *bytes is shortened to what was allocated.
 */
static int coroutine_fn alloc_host_offset(Q2Create *s, uint64_t offset,
                                          uint64_t *bytes, uint64_t *host,
                                          GArray *metas)
{
    uint64_t start = offset, remaining = *bytes, cur = 0;
    uint64_t cluster_offset = INV_OFFSET;
    uint64_t entries = 1ull << s->l2_bits;

    *host = INV_OFFSET;
    for (;;) {
        uint64_t oic, n, alloc, avail;
        uint8_t *table;
        int ret;

        if (*host == INV_OFFSET && cluster_offset != INV_OFFSET) {
            *host = cluster_offset;
        }
        start += cur;
        remaining -= cur;
        if (cluster_offset != INV_OFFSET) {
            cluster_offset += cur;
        }
        if (remaining == 0) {
            break;
        }
        cur = remaining;
        /* handle_copied() looks the L2 table up first, allocating it. */
        ret = l2_get(s, start >> (s->cluster_bits + s->l2_bits), &table);
        if (ret < 0) {
            return ret;
        }
        oic = start & (s->cs - 1);
        n = DIV_ROUND_UP(oic + cur, s->cs);
        n = MIN(n, entries - ((start >> s->cluster_bits) & (entries - 1)));
        n = MIN(n, MAX_REQUEST_BYTES >> s->cluster_bits);
        if (s->data_blk) {
            alloc = start & ~(s->cs - 1);   /* the data file maps 1:1 */
        } else if (cluster_offset == INV_OFFSET) {
            int64_t r = alloc_clusters(s, n << s->cluster_bits);
            if (r < 0) {
                return (int)r;
            }
            alloc = (uint64_t)r;
        } else {
            int64_t r;
            alloc = cluster_offset & ~(s->cs - 1);
            r = alloc_clusters_at(s, alloc, n);
            if (r < 0) {
                return (int)r;
            }
            n = (uint64_t)r;
        }
        if (n == 0) {
            break;      /* cannot continue contiguously: the caller loops */
        }
        avail = n << s->cluster_bits;
        cluster_offset = alloc + oic;
        cur = MIN(cur, MIN(cur + oic, avail) - oic);

        Q2Meta m = {
            .guest = start & ~(s->cs - 1),
            .host = alloc,
            .n = DIV_ROUND_UP(oic + cur, s->cs),
            .cow_offset = oic + cur,
            .cow_bytes = ROUND_UP(oic + cur, s->sc_size) - (oic + cur),
        };
        g_array_append_val(metas, m);
    }
    *bytes -= remaining;
    return 0;
}

/*
 * preallocate_co(): map every guest cluster, data clusters allocated but not
 * written, except the copy-on-write of an unaligned last cluster.  Used for
 * preallocation=metadata and, with an external data file, for all modes.
 */
static int coroutine_fn prealloc_metadata(Q2Create *s, uint64_t size,
                                          PreallocMode mode, GError **errp)
{
    BlockBackend *target = s->data_blk ? s->data_blk : s->blk;
    int64_t *target_len = s->data_blk ? &s->data_len : &s->len;
    GArray *metas = g_array_new(false, false, sizeof(Q2Meta));
    uint64_t offset = 0, bytes = size, host = 0, cur = 0;
    uint8_t *zeroes = NULL;
    int ret = 0;

    while (bytes) {
        cur = MIN(bytes, (uint64_t)INT_MAX & ~(s->cs - 1));
        g_array_set_size(metas, 0);
        ret = alloc_host_offset(s, offset, &cur, &host, metas);
        if (ret < 0) {
            error_setg_errno(errp, -ret, "Allocating clusters failed");
            goto out;
        }
        /* QEMU links the allocations last first. */
        for (guint i = metas->len; i-- > 0;) {
            Q2Meta *m = &g_array_index(metas, Q2Meta, i);
            uint8_t *table;
            if (m->cow_bytes) {
                zeroes = g_realloc(zeroes, m->cow_bytes);
                memset(zeroes, 0, m->cow_bytes);
                ret = write_at(target, target_len, m->host + m->cow_offset,
                               zeroes, m->cow_bytes);
            }
            if (ret == 0) {
                ret = l2_get(s, m->guest >> (s->cluster_bits + s->l2_bits),
                             &table);
            }
            if (ret < 0) {
                error_setg_errno(errp, -ret, "Mapping clusters failed");
                goto out;
            }
            link_l2(s, table, m->guest, m->host, m->n);
        }
        bytes -= cur;
        offset += cur;
        ret = flush_l2(s, offset >> (s->cluster_bits + s->l2_bits));
        if (ret < 0) {
            error_setg_errno(errp, -ret, "Mapping clusters failed");
            goto out;
        }
    }
    /* The file must reach the last allocated byte. */
    if (size && host + cur > (uint64_t)*target_len) {
        ret = grow_file(target, target_len, host + cur,
                        mode == PREALLOC_MODE_METADATA ? PREALLOC_MODE_OFF : mode, errp);
    }
out:
    g_free(zeroes);
    g_array_free(metas, true);
    return ret;
}

/*
 * qcow2_co_truncate() for falloc/full without a data file: new refcount
 * structures past the last used cluster covering the data, then the data
 * area itself (allocated by the file), then the L2 tables, first fit.
 */
static int coroutine_fn prealloc_data(Q2Create *s, uint64_t size,
                                      PreallocMode mode, GError **errp)
{
    uint64_t entries = 1ull << s->l2_bits;
    uint64_t n_data = ROUND_UP(size, s->cs) >> s->cluster_bits;
    uint64_t n_l2 = DIV_ROUND_UP(n_data, s->cs / s->l2e_size) + 1;
    uint64_t guest = 0, host, old_size;
    int64_t last, start, got;
    int ret;

    for (last = DIV_ROUND_UP(s->len, s->cs) - 1; last >= 0; last--) {
        if (refcount(s, (uint64_t)last)) {
            break;
        }
    }
    old_size = last >= 0 ? ((uint64_t)last + 1) * s->cs
                         : ROUND_UP((uint64_t)s->len, s->cs);
    start = refcount_area(s, old_size, n_data + n_l2, true, 0, 0, NULL);
    if (start < 0) {
        error_setg_errno(errp, (int)-start,
                         "Failed to resize refcount structures");
        return (int)start;
    }
    got = alloc_clusters_at(s, (uint64_t)start, n_data);
    if (got < 0 || (uint64_t)got != n_data) {
        ret = got < 0 ? (int)got : -EIO;
        error_setg_errno(errp, -ret, "Failed to allocate data clusters");
        return ret;
    }
    /*
     * QEMU writes the new refcount structures synchronously, so they are
     * on disk, placed by the file system, before the data area is
     * allocated; the file's extents (and the space a later write over the
     * area takes, iotest 125) then come out as QEMU's.
     */
    ret = blk_co_flush(s->blk);
    if (ret >= 0) {
        ret = grow_file(s->blk, &s->len,
                        (uint64_t)start + (n_data << s->cluster_bits), mode,
                        errp);
    } else {
        error_setg_errno(errp, -ret, "Could not flush the image");
    }
    if (ret < 0) {
        error_prefix(errp, "Failed to resize underlying file: ");
        return ret;
    }
    host = (uint64_t)start;
    while (n_data) {
        uint64_t index = (guest >> s->cluster_bits) & (entries - 1);
        uint64_t n = MIN(n_data, entries - index);
        uint8_t *table;
        ret = l2_get(s, guest >> (s->cluster_bits + s->l2_bits), &table);
        if (ret < 0) {
            error_setg_errno(errp, -ret, "Failed to update L2 tables");
            return ret;
        }
        link_l2(s, table, guest, host, n);
        guest += n << s->cluster_bits;
        host += n << s->cluster_bits;
        n_data -= n;
        ret = flush_l2(s, guest >> (s->cluster_bits + s->l2_bits));
        if (ret < 0) {
            error_setg_errno(errp, -ret, "Failed to update L2 tables");
            return ret;
        }
    }
    return 0;
}

/* ---- Header ---- */

/*
 * The header cluster as the driver writes it once the image is open
 * (qcow2_header_layout()): false when it does not fit in one cluster.
 */
static bool build_header(const Q2Create *s, const Qcow2CreateParams *o,
                         bool with_backing, uint8_t *buf)
{
    Qcow2HeaderFields f = {
        .version = o->version,
        .cluster_bits = s->cluster_bits,
        .size = o->size,
        .l1_size = (uint32_t)s->l1_size,
        .l1_table_offset = s->l1_offset,
        .refcount_table_offset = s->rt_offset,
        .refcount_table_clusters =
            (uint32_t)(s->rt_size >> (s->cluster_bits - 3)),
        .incompatible_features =
            (o->data_name ? QCOW2_INCOMPAT_DATA_FILE : 0) |
            (o->ctype ? QCOW2_INCOMPAT_COMPRESSION : 0) |
            (o->extl2 ? QCOW2_INCOMPAT_EXTL2 : 0),
        .compatible_features = o->lazy ? QCOW2_COMPAT_LAZY_REFCOUNTS : 0,
        .autoclear_features = o->data_raw ? QCOW2_AUTOCLEAR_DATA_FILE_RAW : 0,
        .refcount_order = s->refcount_order,
        .compression_type = (uint8_t)o->ctype,
        .backing_file = with_backing ? o->backing_file : NULL,
        .backing_format = with_backing ? o->backing_fmt : NULL,
        .data_file = o->data_name,
    };

    return qcow2_header_layout(&f, buf, s->cs) == 0;
}

/* ---- The image ---- */

static void q2create_free(Q2Create *s)
{
    for (uint64_t i = 0; i < s->rt_size; i++) {
        g_free(s->refblocks[i]);
    }
    g_free(s->refblocks);
    g_free(s->reftable);
    g_free(s->l1);
    if (s->l2) {
        g_hash_table_destroy(s->l2);
    }
}

/*
 * qcow2_co_create() from the bare header on: the image as QEMU's driver
 * leaves it after opening it, taking clusters 0-2, writing the full
 * header, truncating to the size with the preallocation mode, and setting
 * the backing file.
 */
static int coroutine_fn build_image(Q2Create *s, const Qcow2CreateParams *o,
                                    GError **errp)
{
    g_autofree uint8_t *buf = NULL;
    uint64_t size = o->size;
    uint64_t be;
    int64_t r;
    int ret;

    s->cluster_bits = (unsigned)__builtin_ctzll(o->cluster_size);
    s->cs = o->cluster_size;
    s->refcount_order = (unsigned)__builtin_ctzll((uint64_t)o->refcount_bits);
    s->rb_bits = s->cluster_bits + 3 - s->refcount_order;
    s->refcount_max = s->refcount_order == 6 ? UINT64_MAX :
                      (1ull << (1u << s->refcount_order)) - 1;
    s->l2e_size = o->extl2 ? 16 : 8;
    s->l2_bits = s->cluster_bits - (o->extl2 ? 4 : 3);
    s->sc_size = o->extl2 ? s->cs / QCOW2_SUBCLUSTERS : s->cs;
    s->l2 = g_hash_table_new_full(g_direct_hash, g_direct_equal, NULL, g_free);

    /*
     * The bare header first, as QEMU writes it (an empty image: size 0, no
     * L1 table), with a refcount table and a block that already count
     * these three clusters.  Whatever interrupts the creation from here on
     * leaves a file that is recognisably qcow2 and at worst leaks: the
     * header is rewritten last, and the clusters written until then are
     * not referenced by it.  The final bytes are the same either way.
     */
    s->rt_size = s->cs / 8;
    s->rt_offset = s->cs;
    buf = g_malloc0(s->cs * 3);
    if (build_header(s, o, false, buf)) {
        memset(buf + offsetof(Qcow2DiskHeader, size), 0, 8);
        for (uint64_t j = 0; j < 3; j++) {
            rc_write(s, buf + 2 * s->cs, j, 1);
        }
    } else {
        memset(buf, 0, s->cs);     /* reported when the header is built */
    }
    be = htobe64(2 * s->cs);
    memcpy(buf + s->cs, &be, 8);
    ret = write_at(s->blk, &s->len, 0, buf, s->cs * 3);
    if (ret < 0) {
        error_setg_errno(errp, -ret, "Could not write qcow2 header");
        return ret;
    }
    s->reftable = g_new0(uint64_t, s->rt_size);
    s->refblocks = g_new0(uint8_t *, s->rt_size);
    s->reftable[0] = 2 * s->cs;
    s->refblocks[0] = g_malloc0(s->cs);

    r = alloc_clusters(s, 3 * s->cs);
    if (r != 0) {
        ret = r < 0 ? (int)r : -EIO;
        error_setg_errno(errp, -ret, "Could not allocate clusters for qcow2 "
                         "header and refcount table");
        return ret;
    }
    if (!build_header(s, o, false, buf)) {
        error_setg_errno(errp, ENOSPC, "Could not update qcow2 header");
        return -ENOSPC;
    }

    /* blk_truncate() to the size: the block layer's checks first. */
    if ((int64_t)size < 0) {
        error_setg(errp, "Could not resize image: Image size cannot be "
                   "negative");
        return -EINVAL;
    }
    if ((int64_t)size > MAX_IMAGE_LENGTH) {
        error_setg(errp, "Could not resize image: offset(%" PRId64 ") exceeds "
                   "maximum(%" PRId64 ")", (int64_t)size, MAX_IMAGE_LENGTH);
        return -EIO;
    }
    {
        unsigned shift = s->cluster_bits + s->l2_bits;
        ret = grow_l1(s, (size + (1ull << shift) - 1) >> shift);
    }
    if (ret < 0) {
        error_setg_errno(errp, -ret, "Could not resize image: Failed to grow "
                         "the L1 table");
        return ret;
    }
    switch (o->prealloc) {
    case PREALLOC_MODE_OFF:
        ret = s->data_blk ? grow_file(s->data_blk, &s->data_len, size,
                                      PREALLOC_MODE_OFF, errp) : 0;
        break;
    case PREALLOC_MODE_METADATA:
        ret = prealloc_metadata(s, size, PREALLOC_MODE_METADATA, errp);
        break;
    default:
        ret = s->data_blk ? prealloc_metadata(s, size, o->prealloc, errp)
                          : prealloc_data(s, size, o->prealloc, errp);
        break;
    }
    if (ret == 0) {
        ret = flush_l2(s, UINT64_MAX);
        if (ret < 0) {
            error_setg_errno(errp, -ret, "Failed to flush the preallocated "
                             "area to disk");
        }
    }
    if (ret < 0) {
        error_prefix(errp, "Could not resize image: ");
        return ret;
    }

    if (o->backing_file) {
        bool fits = strlen(o->backing_file) <= QCOW2_MAX_BACKING_NAME;
        fits = fits && build_header(s, o, true, buf);
        if (!fits) {
            ret = strlen(o->backing_file) > QCOW2_MAX_BACKING_NAME ? -EINVAL
                                                                   : -ENOSPC;
            error_setg_errno(errp, -ret, "Could not assign backing file '%s' "
                             "with format '%s'", o->backing_file,
                             o->backing_fmt ? o->backing_fmt : "(null)");
            return ret;
        }
    } else {
        build_header(s, o, false, buf);     /* fitted before */
    }
    for (uint64_t i = 0; i < s->rt_size; i++) {
        if (s->reftable[i] && s->refblocks[i]) {
            ret = write_at(s->blk, &s->len, s->reftable[i], s->refblocks[i],
                           s->cs);
            if (ret < 0) {
                error_setg_errno(errp, -ret, "Could not write refcount block");
                return ret;
            }
        }
    }
    ret = write_at(s->blk, &s->len, 0, buf, s->cs);
    if (ret < 0) {
        error_setg_errno(errp, -ret, "Could not update qcow2 header");
    }
    return ret;
}

int coroutine_fn qcow2_create_layout(BlockBackend *blk, BlockBackend *data_blk,
                                     const Qcow2CreateParams *params,
                                     GError **errp)
{
    Q2Create s = { .blk = blk, .data_blk = data_blk };
    int ret = build_image(&s, params, errp);

    q2create_free(&s);
    return ret;
}
