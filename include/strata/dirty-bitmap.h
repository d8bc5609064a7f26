/*
 * Named dirty bitmaps of a node: which parts of the disk were written
 * since the bitmap was made or last cleared.
 *
 * A bitmap covers the node's length in chunks of `granularity` bytes (a
 * power of two, at least 512); a write, zero write or discard through the
 * node marks every chunk it touches in each bitmap that is recording
 * (block/io.c, whatever the driver).  Flags, as QEMU's:
 *   enabled/recording  marked by writes (disabled: frozen);
 *   persistent         stored in the image by its format driver at close
 *                      (qcow2's bitmaps extension);
 *   inconsistent       found `in-use` in the image (its writer did not
 *                      close cleanly): kept and reported, unusable;
 *   busy               owned by a job or an export;
 *   readonly           loaded from an image opened read-only: cannot
 *                      change, and the node refuses writes while it has one.
 *
 * The second half is the management API (QEMU's block-dirty-bitmap-*
 * commands): what strata-img bitmap uses and the daemon will.  Errors are
 * QEMU 7.2's messages.
 */
#ifndef STRATA_DIRTY_BITMAP_H
#define STRATA_DIRTY_BITMAP_H

#include <stdbool.h>
#include <stdint.h>

#include "strata/block.h"
#include "strata/error.h"
#include "strata/hbitmap.h"

typedef struct DirtyBitmap DirtyBitmap;

/* Longest name a bitmap may have (qcow2's limit, QEMU's). */
#define DIRTY_BITMAP_MAX_NAME 1023

/* What dirty_bitmap_check refuses. */
enum {
    DIRTY_BITMAP_BUSY = 1 << 0,
    DIRTY_BITMAP_RO = 1 << 1,
    DIRTY_BITMAP_INCONSISTENT = 1 << 2,
    DIRTY_BITMAP_DEFAULT = DIRTY_BITMAP_BUSY | DIRTY_BITMAP_RO |
                           DIRTY_BITMAP_INCONSISTENT,
    DIRTY_BITMAP_ALLOW_RO = DIRTY_BITMAP_BUSY | DIRTY_BITMAP_INCONSISTENT,
};

/* ---- The bitmaps themselves ---- */

/*
 * A new enabled, clear, non-persistent bitmap over the node's length
 * (name may be NULL for an anonymous one).  The newest comes first in
 * node_dirty_bitmaps(), as in QEMU.
 */
DirtyBitmap *node_create_dirty_bitmap(BlockNode *bs, uint32_t granularity,
                                      const char *name, GError **errp);
void dirty_bitmap_release(DirtyBitmap *bm);
/* Release every bitmap of the node (closing). */
void node_release_dirty_bitmaps(BlockNode *bs);
DirtyBitmap *node_find_dirty_bitmap(BlockNode *bs, const char *name);
/* The node's bitmaps, newest first: DirtyBitmap* (do not modify). */
GList *node_dirty_bitmaps(BlockNode *bs);
bool node_has_readonly_bitmaps(BlockNode *bs);

const char *dirty_bitmap_name(const DirtyBitmap *bm);
BlockNode *dirty_bitmap_node(const DirtyBitmap *bm);
uint32_t dirty_bitmap_granularity(const DirtyBitmap *bm);
int64_t dirty_bitmap_size(const DirtyBitmap *bm);    /* bytes covered */
bool dirty_bitmap_enabled(const DirtyBitmap *bm);
bool dirty_bitmap_persistent(const DirtyBitmap *bm);
bool dirty_bitmap_inconsistent(const DirtyBitmap *bm);
bool dirty_bitmap_busy(const DirtyBitmap *bm);
bool dirty_bitmap_readonly(const DirtyBitmap *bm);
void dirty_bitmap_set_enabled(DirtyBitmap *bm, bool enabled);
void dirty_bitmap_set_persistent(DirtyBitmap *bm, bool persistent);
void dirty_bitmap_set_inconsistent(DirtyBitmap *bm);
/*
 * strata's recovery of an inconsistent bitmap: usable and recording again,
 * every bit set (nothing written while it was stale can be missed);
 * persistent as it was, so the format stores it at the next clean close.
 */
