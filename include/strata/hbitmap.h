/*
 * A hierarchical bitmap: a flat array of bits (the leaves) with summary
 * levels above it, where bit i of level k+1 says whether word i of level k
 * has any bit set.  Searches for the next set bit skip empty stretches a
 * level up (64 words at a time, then 4096, ...), so a nearly empty bitmap
 * over a huge disk is walked in a few steps; a count of set bits is kept
 * up to date by every change.
 *
 * Indexes are bit numbers; a dirty bitmap (strata/dirty-bitmap.h) maps
 * byte ranges of a disk to them with its granularity.  Bits past the size
 * are never set.  Not thread-safe: one owner, one thread.
 *
 * Serialisation is the on-disk order of qcow2 bitmaps (and QEMU's
 * migration stream): bit i is bit (i % 8) of byte i / 8, least significant
 * first, whatever the host's byte order.
 */
#ifndef STRATA_HBITMAP_H
#define STRATA_HBITMAP_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef struct HBitmap HBitmap;

/* A bitmap of nbits clear bits; NULL if the memory cannot be had. */
HBitmap *hbitmap_new(uint64_t nbits);
void hbitmap_free(HBitmap *hb);
HBitmap *hbitmap_copy(const HBitmap *hb);

uint64_t hbitmap_size(const HBitmap *hb);
/* How many bits are set. */
uint64_t hbitmap_count(const HBitmap *hb);
bool hbitmap_get(const HBitmap *hb, uint64_t bit);

/* Set or clear [start, start + count), cut at the size. */
void hbitmap_set(HBitmap *hb, uint64_t start, uint64_t count);
void hbitmap_reset(HBitmap *hb, uint64_t start, uint64_t count);
void hbitmap_reset_all(HBitmap *hb);

/*
 * The first set (next_set) or clear (next_clear) bit in
 * [start, start + count), or -1 if there is none.
 */
int64_t hbitmap_next_set(const HBitmap *hb, uint64_t start, uint64_t count);
int64_t hbitmap_next_clear(const HBitmap *hb, uint64_t start, uint64_t count);

/* Grow (new bits clear) or shrink (bits past the end dropped). */
bool hbitmap_truncate(HBitmap *hb, uint64_t nbits);

/* dst |= src; both must have the same size. */
void hbitmap_merge(HBitmap *dst, const HBitmap *src);

/*
 * Bytes that hold count bits from start, and the bits themselves (start a
 * multiple of 8).  Bits of the last byte past start + count read as 0 and
 * are ignored on the way in.
 */
uint64_t hbitmap_serialized_bytes(uint64_t count);
void hbitmap_serialize(const HBitmap *hb, uint8_t *buf, uint64_t start,
                       uint64_t count);
void hbitmap_deserialize(HBitmap *hb, const uint8_t *buf, uint64_t start,
                         uint64_t count);

/*
 * SHA-256 of the bits as 64-bit little-endian words, the whole last word
 * included (what QEMU's x-debug-block-dirty-bitmap-sha256 hashes on
 * x86-64), as 64 hex digits; g_free() it.
 */
char *hbitmap_sha256(const HBitmap *hb);

#endif
