/*
 * The qcow2 metadata caches: L2 tables and refcount blocks, each one
 * cluster, kept big endian exactly as on disk.
 *
 * Write-back ordering is the point of this file.  A new L2 entry may point
 * at a cluster only once the refcount that accounts for the cluster is on
 * disk, or a crash leaves a cluster in use with refcount 0, which the next
 * allocation hands out twice.  So the L2 cache depends on the refcount
 * cache: before any L2 table is written, every dirty refcount block is
 * written and the file flushed.
 *
 * The caller holds the qcow2 lock; get() may yield for the read.  A table
 * returned by get() stays in memory until put(): eviction skips tables in
 * use.  Lookup is a hash from offset to slot; eviction takes the least
 * recently used free slot.
 */
#include <errno.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "qcow2.h"

typedef struct CacheSlot {
    uint64_t offset;     /* 0: empty */
    int ref;
    bool dirty;
    uint64_t lru;        /* last use, for eviction */
} CacheSlot;

struct Qcow2Cache {
    BlockNode *bs;
    bool is_l2;          /* decides the debug events */
    unsigned table_size;
    int n;
    CacheSlot *slots;
    uint8_t *tables;     /* n * table_size, aligned for O_DIRECT */
    GHashTable *index;   /* offset -> slot + 1 */
    Qcow2Cache *depends;
    uint64_t lru_clock;
    int last;            /* slot of the last lookup: most hit it again */
    bool unsynced;       /* tables written since this cache last synced */
    uint64_t clean_clock; /* lru_clock at the last clean_unused() */
};

static void *slot_table(Qcow2Cache *c, int i)
{
    return c->tables + (size_t)i * c->table_size;
}

static int table_slot(Qcow2Cache *c, const void *table)
{
    ptrdiff_t d = (const uint8_t *)table - c->tables;
    g_assert(d >= 0 && d % c->table_size == 0 && d / c->table_size < c->n);
    return (int)(d / c->table_size);
}

Qcow2Cache *qcow2_cache_new(BlockNode *bs, bool is_l2, int num_tables,
                            unsigned table_size)
{
    Qcow2Cache *c = g_new0(Qcow2Cache, 1);
    size_t align = MAX((size_t)4096, (size_t)bs->file->bs->bl.opt_mem_alignment);

    c->bs = bs;
    c->is_l2 = is_l2;
    c->table_size = table_size;
    c->n = MAX(num_tables, 2);
    c->slots = g_new0(CacheSlot, c->n);
    if (posix_memalign((void **)&c->tables, align,
                       (size_t)c->n * table_size) != 0) {
        g_free(c->slots);
        g_free(c);
        return NULL;
    }
    c->index = g_hash_table_new(g_int64_hash, g_int64_equal);
    return c;
}

void qcow2_cache_free(Qcow2Cache *c)
{
    if (!c) {
        return;
    }
    g_hash_table_destroy(c->index);
    free(c->tables);
    g_free(c->slots);
    g_free(c);
}

void qcow2_cache_set_dependency(Qcow2Cache *c, Qcow2Cache *dependency)
{
    c->depends = dependency;
}

static void index_remove(Qcow2Cache *c, int i)
{
    g_hash_table_remove(c->index, &c->slots[i].offset);
}

static void index_add(Qcow2Cache *c, int i)
{
    /* The key points into the slot, which lives as long as the entry. */
    g_hash_table_insert(c->index, &c->slots[i].offset, GINT_TO_POINTER(i + 1));
}

static bool any_dirty(const Qcow2Cache *c)
{
    for (int i = 0; i < c->n; i++) {
        if (c->slots[i].dirty) {
            return true;
        }
    }
    return false;
}

/* A refcount cache whose new blocks' table entries wait for its sync. */
static bool depends_on_hookups(const Qcow2Cache *c)
{
    return !c->is_l2 && qcow2_refblock_hookups_pending(c->bs->opaque);
}

