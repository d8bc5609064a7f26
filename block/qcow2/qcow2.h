/*
 * qcow2: the driver's in-memory state and the interfaces between its files.
 *
 *   qcow2.c          the BlockDriver table: open, close, the data path
 *   qcow2-header.c   reading, checking and rewriting the header
 *   qcow2-cache.c    the L2 and refcount-block caches
 *   qcow2-cluster.c  guest offset -> host offset (L1/L2), L2 updates
 *   qcow2-refcount.c refcounts, cluster allocation and freeing
 *   qcow2-compress.c compressed clusters (zlib, zstd)
 *   qcow2-create.c   image creation
 *   qcow2-resize.c   growing and shrinking (co_truncate)
 *
 * Locking: everything runs in the node's home thread (the main loop or an
 * iothread, docs/architecture.md "Threads"); coroutines interleave at I/O.
 * s->lock (a CoMutex) protects the metadata (L1, caches, refcounts, the
 * header fields); it is held across metadata I/O but not across guest data
 * reads.  Allocating writes keep it until their L2 entry is updated, so a
 * reader never sees an L2 entry pointing at data not yet written.
 */
#ifndef STRATA_QCOW2_H
#define STRATA_QCOW2_H

#include <stdbool.h>
#include <stdint.h>

#include "strata/block-driver.h"
#include "strata/coroutine.h"
#include "strata/debug-event.h"

#include "qcow2-format.h"

typedef struct Qcow2Cache Qcow2Cache;

/* One snapshot table entry, in host byte order. */
typedef struct Qcow2Snapshot {
    uint64_t l1_table_offset;
    uint32_t l1_size;
    char *id_str, *name;
    uint32_t date_sec, date_nsec;
    uint64_t vm_clock_nsec;
    uint64_t vm_state_size;
    uint64_t disk_size;
    uint64_t icount;
    uint32_t extra_size;             /* as on disk */
    uint8_t *extra;                  /* kept to write unknown fields back */
    bool bad_l1;                     /* L1 offset or size invalid */
} Qcow2Snapshot;

/* What an L2 entry (or one subcluster of it) says about guest data. */
typedef enum {
    QCOW2_SC_NORMAL,         /* data at a host offset */
    QCOW2_SC_COMPRESSED,     /* a compressed cluster */
    QCOW2_SC_ZERO_PLAIN,     /* reads as zeroes, no host cluster */
    QCOW2_SC_ZERO_ALLOC,     /* reads as zeroes, host cluster kept */
    QCOW2_SC_UNALLOC_PLAIN,  /* not here: backing file or zeroes */
    QCOW2_SC_UNALLOC_ALLOC,  /* not here, but a host cluster is reserved */
    QCOW2_SC_INVALID,        /* the entry breaks the format's rules */
} Qcow2SubclusterType;

/* Why a cluster is freed: decides whether the file gets a discard. */
typedef enum {
    QCOW2_DISCARD_NEVER,
    QCOW2_DISCARD_ALWAYS,
    QCOW2_DISCARD_REQUEST,   /* the guest discarded */
    QCOW2_DISCARD_SNAPSHOT,  /* a snapshot was deleted */
    QCOW2_DISCARD_OTHER,     /* metadata moved, COW replaced it, ... */
} Qcow2DiscardType;

/* Refcount blocks whose table entry may wait for the next sync at once
 * (more: the next one is hooked up the old way, synced on the spot). */
#define QCOW2_MAX_UNHOOKED 8