void dirty_bitmap_recover(DirtyBitmap *bm);
void dirty_bitmap_set_busy(DirtyBitmap *bm, bool busy);
void dirty_bitmap_set_readonly(DirtyBitmap *bm, bool readonly);

/* Refuse (QEMU's message, -1) what flags forbid; 0 if allowed. */
int dirty_bitmap_check(const DirtyBitmap *bm, unsigned flags, GError **errp);

/* Bytes: the chunks touched by [offset, offset + bytes). */
void dirty_bitmap_set(DirtyBitmap *bm, int64_t offset, int64_t bytes);
void dirty_bitmap_reset(DirtyBitmap *bm, int64_t offset, int64_t bytes);
void dirty_bitmap_clear(DirtyBitmap *bm);
/*
 * Undo for transactions: a copy of the bits now (hbitmap_free it when no
 * longer needed), and putting such a copy back (bm must not have been
 * resized in between; restore takes the copy).
 */
HBitmap *dirty_bitmap_backup(const DirtyBitmap *bm);
void dirty_bitmap_restore(DirtyBitmap *bm, HBitmap *backup);
bool dirty_bitmap_get(const DirtyBitmap *bm, int64_t offset);
/* First dirty (clean) byte offset in [offset, offset + bytes), or -1. */
int64_t dirty_bitmap_next_dirty(const DirtyBitmap *bm, int64_t offset,
                                int64_t bytes);
int64_t dirty_bitmap_next_clean(const DirtyBitmap *bm, int64_t offset,
                                int64_t bytes);
/* Dirty bytes: whole chunks, the last one even past the end (QEMU's). */
int64_t dirty_bitmap_count(const DirtyBitmap *bm);
/* x-debug-block-dirty-bitmap-sha256's answer (hbitmap_sha256); g_free. */
char *dirty_bitmap_sha256(const DirtyBitmap *bm);
/* dst |= src (any granularities, same size); QEMU's checks and message. */
bool dirty_bitmap_merge(DirtyBitmap *dst, const DirtyBitmap *src,
                        GError **errp);
/* Follow the node's new length (resize). */
void node_dirty_bitmaps_truncate(BlockNode *bs, int64_t bytes);
/* Mark [offset, offset + bytes) in every recording bitmap (io.c). */
void node_set_dirty(BlockNode *bs, int64_t offset, int64_t bytes);

/*
 * Serialisation for formats: `coverage` is how many disk bytes `len`
 * bytes of serialised bitmap describe; parts start on a multiple of
 * 8 * granularity bytes.  Deserialised parts replace what they cover.
 */
int64_t dirty_bitmap_serialization_coverage(const DirtyBitmap *bm,
                                            uint64_t len);
uint64_t dirty_bitmap_serialization_size(const DirtyBitmap *bm,
                                         int64_t offset, int64_t bytes);
void dirty_bitmap_serialize_part(const DirtyBitmap *bm, uint8_t *buf,
                                 int64_t offset, int64_t bytes);
void dirty_bitmap_deserialize_part(DirtyBitmap *bm, const uint8_t *buf,
                                   int64_t offset, int64_t bytes);
void dirty_bitmap_deserialize_ones(DirtyBitmap *bm, int64_t offset,
                                   int64_t bytes);

/* ---- Management (QEMU's block-dirty-bitmap-* semantics) ---- */

/*
 * granularity 0: the default (the node's cluster size within 4 KiB ..
 * 64 KiB, else 64 KiB).  persistent asks the format whether it can store
 * one more such bitmap.
 */
bool node_dirty_bitmap_add(BlockNode *bs, const char *name,
                           uint32_t granularity, bool persistent,
                           bool disabled, GError **errp);