static int coroutine_fn write_slot(Qcow2Cache *c, int i)
{
    CacheSlot *sl = &c->slots[i];
    int ret;

    if (!sl->dirty) {
        return 0;
    }
    /*
     * What this table relies on must be on disk first; a dependency with
     * nothing dirty and nothing written since its last sync already is
     * (one sync per flush, not one per table).
     */
    if (c->depends && (c->depends->unsynced || any_dirty(c->depends) ||
                       depends_on_hookups(c->depends))) {
        ret = qcow2_cache_flush(c->depends);
        if (ret < 0) {
            return ret;
        }
    }
    /* A table may never land on other metadata (damaged images). */
    ret = qcow2_check_overlap(c->bs, c->is_l2 ? QCOW2_OL_ACTIVE_L2
                                              : QCOW2_OL_REFCOUNT_BLOCK,
                              sl->offset, c->table_size);
    if (ret < 0) {
        return ret;
    }
    child_debug_event(c->bs->file, c->is_l2 ? BLKDBG_L2_UPDATE
                                            : BLKDBG_REFBLOCK_UPDATE_PART);
    ret = child_co_pwrite(c->bs->file, (int64_t)sl->offset, c->table_size,
                          slot_table(c, i), 0);
    if (ret < 0) {
        return ret;
    }
    sl->dirty = false;
    c->unsynced = true;
    return 0;
}

int coroutine_fn qcow2_cache_write(Qcow2Cache *c)
{
    int result = 0;

    /* Keep going after an error: write what can be written. */
    for (int i = 0; i < c->n; i++) {
        int ret = write_slot(c, i);
        if (ret < 0 && result == 0) {
            result = ret;
        }
    }
    return result;
}

int coroutine_fn qcow2_cache_flush(Qcow2Cache *c)
{
    int ret = qcow2_cache_write(c);
    int fret = node_co_flush(c->bs->file->bs);

    if (ret >= 0 && fret >= 0) {
        /* The sync covered every write before it, the dependency's too. */
        c->unsynced = false;
        if (c->depends) {
            c->depends->unsynced = false;
        }
        /*
         * New refcount blocks are on disk now: the table may point at
         * them, and that is on disk too before anyone relies on the
         * refcounts this flush promises (a second sync, once per block).
         */
        if (depends_on_hookups(c)) {
            ret = qcow2_write_refblock_hookups(c->bs);
            if (ret >= 0) {
                ret = node_co_flush(c->bs->file->bs);
            }
            return ret;
        }
    }
    return ret < 0 ? ret : fret;
}

int coroutine_fn qcow2_cache_flush_dependency(Qcow2Cache *c)
{
    if (c->depends) {
        return qcow2_cache_flush(c->depends);
    }
    return node_co_flush(c->bs->file->bs);
}

/* A slot for a new table: the least recently used one not in use. */
static int coroutine_fn find_victim(Qcow2Cache *c)
{
    int best = -1;

    for (int i = 0; i < c->n; i++) {
        if (c->slots[i].ref) {
            continue;
        }
        if (c->slots[i].offset == 0) {
            return i;
        }
        if (best < 0 || c->slots[i].lru < c->slots[best].lru) {
            best = i;
        }
    }
    return best;
}