typedef struct Qcow2State {
    /* Geometry. */
    int version;
    unsigned cluster_bits;
    uint64_t cluster_size;
    uint64_t cluster_offset_mask;    /* compressed descriptor: host offset */
    unsigned csize_shift, csize_mask; /* compressed descriptor: sectors */
    unsigned l2_bits;                /* log2(entries per L2 table) */
    uint64_t l2_size;                /* entries per L2 table */
    unsigned l2_entry_size;          /* 8, or 16 with extended L2 */
    bool extended_l2;
    unsigned subcluster_bits;
    uint64_t subcluster_size;
    unsigned subclusters_per_cluster;

    /* The active L1 table, in host byte order. */
    uint64_t l1_table_offset;
    uint32_t l1_size;                /* entries in use */
    uint32_t l1_alloc;               /* entries allocated in l1_table */
    uint64_t *l1_table;

    /* Refcounts. */
    unsigned refcount_order;
    unsigned refcount_bits;
    uint64_t refcount_max;
    unsigned refcount_block_bits;    /* log2(entries per refcount block) */
    uint64_t refcount_block_size;    /* entries per refcount block */
    uint64_t refcount_table_offset;
    uint32_t refcount_table_size;    /* entries */
    uint64_t *refcount_table;        /* host byte order */
    uint32_t max_refcount_index;     /* last entry in use (a hot loop's end) */
    uint64_t free_cluster_index;     /* where to start looking for space */
    uint64_t free_byte_offset;       /* compressed writes: partial cluster */
    /*
     * Clusters the search for a new refcount block treats as taken: the
     * part of a continued run whose refcounts QEMU raises before it looks
     * for the block (qcow2_alloc_clusters_at).  Empty when equal.
     */
    uint64_t refblock_skip_start, refblock_skip_end;
    /*
     * New refcount blocks in refcount_table (in memory) whose entry is not
     * written to the file yet: it goes after the next sync of the block
     * (qcow2_cache_flush of the refcount cache), so that allocating one
     * costs no sync under s->lock (qcow2-refcount.c, "Hookups").
     */
    uint64_t unhooked[QCOW2_MAX_UNHOOKED];
    unsigned n_unhooked;

    /* Header fields kept for rewriting the header. */
    uint64_t size;                   /* guest size in bytes */
    uint32_t header_length;
    uint32_t crypt_method;
    uint64_t incompatible_features;
    uint64_t compatible_features;
    uint64_t autoclear_features;
    int compression_type;
    uint32_t nb_snapshots;
    uint64_t snapshots_offset;
    char *backing_file;              /* as in the header, NULL if none */
    char *backing_format;            /* from the extension, NULL if none */
    char *data_file_name;            /* external data file extension */
    Qcow2FeatureName *feature_table; /* from the image, for messages */
    unsigned n_features;
    GPtrArray *unknown_exts;         /* Qcow2UnknownExt* */
    bool has_bitmaps_ext;
    Qcow2BitmapsExt bitmaps_ext;     /* host order (qcow2-bitmap.c) */
    bool bitmaps_ext_stale;          /* dropped: autoclear bit was off */
    char *bitmaps_damaged;           /* why they could not be loaded */

    /* Runtime. */
    BlockChild *data_file;           /* == bs->file without a data file */
    Qcow2Cache *l2_cache;
    Qcow2Cache *refcount_cache;
    unsigned cache_clean_interval;   /* seconds; 0: never */
    GSource *cache_clean_timer;
    StrataLoop *cache_clean_loop;   /* the loop that dispatches it */
    CoMutex lock;
    GList *inflight;                 /* allocating writes (qcow2-inflight.c) */
    bool lazy_refcounts;             /* option, default from the header */
    bool dirty_set_by_us;            /* we set the dirty bit (lazy) */
    bool corrupt;                    /* marked corrupt: read-only from now */
    bool signaled_corruption;        /* a corruption message was printed */
    /* While a check runs: where its messages go (qcow2_check_report). */
    NodeCheckReport *check_report;
    void *check_report_opaque;
    uint64_t l2_cache_bytes;
    /*
     * L2 entries per entry of QEMU's L2 cache (a whole table, or 4 KiB
     * when the cache does not map the whole disk): QEMU's allocating
     * writes stop at these boundaries, and so do ours, for its layout.
     */
    uint64_t l2_slice_size;
    uint64_t refcount_cache_bytes;
    int overlap_check;               /* QCOW2_OL_* mask */
    /* Internal snapshots. */
    uint64_t snapshots_size;         /* bytes of the snapshot table */
    struct Qcow2Snapshot *snapshots; /* nb_snapshots entries */
    bool discard_passthrough_request;
    bool discard_passthrough_snapshot;
    bool discard_passthrough_other;
    bool discard_no_unref;
    /*
     * Freed host clusters waiting to be discarded in the file, merged
     * into runs (Qcow2Discard), and how many batches are open: the queue
     * is sent when the last batch ends (qcow2-refcount.c).
     */
    GArray *discards;
    unsigned discard_batch;
    /* Block status: is the image preallocated=metadata (asked once)? */
    bool metadata_prealloc_checked;
    bool metadata_prealloc;
    /* Encryption (qcow2-crypto.c): NULL when not encrypted. */
    struct CryptoBlock *crypto;
    uint64_t crypto_header_offset;   /* LUKS header clusters (extension) */
    uint64_t crypto_header_length;
    bool has_crypto_ext;             /* even one naming offset 0 */
} Qcow2State;