/* Also deletes a persistent bitmap from the image at once. */
bool node_dirty_bitmap_remove(BlockNode *bs, const char *name, GError **errp);
/*
 * remove's first half (the transaction action's prepare): the checks, and
 * a persistent bitmap deleted from the image; the bitmap itself is left
 * in memory (still persistent, so stored again at close unless released).
 */
DirtyBitmap *node_dirty_bitmap_unstore(BlockNode *bs, const char *name,
                                       GError **errp);
bool node_dirty_bitmap_clear(BlockNode *bs, const char *name, GError **errp);
bool node_dirty_bitmap_enable(BlockNode *bs, const char *name, GError **errp);
bool node_dirty_bitmap_disable(BlockNode *bs, const char *name,
                               GError **errp);
/* Merge src_bs's bitmap src_name into bs's bitmap target. */
bool node_dirty_bitmap_merge(BlockNode *bs, const char *target,
                             BlockNode *src_bs, const char *src_name,
                             GError **errp);
/*
 * x-strata-block-dirty-bitmap-recover: checks (busy, read-only, "is not
 * inconsistent"), then dirty_bitmap_recover().  *backup (if backup is not
 * NULL) gets the bits before, for a transaction's undo
 * (dirty_bitmap_unrecover).
 */
DirtyBitmap *node_dirty_bitmap_recover(BlockNode *bs, const char *name,
                                       HBitmap **backup, GError **errp);
/* Undo node_dirty_bitmap_recover: the bits back, inconsistent again. */
void dirty_bitmap_unrecover(DirtyBitmap *bm, HBitmap *backup);
/*
 * x-strata-block-dirty-bitmap-copy: a new bitmap target_name of target_bs
 * holding src's bits (src may be of another node of the same length);
 * granularity 0 keeps src's, another one gets src's bits merged into a
 * bitmap of that granularity.  src must be usable (not busy, not
 * inconsistent; read-only is fine).  The new bitmap, or NULL.
 */
DirtyBitmap *node_dirty_bitmap_copy(const DirtyBitmap *src,
                                    BlockNode *target_bs,
                                    const char *target_name,
                                    uint32_t granularity, bool persistent,
                                    bool disabled, GError **errp);
/*
 * Bytes the persistent bitmaps of bs would take in a qcow2 image with
 * this cluster size (measure): every data cluster, the bitmap tables and
 * the directory, as QEMU counts them.
 */
uint64_t dirty_bitmaps_qcow2_size(BlockNode *bs, uint64_t cluster_size);
/*
 * Successors (QEMU's), for a job that owns a bitmap (backup's sync
 * bitmap): create_successor makes the bitmap busy and frozen, and an
 * anonymous bitmap on the same node records the writes meanwhile (it
 * records if the parent did: dirty_bitmap_recording() answers for both).
 * At the end either abdicate (the successor takes the name and
 * persistence, the parent goes: only writes since the job began stay) or
 * reclaim (the successor is merged into the parent, which gets back its
 * recording state).  Both return the bitmap that stays.
 */
bool dirty_bitmap_recording(const DirtyBitmap *bm);
DirtyBitmap *dirty_bitmap_successor(const DirtyBitmap *bm);  /* or NULL */
bool dirty_bitmap_create_successor(DirtyBitmap *bm, GError **errp);
DirtyBitmap *dirty_bitmap_abdicate(DirtyBitmap *bm);
DirtyBitmap *dirty_bitmap_reclaim(DirtyBitmap *bm);
/* dst |= src without the user's checks (busy bitmaps too), any
 * granularities, same size: a dirty chunk of src marks every chunk of
 * dst it touches. */
void dirty_bitmap_merge_internal(DirtyBitmap *dst, const DirtyBitmap *src);

/* The format can keep bitmaps in the image (qcow2 v3). */
bool node_supports_persistent_dirty_bitmap(BlockNode *bs);

#endif
