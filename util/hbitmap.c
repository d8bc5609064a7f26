/*
 * The hierarchical bitmap (see strata/hbitmap.h).
 *
 * Level 0 holds the bits; level k + 1 has one bit per 64-bit word of
 * level k, set exactly when that word is not zero.  The top level is one
 * word.  Every change to a word of level 0 that turns it from zero to
 * non-zero or back walks up only as far as the summary changes, so setting
 * or clearing a run costs one pass over its words.
 */
#include <endian.h>
#include <stdlib.h>
#include <string.h>

#include <glib.h>

#include "strata/hbitmap.h"

#define HB_MAX_LEVELS 12 /* 64^11 words: more than 2^64 bits */

struct HBitmap {
    uint64_t size;                /* bits */
    uint64_t count;               /* bits set */
    unsigned nlevels;
    uint64_t nwords[HB_MAX_LEVELS];
    uint64_t *lv[HB_MAX_LEVELS];
};

static uint64_t words_for(uint64_t bits)
{
    return bits / 64 + (bits % 64 != 0);
}

static void free_levels(HBitmap *hb)
{
    for (unsigned k = 0; k < hb->nlevels; k++) {
        g_free(hb->lv[k]);
        hb->lv[k] = NULL;
    }
}

/* Allocate clear levels for nbits; false (nothing allocated) on ENOMEM. */
static bool alloc_levels(HBitmap *hb, uint64_t nbits)
{
    uint64_t n = MAX(words_for(nbits), 1);
    unsigned k = 0;

    for (;;) {
        hb->nwords[k] = n;
        hb->lv[k] = g_try_new0(uint64_t, n);
        if (!hb->lv[k]) {
            hb->nlevels = k;
            free_levels(hb);
            return false;
        }
        k++;
        if (n == 1) {
            break;
        }
        n = words_for(n);
    }
    hb->nlevels = k;
    hb->size = nbits;
    hb->count = 0;
    return true;
}

HBitmap *hbitmap_new(uint64_t nbits)
{
    HBitmap *hb = g_new0(HBitmap, 1);

    if (!alloc_levels(hb, nbits)) {
        g_free(hb);
        return NULL;
    }
    return hb;
}

void hbitmap_free(HBitmap *hb)
{
    if (hb) {
        free_levels(hb);
        g_free(hb);
    }
}

HBitmap *hbitmap_copy(const HBitmap *hb)
{
    HBitmap *c = hbitmap_new(hb->size);

    if (c) {
        for (unsigned k = 0; k < hb->nlevels; k++) {
            memcpy(c->lv[k], hb->lv[k], hb->nwords[k] * 8);
        }
        c->count = hb->count;
    }
    return c;
}

uint64_t hbitmap_size(const HBitmap *hb)
{
    return hb->size;
}

uint64_t hbitmap_count(const HBitmap *hb)
{
    return hb->count;
}

bool hbitmap_get(const HBitmap *hb, uint64_t bit)
{
    return bit < hb->size && (hb->lv[0][bit / 64] >> (bit % 64)) & 1;
}

/* Word w of level k became non-zero (or zero): tell the levels above. */
static void summary_set(HBitmap *hb, unsigned k, uint64_t w)
{
    while (k + 1 < hb->nlevels) {
        uint64_t *p = &hb->lv[k + 1][w / 64];
        bool was_empty = *p == 0;
        *p |= 1ull << (w % 64);
        if (!was_empty) {
            return;
        }
        k++;
        w /= 64;
    }
}

static void summary_clear(HBitmap *hb, unsigned k, uint64_t w)
{
    while (k + 1 < hb->nlevels) {
        uint64_t *p = &hb->lv[k + 1][w / 64];
        *p &= ~(1ull << (w % 64));
        if (*p) {
            return;
        }
        k++;
        w /= 64;
    }
}