/* Metadata structures a write must never hit (QEMU's QCOW2_OL_*). */
enum {
    QCOW2_OL_MAIN_HEADER = 1 << 0,
    QCOW2_OL_ACTIVE_L1 = 1 << 1,
    QCOW2_OL_ACTIVE_L2 = 1 << 2,
    QCOW2_OL_REFCOUNT_TABLE = 1 << 3,
    QCOW2_OL_REFCOUNT_BLOCK = 1 << 4,
    QCOW2_OL_SNAPSHOT_TABLE = 1 << 5,
    QCOW2_OL_INACTIVE_L1 = 1 << 6,
    QCOW2_OL_INACTIVE_L2 = 1 << 7,
    QCOW2_OL_BITMAP_DIRECTORY = 1 << 8,
    QCOW2_OL_COUNT = 9,
    QCOW2_OL_CONSTANT = QCOW2_OL_MAIN_HEADER | QCOW2_OL_ACTIVE_L1 |
                        QCOW2_OL_REFCOUNT_TABLE | QCOW2_OL_SNAPSHOT_TABLE |
                        QCOW2_OL_BITMAP_DIRECTORY,
    QCOW2_OL_CACHED = QCOW2_OL_CONSTANT | QCOW2_OL_ACTIVE_L2 |
                      QCOW2_OL_REFCOUNT_BLOCK | QCOW2_OL_INACTIVE_L1,
    QCOW2_OL_ALL = QCOW2_OL_CACHED | QCOW2_OL_INACTIVE_L2,
};
/* The option names (overlap-check.<name>), in QCOW2_OL_* bit order. */
extern const char *const qcow2_overlap_option[QCOW2_OL_COUNT];

/* ---- qcow2-overlap.c ---- */

/*
 * Before writing [offset, offset + size) of the image file: if it hits
 * metadata (other than the kinds in ign), mark the image corrupt and
 * return -EIO.  Lock held or not: reads only in-memory tables, except for
 * inactive L2 tables (mode "all"), which it reads from the image.
 */
int coroutine_fn qcow2_check_overlap(BlockNode *bs, int ign, uint64_t offset,
                                     uint64_t size);
/* ---- qcow2-snapshot.c ---- */

/* Load the snapshot table; at open. */
int coroutine_fn qcow2_read_snapshot_table(BlockNode *bs, GError **errp);
/*
 * The same for check: with repair, extra data past QEMU's 1024 bytes is
 * dropped (counted in *extra_dropped) and snapshots past the table size
 * limit are dropped from s (counted in *nb_dropped) instead of failing;
 * without, *hint (if hint) may say how check -r all would repair it.
 */
int coroutine_fn qcow2_read_snapshot_table_repair(BlockNode *bs, bool repair,
                                                  uint32_t *nb_dropped,
                                                  uint32_t *extra_dropped,
                                                  char **hint, GError **errp);
/* Write s's snapshot list as a new table (check's repair). */
int coroutine_fn qcow2_write_snapshot_table(BlockNode *bs);
void qcow2_free_snapshots(Qcow2State *s);
int coroutine_fn qcow2_snapshot_create(BlockNode *bs, NodeSnapshot *info,
                                       GError **errp);
int coroutine_fn qcow2_snapshot_goto(BlockNode *bs, const char *id_or_name,
                                     GError **errp);
int coroutine_fn qcow2_snapshot_delete(BlockNode *bs, const char *id,
                                       const char *name, GError **errp);
int qcow2_snapshot_list(BlockNode *bs, NodeSnapshot **list);
/* A snapshot's L1 table offset and size as QEMU validates them. */
int qcow2_validate_snapshot_l1(const Qcow2State *s, const Qcow2Snapshot *sn,
                               GError **errp);
int coroutine_fn qcow2_snapshot_load_tmp(BlockNode *bs, const char *id,
                                         const char *name, GError **errp);

/* ---- qcow2-vmstate.c ---- */

/* Where the VM state area starts in the guest address space. */
int64_t qcow2_vm_state_offset(const Qcow2State *s);
int coroutine_fn qcow2_co_save_vmstate(BlockNode *bs, IOVec *qiov,
                                       int64_t pos);
int coroutine_fn qcow2_co_load_vmstate(BlockNode *bs, IOVec *qiov,
                                       int64_t pos);
/*
 * After a snapshot took a VM state of size bytes: the active table drops
 * its mappings of the area (the snapshot keeps them), so that the next
 * save does not copy them on write.  Lock not held.
 */
int coroutine_fn qcow2_vm_state_release(BlockNode *bs, uint64_t size);

/* ---- qcow2-crypto.c ---- */

/* Take the encrypt.* options and unlock the key (after the header). */
int coroutine_fn qcow2_crypto_open(BlockNode *bs, json_t *options, int flags,
                                   GError **errp);