static int coroutine_fn do_get(Qcow2Cache *c, uint64_t offset, void **table,
                               bool read)
{
    gpointer v;
    int i, ret;

    if (offset == 0) {
        /* Never a table: the header lives there (a damaged image). */
        return -EIO;
    }
    /*
     * A slot's offset is the truth the index only mirrors, so the last
     * slot can be tried without invalidating anything when slots change.
     */
    if (c->slots[c->last].offset == offset) {
        i = c->last;
        goto found;
    }
    v = g_hash_table_lookup(c->index, &offset);
    if (v) {
        i = GPOINTER_TO_INT(v) - 1;
        goto found;
    }

    i = find_victim(c);
    if (i < 0) {
        /* Every table in use at once: the cache is far too small. */
        return -ENOSPC;
    }
    ret = write_slot(c, i);
    if (ret < 0) {
        return ret;
    }
    if (c->slots[i].offset) {
        index_remove(c, i);
        c->slots[i].offset = 0;
    }
    if (read) {
        /*
         * refblock_load is not a disk read: QEMU announces it where a
         * refcount is about to change (qcow2-refcount.c), cached or not.
         */
        if (c->is_l2) {
            child_debug_event(c->bs->file, BLKDBG_L2_LOAD);
        }
        /* Hold the slot while the read yields. */
        c->slots[i].ref++;
        ret = child_co_pread(c->bs->file, (int64_t)offset, c->table_size,
                             slot_table(c, i), 0);
        c->slots[i].ref--;
        if (ret < 0) {
            return ret;
        }
        /* Another coroutine may have loaded the same table meanwhile. */
        v = g_hash_table_lookup(c->index, &offset);
        if (v) {
            i = GPOINTER_TO_INT(v) - 1;
            goto found;
        }
    }
    c->slots[i].offset = offset;
    c->slots[i].dirty = false;
    index_add(c, i);

found:
    c->last = i;
    c->slots[i].ref++;
    c->slots[i].lru = ++c->lru_clock;
    *table = slot_table(c, i);
    return 0;
}

int coroutine_fn qcow2_cache_get(Qcow2Cache *c, uint64_t offset, void **table)
{
    return do_get(c, offset, table, true);
}

int coroutine_fn qcow2_cache_get_empty(Qcow2Cache *c, uint64_t offset,
                                       void **table)
{
    return do_get(c, offset, table, false);
}

void qcow2_cache_put(Qcow2Cache *c, void **table)
{
    int i = table_slot(c, *table);

    g_assert(c->slots[i].ref > 0);
    c->slots[i].ref--;
    *table = NULL;
}

void qcow2_cache_mark_dirty(Qcow2Cache *c, void *table)
{
    int i = table_slot(c, table);

    g_assert(c->slots[i].offset != 0);
    c->slots[i].dirty = true;
}

bool qcow2_cache_discard(Qcow2Cache *c, uint64_t offset)
{
    gpointer v = g_hash_table_lookup(c->index, &offset);
    int i;

    if (!v) {
        return true;
    }
    i = GPOINTER_TO_INT(v) - 1;
    if (c->slots[i].ref) {
        /* Freed while in use: only a damaged image gets here. */
        return false;
    }
    index_remove(c, i);
    c->slots[i].offset = 0;
    c->slots[i].dirty = false;
    return true;
}

void qcow2_cache_empty(Qcow2Cache *c)
{
    for (int i = 0; i < c->n; i++) {
        if (c->slots[i].offset && !c->slots[i].ref && !c->slots[i].dirty) {
            index_remove(c, i);
            c->slots[i].offset = 0;
        }
    }
}

/*
 * cache-clean-interval: drop the clean tables nobody has used since the
 * previous call and give their memory back to the kernel, so an idle
 * image costs little memory however large its caches may grow.  Tables
 * in use or dirty stay; the slots are refilled on demand.
 */
void qcow2_cache_clean_unused(Qcow2Cache *c)
{
    size_t page = (size_t)sysconf(_SC_PAGESIZE);

    for (int i = 0; i < c->n; i++) {
        CacheSlot *sl = &c->slots[i];
        uintptr_t start, end;

        if (!sl->offset || sl->ref || sl->dirty || sl->lru > c->clean_clock) {
            continue;
        }
        index_remove(c, i);
        sl->offset = 0;
        /* Only whole pages inside the table can be released. */
        start = ((uintptr_t)slot_table(c, i) + page - 1) & ~(uintptr_t)(page - 1);
        end = ((uintptr_t)slot_table(c, i) + c->table_size) &
              ~(uintptr_t)(page - 1);
        if (end > start) {
            madvise((void *)start, end - start, MADV_DONTNEED);
        }
    }
    c->clean_clock = c->lru_clock;
}

/* How many tables the cache holds now (for tests and statistics). */
int qcow2_cache_count(const Qcow2Cache *c)
{
    int n = 0;

    for (int i = 0; i < c->n; i++) {
        n += c->slots[i].offset != 0;
    }
    return n;
}