/* Give leaf word w a new value, keeping the count and the summary. */
static void store_word(HBitmap *hb, uint64_t w, uint64_t v)
{
    uint64_t old = hb->lv[0][w];

    if (old == v) {
        return;
    }
    hb->lv[0][w] = v;
    hb->count += (uint64_t)__builtin_popcountll(v);
    hb->count -= (uint64_t)__builtin_popcountll(old);
    if (!old) {
        summary_set(hb, 0, w);
    } else if (!v) {
        summary_clear(hb, 0, w);
    }
}

/* Mask of the bits of word w inside [start, end). */
static uint64_t range_mask(uint64_t w, uint64_t start, uint64_t end)
{
    uint64_t lo = w * 64, m = ~0ull;

    if (start > lo) {
        m &= ~0ull << (start - lo);
    }
    if (end < lo + 64) {
        m &= ~0ull >> (lo + 64 - end);
    }
    return m;
}

static void change_range(HBitmap *hb, uint64_t start, uint64_t count,
                         bool set)
{
    uint64_t end;

    if (start >= hb->size || count == 0) {
        return;
    }
    end = count > hb->size - start ? hb->size : start + count;
    for (uint64_t w = start / 64; w <= (end - 1) / 64; w++) {
        uint64_t m = range_mask(w, start, end);
        uint64_t v = hb->lv[0][w];
        store_word(hb, w, set ? v | m : v & ~m);
    }
}

void hbitmap_set(HBitmap *hb, uint64_t start, uint64_t count)
{
    change_range(hb, start, count, true);
}

void hbitmap_reset(HBitmap *hb, uint64_t start, uint64_t count)
{
    change_range(hb, start, count, false);
}

void hbitmap_reset_all(HBitmap *hb)
{
    for (unsigned k = 0; k < hb->nlevels; k++) {
        memset(hb->lv[k], 0, hb->nwords[k] * 8);
    }
    hb->count = 0;
}

/* The first set bit of level k at or after idx, or -1. */
static int64_t find_set(const HBitmap *hb, unsigned k, uint64_t idx)
{
    uint64_t nbits = k ? hb->nwords[k - 1] : hb->size;

    while (idx < nbits) {
        uint64_t w = idx / 64;
        uint64_t v = hb->lv[k][w] & (~0ull << (idx % 64));
        int64_t next;

        if (v) {
            return (int64_t)(w * 64 + (uint64_t)__builtin_ctzll(v));
        }
        if (k + 1 >= hb->nlevels) {
            return -1;
        }
        /* The summary says which later word has anything. */
        next = find_set(hb, k + 1, w + 1);
        if (next < 0) {
            return -1;
        }
        idx = (uint64_t)next * 64;
    }
    return -1;
}

int64_t hbitmap_next_set(const HBitmap *hb, uint64_t start, uint64_t count)
{
    uint64_t end;
    int64_t r;

    if (start >= hb->size || count == 0) {
        return -1;
    }
    end = count > hb->size - start ? hb->size : start + count;
    r = find_set(hb, 0, start);
    return r >= 0 && (uint64_t)r < end ? r : -1;
}

int64_t hbitmap_next_clear(const HBitmap *hb, uint64_t start, uint64_t count)
{
    uint64_t end, w, v;

    if (start >= hb->size || count == 0) {
        return -1;
    }
    end = count > hb->size - start ? hb->size : start + count;
    w = start / 64;
    v = ~hb->lv[0][w] & (~0ull << (start % 64));
    while (!v) {
        if (++w >= hb->nwords[0] || w * 64 >= end) {
            return -1;
        }
        v = ~hb->lv[0][w];
    }
    w = w * 64 + (uint64_t)__builtin_ctzll(v);
    return w < end ? (int64_t)w : -1;
}