int qcow2_crypto_reopen_options(BlockNode *bs, json_t *options,
                                GError **errp);
void qcow2_crypto_close(Qcow2State *s);
/* The unit of I/O: 512 for encrypted images, else 1. */
unsigned qcow2_crypto_sector_size(const Qcow2State *s);
/* Guest data at host offset `host` of the data file (guest offset `guest`),
 * decrypted or encrypted on the way when the image is encrypted. */
int coroutine_fn qcow2_data_preadv(BlockNode *bs, uint64_t host,
                                   uint64_t guest, uint64_t bytes,
                                   IOVec *qiov, size_t qoff);
int coroutine_fn qcow2_data_pwritev(BlockNode *bs, uint64_t host,
                                    uint64_t guest, uint64_t bytes,
                                    IOVec *qiov, size_t qoff);
/* qemu-img amend's encrypt.* options: LUKS key slots. */
int coroutine_fn qcow2_crypto_amend(BlockNode *bs, json_t *options,
                                    bool force, GError **errp);
/* The "encrypt" member of the format-specific information (NULL: none). */
json_t *qcow2_crypto_info(const Qcow2State *s);

/* ---- qcow2-header.c ---- */

/*
 * Rewrite the whole header cluster from s (qcow2_header_layout()) and
 * flush: the only way the open driver writes a whole header.
 */
int coroutine_fn qcow2_update_header(BlockNode *bs);
/* Read, check and load the header and its extensions into s. */
int coroutine_fn qcow2_read_header(BlockNode *bs, json_t *options, int flags,
                                   GError **errp);
/* Set or clear an incompatible feature bit in the header on disk. */
int coroutine_fn qcow2_set_incompat_bit(BlockNode *bs, uint64_t bit);
int coroutine_fn qcow2_clear_incompat_bit(BlockNode *bs, uint64_t bit);
/*
 * Lazy refcounts: set the dirty bit (and drop the L2-after-refcount
 * ordering) before the first allocation; mark_clean writes both caches
 * and clears it.  Lock held.
 */
int coroutine_fn qcow2_mark_dirty(BlockNode *bs);
int coroutine_fn qcow2_mark_clean(BlockNode *bs);
/* "Marking image as corrupt: ..." and the corrupt bit, like QEMU. */
void coroutine_fn qcow2_signal_corruption(BlockNode *bs, bool fatal,
                                          int64_t offset, int64_t size,
                                          const char *fmt, ...)
    G_GNUC_PRINTF(5, 6);

/* ---- qcow2.c ---- */

/* Read guest data into buf (have_lock: the caller holds s->lock). */
/* Resize (qcow2-resize.c): the driver's co_truncate. */
int coroutine_fn qcow2_co_truncate(BlockNode *bs, int64_t offset, bool exact,
                                   PreallocMode prealloc, GError **errp);
int coroutine_fn qcow2_co_read_buf(BlockNode *bs, uint64_t offset,
                                   uint64_t bytes, void *buf, bool have_lock);

/* ---- qcow2-write.c ---- */

int coroutine_fn qcow2_co_pwritev(BlockNode *bs, int64_t offset,
                                  int64_t bytes, IOVec *qiov,
                                  size_t qiov_offset, int flags);
/* The target side of a copy offload (BlockDriver.co_copy_range_to). */
int coroutine_fn qcow2_co_copy_range_to(BlockNode *bs, BlockChild *src,
                                        int64_t src_off, BlockChild *dst,
                                        int64_t dst_off, int64_t bytes,
                                        int read_flags, int write_flags);
/*
 * Give [offset, offset + bytes) host clusters without writing it (QEMU's
 * preallocation: clusters the image owns stay, others get new ones,
 * contiguous where possible; data around the range is copied, subcluster
 * bitmaps are left alone).  Lock held; *host_end is the host offset just
 * past the range's last byte.
 */
int coroutine_fn qcow2_prealloc_range(BlockNode *bs, uint64_t offset,
                                      uint64_t bytes, uint64_t *host_end);
/*
 * Point the guest clusters from start_of_cluster(offset) on at nb host
 * clusters from host (allocated by the caller), copying the first
 * cluster's data before offset there; the old clusters are freed.
 * all_alloc: with subclusters, every subcluster becomes allocated (the
 * new clusters read as zeroes); else bitmaps stay.  Lock held.
 */
int coroutine_fn qcow2_link_clusters(BlockNode *bs, uint64_t offset,
                                     uint64_t host, uint64_t nb,
                                     bool all_alloc);
/*
 * Growing an image whose data file is raw: the clusters of [from, to) that
 * map nothing yet are mapped onto the same offsets of the data file, as
 * QEMU's metadata preallocation does then.  Lock held.
 */
int coroutine_fn qcow2_map_raw_data(BlockNode *bs, uint64_t from,
                                    uint64_t to);

/* ---- qcow2-inflight.c ---- */

/*
 * Wait (lock held, released while waiting) until no allocating write is in
 * flight on the guest clusters of [start, end).
 */
bool coroutine_fn qcow2_wait_inflight(BlockNode *bs, uint64_t start,
                                      uint64_t end);

/* ---- qcow2-zero.c ---- */

int coroutine_fn qcow2_co_pwrite_zeroes(BlockNode *bs, int64_t offset,
                                        int64_t bytes, int flags);
int coroutine_fn qcow2_co_pdiscard(BlockNode *bs, int64_t offset,
                                   int64_t bytes);
int coroutine_fn qcow2_co_unallocate(BlockNode *bs, int64_t offset,
                                     int64_t bytes);
/* Make [from, to) read as zeroes whatever lies below; lock held. */
int coroutine_fn qcow2_zero_new_area(BlockNode *bs, uint64_t from,
                                     uint64_t to);
/*
 * Drop every cluster mapping of the range (shrinking or emptying the
 * image): entries become 0 whatever lies below; lock held.
 */
int coroutine_fn qcow2_discard_range(BlockNode *bs, uint64_t offset,
                                     uint64_t bytes, Qcow2DiscardType dt);

/* ---- qcow2-write-compressed.c ---- */

/* One whole cluster (or the image's last, partial one), compressed. */
int coroutine_fn qcow2_co_pwritev_compressed(BlockNode *bs, int64_t offset,
                                             int64_t bytes, IOVec *qiov,
                                             size_t qiov_offset);

/* ---- qcow2-prealloc.c ---- */

/*
 * Grow the image's clusters from `from` (the old size) to `to` with
 * preallocation (not off); the size itself is the caller's.  *zero in:
 * the new area must read as zeroes over a backing file; out: whether the
 * caller still has to make it so.  Lock held.
 */
int coroutine_fn qcow2_grow_prealloc(BlockNode *bs, uint64_t from, uint64_t to,
                                     PreallocMode mode, bool *zero,
                                     GError **errp);

/* ---- qcow2-backing.c ---- */

/* BlockDriver.co_change_backing_file: the header names file and fmt. */
int coroutine_fn qcow2_co_change_backing_file(BlockNode *bs, const char *file,
                                              const char *fmt);

/* ---- qcow2-measure.c ---- */

/* BlockDriver.measure: the size a new image with these options takes. */
bool coroutine_fn qcow2_measure(json_t *opts, BlockNode *in_bs,
                                BlockMeasureInfo *info, GError **errp);

/* ---- qcow2-empty.c ---- */

/* BlockDriver.make_empty: drop every mapping, QEMU's layout after. */
int coroutine_fn qcow2_make_empty(BlockNode *bs, GError **errp);

/* Clusters one zeroing or discarding step handles at most (per L2 table);
 * allocating writes use the stack up to this many. */
#define QCOW2_MAX_RUN 256
/* QEMU's largest request (BDRV_REQUEST_MAX_BYTES): an allocation's bound. */
#define QCOW2_REQUEST_MAX_BYTES (INT_MAX & ~511u)

/* ---- qcow2-cache.c ---- */

Qcow2Cache *qcow2_cache_new(BlockNode *bs, bool is_l2, int num_tables,
                            unsigned table_size);
void qcow2_cache_free(Qcow2Cache *c);
/* The refcount cache must be on disk before the L2 cache is written. */
void qcow2_cache_set_dependency(Qcow2Cache *c, Qcow2Cache *dependency);
/* Get the table at offset (read from the image if not cached). */
int coroutine_fn qcow2_cache_get(Qcow2Cache *c, uint64_t offset,
                                 void **table);
/* Same, for a new table: not read, contents undefined. */
int coroutine_fn qcow2_cache_get_empty(Qcow2Cache *c, uint64_t offset,
                                       void **table);
void qcow2_cache_put(Qcow2Cache *c, void **table);
void qcow2_cache_mark_dirty(Qcow2Cache *c, void *table);
/* Write dirty tables (dependencies first); flush also syncs the file. */
int coroutine_fn qcow2_cache_write(Qcow2Cache *c);
int coroutine_fn qcow2_cache_flush(Qcow2Cache *c);
/*
 * Make durable what c's tables rely on (the dependency's dirty tables)
 * and everything written to the file before: a sync of the file even
 * without a dependency (lazy refcounts).
 */