bool hbitmap_truncate(HBitmap *hb, uint64_t nbits)
{
    HBitmap n = { 0 };
    uint64_t keep;

    if (!alloc_levels(&n, nbits)) {
        return false;
    }
    keep = MIN(hb->nwords[0], n.nwords[0]);
    for (uint64_t w = 0; w < keep; w++) {
        uint64_t v = hb->lv[0][w];
        if (w == n.nwords[0] - 1 && nbits % 64) {
            v &= ~0ull >> (64 - nbits % 64);
        }
        store_word(&n, w, v);
    }
    free_levels(hb);
    *hb = n;
    return true;
}

/* The first non-zero word of level 0 at or after w, or -1. */
static int64_t next_nonzero_word(const HBitmap *hb, uint64_t w)
{
    if (hb->nlevels == 1) {
        return w == 0 && hb->lv[0][0] ? 0 : -1;
    }
    return find_set(hb, 1, w);
}

void hbitmap_merge(HBitmap *dst, const HBitmap *src)
{
    g_assert(dst->size == src->size);
    for (int64_t w = next_nonzero_word(src, 0); w >= 0;
         w = next_nonzero_word(src, (uint64_t)w + 1)) {
        store_word(dst, (uint64_t)w, dst->lv[0][w] | src->lv[0][w]);
    }
}

uint64_t hbitmap_serialized_bytes(uint64_t count)
{
    return count / 8 + (count % 8 != 0);
}

void hbitmap_serialize(const HBitmap *hb, uint8_t *buf, uint64_t start,
                       uint64_t count)
{
    uint64_t nbytes = hbitmap_serialized_bytes(count);

    g_assert(start % 8 == 0);
    for (uint64_t i = 0; i < nbytes; i++) {
        uint64_t bit = start + i * 8;
        uint8_t b = 0;

        if (bit % 64 == 0 && i + 8 <= nbytes - (count % 8 != 0) &&
            bit / 64 < hb->nwords[0]) {
            /* A whole word at once (bits past the size are clear). */
            uint64_t v = htole64(hb->lv[0][bit / 64]);
            memcpy(buf + i, &v, 8);
            i += 7;
            continue;
        }

        if (bit / 64 < hb->nwords[0]) {
            b = (uint8_t)(hb->lv[0][bit / 64] >> (bit % 64));
        }
        if (i == nbytes - 1 && count % 8) {
            b &= (uint8_t)((1u << (count % 8)) - 1);
        }
        buf[i] = b;
    }
}

void hbitmap_deserialize(HBitmap *hb, const uint8_t *buf, uint64_t start,
                         uint64_t count)
{
    uint64_t end;

    g_assert(start % 8 == 0);
    if (start >= hb->size || count == 0) {
        return;
    }
    end = count > hb->size - start ? hb->size : start + count;
    for (uint64_t w = start / 64; w <= (end - 1) / 64; w++) {
        uint64_t m = range_mask(w, start, end);
        uint64_t v = 0;

        if (m == ~0ull && start % 64 == 0) {
            /* A whole word, and the buffer is word-aligned to the bits. */
            memcpy(&v, buf + (w * 64 - start) / 8, 8);
            store_word(hb, w, le64toh(v));
            continue;
        }
        for (unsigned j = 0; j < 8; j++) {
            uint64_t bit = w * 64 + j * 8;
            if (bit >= start && bit < end) {
                v |= (uint64_t)buf[(bit - start) / 8] << (j * 8);
            }
        }
        store_word(hb, w, (hb->lv[0][w] & ~m) | (v & m));
    }
}

char *hbitmap_sha256(const HBitmap *hb)
{
    GChecksum *c = g_checksum_new(G_CHECKSUM_SHA256);
    char *hex;

    for (uint64_t w = 0; w < hb->nwords[0]; w++) {
        uint64_t v = htole64(hb->lv[0][w]);
        g_checksum_update(c, (const guchar *)&v, 8);
    }
    hex = g_strdup(g_checksum_get_string(c));
    g_checksum_free(c);
    return hex;
}