int coroutine_fn qcow2_cache_flush_dependency(Qcow2Cache *c);
/*
 * Refcount table entries of new blocks waiting for their block to be
 * synced (qcow2-refcount.c): whether there are any, and write them (the
 * caller has synced the blocks, and syncs again after).
 */
bool qcow2_refblock_hookups_pending(const Qcow2State *s);
int coroutine_fn qcow2_write_refblock_hookups(BlockNode *bs);
/* Forget the table at offset (its cluster was freed); false if in use. */
bool qcow2_cache_discard(Qcow2Cache *c, uint64_t offset);
/* Drop every clean, unused table (after write). */
void qcow2_cache_empty(Qcow2Cache *c);
/* Drop clean tables unused since the last call (cache-clean-interval). */
void qcow2_cache_clean_unused(Qcow2Cache *c);
int qcow2_cache_count(const Qcow2Cache *c);

/* ---- qcow2-cluster.c ---- */

Qcow2SubclusterType qcow2_subcluster_type(const Qcow2State *s, uint64_t entry,
                                          uint64_t bitmap, unsigned sc);
/* The L2 table covering offset (NULL if none), from the cache: put it. */
int coroutine_fn qcow2_get_l2_table(BlockNode *bs, uint64_t offset,
                                    void **l2, unsigned *l2_index);

/*
 * What is at guest `offset`: *bytes (in: wanted, out: how many bytes from
 * offset share the answer, within one L2 table), the type, and the host
 * offset (data offset for NORMAL/ZERO_ALLOC, the raw descriptor for
 * COMPRESSED).  The caller holds s->lock.
 */
int coroutine_fn qcow2_get_host_offset(BlockNode *bs, uint64_t offset,
                                       uint64_t *bytes, uint64_t *host_offset,
                                       Qcow2SubclusterType *type);

/* Grow the active L1 table to at least min_size entries; lock held. */
int coroutine_fn qcow2_grow_l1(BlockNode *bs, uint32_t min_size);

/* ---- qcow2-refcount.c ---- */

int coroutine_fn qcow2_get_refcount(BlockNode *bs, uint64_t cluster,
                                    uint64_t *refcount);
/* Entry i of a refcount block whose entries are 2^order bits wide. */
uint64_t qcow2_refblock_get(unsigned order, const void *rb, uint64_t i);
void qcow2_refblock_set(unsigned order, void *rb, uint64_t i, uint64_t v);
/* Entry i of a refcount block (big endian, the image's width). */
uint64_t qcow2_refcount_array_get(const Qcow2State *s, const void *rb,
                                  uint64_t i);
void qcow2_refcount_array_set(const Qcow2State *s, void *rb, uint64_t i,
                              uint64_t v);
/* Raise or lower by addend the refcount of every cluster of the range. */
int coroutine_fn qcow2_update_refcount_range(BlockNode *bs, uint64_t offset,
                                             uint64_t length, uint64_t addend,
                                             bool decrease,
                                             Qcow2DiscardType dt);
/* n contiguous new clusters with refcount 1; *offset is the first. */
int coroutine_fn qcow2_alloc_clusters(BlockNode *bs, uint64_t n,
                                      uint64_t *offset);
/*
 * The same, for a structure QEMU names when the refcounts are so broken
 * that the header cluster looks free ("L2 table": "Preventing invalid
 * allocation of L2 table at offset 0").
 */
int coroutine_fn qcow2_alloc_clusters_for(BlockNode *bs, uint64_t n,
                                          uint64_t *offset, const char *what);
/*
 * As many of the n clusters from offset on as are free (*got, maybe 0),
 * taken: QEMU continues an allocation there to keep data contiguous.
 */
int coroutine_fn qcow2_alloc_clusters_at(BlockNode *bs, uint64_t offset,
                                         uint64_t n, uint64_t *got);
/*
 * size bytes (at most a cluster) for a compressed cluster, packed after
 * the previous ones; each cluster the bytes touch gains a reference.
 */
int coroutine_fn qcow2_alloc_bytes(BlockNode *bs, uint64_t size,
                                   uint64_t *offset);
/*
 * New refcount structures at byte `start` (cluster aligned, past every
 * cluster in use) that cover the image's clusters up to there plus
 * `additional` more, exactly (QEMU's qcow2_refcount_area for a
 * preallocated resize): the missing refcount blocks, then a new refcount
 * table the header switches to.  *end: the byte just past them.  Lock held.
 */
int coroutine_fn qcow2_refcount_area(BlockNode *bs, uint64_t start,
                                     uint64_t additional, uint64_t *end);
/* Lower by one the refcount of every cluster in the range. */
int coroutine_fn qcow2_free_clusters(BlockNode *bs, uint64_t offset,
                                     uint64_t length, Qcow2DiscardType dt);
/* First cluster past every cluster with a refcount (and past the file's
 * end if with_file). */
int coroutine_fn qcow2_end_of_used(BlockNode *bs, bool with_file,
                                   uint64_t *end);
int coroutine_fn qcow2_update_cluster_refcount(BlockNode *bs, uint64_t cluster,
                                               int addend,
                                               Qcow2DiscardType dt);

/*
 * Batch the file discards of clusters freed until the matching end: runs
 * of freed clusters are sent as one request each, after the caller has
 * written what stopped pointing at them.  Batches nest; outside any batch
 * each change of refcounts sends its own discards when it is done.  end
 * with ret < 0 drops the queue (the clusters stay free, only their old
 * contents stay too).  Lock held.
 */
void qcow2_discard_batch_begin(BlockNode *bs);
void coroutine_fn qcow2_discard_batch_end(BlockNode *bs, int ret);
/* Drop refcount blocks that count nothing (shrinking); lock held. */
int coroutine_fn qcow2_shrink_reftable(BlockNode *bs);
/* Forget queued discards (closing). */
void qcow2_discard_queue_free(Qcow2State *s);


/* ---- qcow2-meta-txn.c ---- */

/*
 * A second view of the metadata, built in free clusters and switched to
 * with one header write (see the file for why).  Lock held throughout.
 */
typedef struct Qcow2MetaTxn Qcow2MetaTxn;
/* The header fields of the new view (the refcount table's are added). */
typedef struct Qcow2TxnHeader {
    uint64_t size;
    uint32_t l1_size;
    uint64_t l1_table_offset;
    uint32_t nb_snapshots;
    uint64_t snapshots_offset;
} Qcow2TxnHeader;
Qcow2MetaTxn *qcow2_txn_new(BlockNode *bs);
void qcow2_txn_free(Qcow2MetaTxn *t);
/* The cluster's refcount in the new view. */
int coroutine_fn qcow2_txn_get_refcount(Qcow2MetaTxn *t, uint64_t cluster,
                                        uint64_t *rc);
int coroutine_fn qcow2_txn_add(Qcow2MetaTxn *t, uint64_t cluster, int delta);
/* Lower by one the refcount of every cluster of the range. */
int coroutine_fn qcow2_txn_free_range(Qcow2MetaTxn *t, uint64_t offset,
                                      uint64_t bytes);
/* n contiguous clusters free in both views, refcount 1 in the new one. */
int coroutine_fn qcow2_txn_alloc(Qcow2MetaTxn *t, uint64_t n,
                                 uint64_t *offset);
/* Write buf (taken over, g_free'd) at offset before the switch. */
void qcow2_txn_queue_write(Qcow2MetaTxn *t, uint64_t offset, void *buf,
                           uint64_t len);
void qcow2_txn_queue_write_ign(Qcow2MetaTxn *t, uint64_t offset, void *buf,
                               uint64_t len, int ign);
/* Refcount rc for a cluster free in both views (-ENOTSUP if it is not). */
int coroutine_fn qcow2_txn_take(Qcow2MetaTxn *t, uint64_t cluster, int rc);
/* Copy the refcount block covering cluster even if no count changes. */
int coroutine_fn qcow2_txn_touch(Qcow2MetaTxn *t, uint64_t cluster);
/* New clusters from this one on. */
void qcow2_txn_set_floor(Qcow2MetaTxn *t, uint64_t cluster);
/* Leave the discards of freed clusters to a later transaction... */
void qcow2_txn_hold_discards(Qcow2MetaTxn *t);
/* Discard (if passthrough says so) the clusters freed and still free. */
void coroutine_fn qcow2_txn_discard_freed(Qcow2MetaTxn *t);
/* ...which takes them over with this. */
void qcow2_txn_inherit_freed(Qcow2MetaTxn *t, Qcow2MetaTxn *from);
/*
 * Put every refcount block back at rt[index] and the table at rt_offset
 * (rt_size entries): the layout of an earlier view, whose clusters must be
 * free now.  The commit fails with -ENOTSUP, before writing anything, if
 * that cannot be done.
 */
void qcow2_txn_restore_refcounts(Qcow2MetaTxn *t, const uint64_t *rt,
                                 uint64_t rt_size, uint64_t rt_offset);
/*
 * Write the new view, flush, switch the header, flush.  On success the
 * in-memory refcount table and caches describe the new view; the caller
 * updates the rest (L1, snapshots, size) whenever *switched, even if the
 * final flush failed.  Without *switched the old view is unchanged on disk
 * and in memory.
 */
int coroutine_fn qcow2_txn_commit(Qcow2MetaTxn *t, const Qcow2TxnHeader *h,
                                  bool *switched);

/* ---- qcow2-check.c ---- */

/*
 * Count references and compare with the refcounts, reporting each problem
 * in QEMU's words to report (NULL: warn_print); fix is CHECK_FIX_*.
 * Lock held.
 */
int coroutine_fn qcow2_co_check_locked(BlockNode *bs, BlockCheckResult *res,
                                       int fix, NodeCheckReport *report,
                                       void *opaque);
/* One line of the running check's report (no newline). */
void qcow2_check_report(Qcow2State *s, const char *fmt, ...)
    G_GNUC_PRINTF(2, 3);
/* The same for an error, as QEMU's error_report() shows it: "prog: ...". */
void qcow2_check_report_error(Qcow2State *s, const char *fmt, ...)
    G_GNUC_PRINTF(2, 3);

/* ---- qcow2-amend.c ---- */

/* Progress of a long amend step: done out of total units. */
typedef void Qcow2AmendStatus(void *opaque, int64_t done, int64_t total);

/*
 * Rebuild the refcount structure with entries 2^order bits wide (v3 only);
 * fails with QEMU's message if a refcount does not fit.  Lock held.
 */
int coroutine_fn qcow2_change_refcount_order(BlockNode *bs, unsigned order,
                                             Qcow2AmendStatus *status,
                                             void *opaque, GError **errp);

/* BlockDriver.amend: qemu-img amend's options, in QEMU 7.2's order. */
int coroutine_fn qcow2_amend(BlockNode *bs, json_t *options, bool force,
                             Qcow2AmendStatus *status, void *opaque,
                             GError **errp);

/* ---- helpers ---- */

static inline uint64_t qcow2_offset_into_cluster(const Qcow2State *s,
                                                 uint64_t offset)
{
    return offset & (s->cluster_size - 1);
}

static inline uint64_t qcow2_offset_into_subcluster(const Qcow2State *s,
                                                    uint64_t offset)
{
    return offset & (s->subcluster_size - 1);
}

static inline uint64_t qcow2_start_of_cluster(const Qcow2State *s,
                                              uint64_t offset)
{
    return offset & ~(s->cluster_size - 1);
}

static inline uint64_t qcow2_size_to_clusters(const Qcow2State *s,
                                              uint64_t size)
{
    return (size + s->cluster_size - 1) >> s->cluster_bits;
}

static inline unsigned qcow2_l1_index(const Qcow2State *s, uint64_t offset)
{
    return (unsigned)(offset >> (s->l2_bits + s->cluster_bits));
}

static inline unsigned qcow2_l2_index(const Qcow2State *s, uint64_t offset)
{
    return (unsigned)((offset >> s->cluster_bits) & (s->l2_size - 1));
}

static inline bool qcow2_has_data_file(const Qcow2State *s)
{
    return s->incompatible_features & QCOW2_INCOMPAT_DATA_FILE;
}

static inline bool qcow2_data_file_is_raw(const Qcow2State *s)
{
    return s->autoclear_features & QCOW2_AUTOCLEAR_DATA_FILE_RAW;
}

/* L2 tables in the cache are big endian; entry i and its bitmap. */
static inline uint64_t qcow2_l2_entry(const Qcow2State *s, const void *l2,
                                      unsigned i)
{
    const uint64_t *t = l2;
    return be64toh(t[i * (s->l2_entry_size / 8)]);
}

static inline uint64_t qcow2_l2_bitmap(const Qcow2State *s, const void *l2,
                                       unsigned i)
{
    const uint64_t *t = l2;
    return s->extended_l2 ? be64toh(t[i * 2 + 1]) : 0;
}

static inline void qcow2_set_l2_entry(const Qcow2State *s, void *l2,
                                      unsigned i, uint64_t entry)
{
    uint64_t *t = l2;
    t[i * (s->l2_entry_size / 8)] = htobe64(entry);
}

static inline void qcow2_set_l2_bitmap(const Qcow2State *s, void *l2,
                                       unsigned i, uint64_t bitmap)
{
    uint64_t *t = l2;
    g_assert(s->extended_l2);
    t[i * 2 + 1] = htobe64(bitmap);
}

#endif
