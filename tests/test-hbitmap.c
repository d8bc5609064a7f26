/*
 * The hierarchical bitmap against a plain array of booleans: random runs
 * set and cleared, every search and count compared; the qcow2 byte order
 * of serialisation; sizes around word and level boundaries.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <string.h>
#include <cmocka.h>
#include <glib.h>
#include "strata/hbitmap.h"

static int64_t ref_next(const bool *ref, uint64_t size, uint64_t start,
                        uint64_t count, bool want)
{
    uint64_t end = count > size - MIN(start, size) ? size : start + count;
    for (uint64_t i = start; i < end; i++) {
        if (ref[i] == want) {
            return (int64_t)i;
        }
    }
    return -1;
}

static void compare(const HBitmap *hb, const bool *ref, uint64_t size,
                    GRand *r)
{
    uint64_t n = 0;
    for (uint64_t i = 0; i < size; i++) {
        n += ref[i];
        assert_int_equal(hbitmap_get(hb, i), ref[i]);
    }
    assert_int_equal(hbitmap_count(hb), n);
    for (int k = 0; k < 50; k++) {
        uint64_t s = (uint64_t)g_rand_int_range(r, 0, (gint32)size + 1);
        uint64_t c = (uint64_t)g_rand_int_range(r, 0, (gint32)size + 70);
        assert_int_equal(hbitmap_next_set(hb, s, c),
                         ref_next(ref, size, s, c, true));
        assert_int_equal(hbitmap_next_clear(hb, s, c),
                         ref_next(ref, size, s, c, false));
    }
}

static void random_ops(uint64_t size, guint32 seed)
{
    GRand *r = g_rand_new_with_seed(seed);
    HBitmap *hb = hbitmap_new(size);
    bool *ref = g_new0(bool, size + 1);

    for (int op = 0; op < 200; op++) {
        uint64_t s = (uint64_t)g_rand_int_range(r, 0, (gint32)size + 1);
        uint64_t c = (uint64_t)g_rand_int_range(r, 0, (gint32)size / 3 + 2);
        bool set = g_rand_boolean(r);
        if (set) {
            hbitmap_set(hb, s, c);
        } else {
            hbitmap_reset(hb, s, c);
        }
        for (uint64_t i = s; i < s + c && i < size; i++) {
            ref[i] = set;
        }
        if (op % 20 == 0) {
            compare(hb, ref, size, r);
        }
    }
    compare(hb, ref, size, r);

    /* A copy, serialised and read back into a fresh bitmap. */
    uint64_t nbytes = hbitmap_serialized_bytes(size);
    uint8_t *buf = g_malloc0(nbytes + 1);
    hbitmap_serialize(hb, buf, 0, size);
    for (uint64_t i = 0; i < size; i++) {
        assert_int_equal((buf[i / 8] >> (i % 8)) & 1, ref[i]);
    }
    /* Parts at random byte-aligned places, read back into a copy. */
    HBitmap *parts = hbitmap_new(size);
    for (int k = 0; k < 20; k++) {
        uint64_t s0 = (uint64_t)g_rand_int_range(r, 0, (gint32)size) & ~7ull;
        uint64_t c = (uint64_t)g_rand_int_range(r, 1, (gint32)(size - s0) + 1);
        uint8_t *part = g_malloc0(hbitmap_serialized_bytes(c));
        hbitmap_serialize(hb, part, s0, c);
        for (uint64_t i = 0; i < c; i++) {
            assert_int_equal((part[i / 8] >> (i % 8)) & 1, ref[s0 + i]);
        }
        hbitmap_deserialize(parts, part, s0, c);
        for (uint64_t i = 0; i < c; i++) {
            assert_int_equal(hbitmap_get(parts, s0 + i), ref[s0 + i]);
        }
        g_free(part);
    }
    hbitmap_free(parts);

    HBitmap *back = hbitmap_new(size);
    hbitmap_set(back, 0, size); /* overwritten by the data */
    hbitmap_deserialize(back, buf, 0, size);
    compare(back, ref, size, r);

    /* Merge into a bitmap with other bits. */
    HBitmap *m = hbitmap_new(size);
    bool *mref = g_new0(bool, size + 1);
    if (size > 2) {
        hbitmap_set(m, size / 2, 1);
        mref[size / 2] = true;
    }
    hbitmap_merge(m, hb);
    for (uint64_t i = 0; i < size; i++) {
        mref[i] |= ref[i];
    }
    compare(m, mref, size, r);

    /* Shrink, then grow: the cut bits are gone. */
    uint64_t cut = size / 2 + 1;
    assert_true(hbitmap_truncate(hb, cut));
    assert_true(hbitmap_truncate(hb, size));
    for (uint64_t i = cut; i < size; i++) {
        ref[i] = false;
    }
    compare(hb, ref, size, r);

    hbitmap_reset_all(hb);
    memset(ref, 0, size);
    compare(hb, ref, size, r);

    hbitmap_free(m);
    hbitmap_free(back);
    hbitmap_free(hb);
    g_free(mref);
    g_free(buf);
    g_free(ref);
    g_rand_free(r);
}

static void test_random_small(void **state)
{
    (void)state;
    static const uint64_t sizes[] = { 1, 7, 63, 64, 65, 127, 128, 1000 };
    for (size_t i = 0; i < G_N_ELEMENTS(sizes); i++) {
        random_ops(sizes[i], (guint32)i + 1);
    }
}

static void test_random_levels(void **state)
{
    (void)state;
    /* Three and four levels: 64 * 64 and 64^3 words. */
    random_ops(64 * 64 * 64 + 5, 11);
    random_ops(64 * 64 * 64 * 3 + 64, 12);
}

static void test_byte_order(void **state)
{
    (void)state;
    HBitmap *hb = hbitmap_new(100);
    uint8_t buf[13] = { 0 };

    hbitmap_set(hb, 0, 1);
    hbitmap_set(hb, 9, 2);
    hbitmap_set(hb, 63, 2);
    hbitmap_set(hb, 99, 1);
    hbitmap_serialize(hb, buf, 0, 100);
    assert_int_equal(buf[0], 0x01);
    assert_int_equal(buf[1], 0x06);
    assert_int_equal(buf[7], 0x80);
    assert_int_equal(buf[8], 0x01);
    assert_int_equal(buf[12], 0x08);

    /* A part: from bit 64 on. */
    uint8_t part[5] = { 0 };
    hbitmap_serialize(hb, part, 64, 36);
    assert_int_equal(part[0], 0x01);
    assert_int_equal(part[4], 0x08);

    /* Bits past the end in the data are ignored. */
    HBitmap *b = hbitmap_new(100);
    uint8_t ones[13];
    memset(ones, 0xff, sizeof(ones));
    hbitmap_deserialize(b, ones, 0, 100);
    assert_int_equal(hbitmap_count(b), 100);
    assert_int_equal(hbitmap_next_clear(b, 0, 1000), -1);
    hbitmap_free(b);
    hbitmap_free(hb);
}

static void test_huge_sparse(void **state)
{
    (void)state;
    /* 2^33 bits (a 4 TiB disk at 512 bytes): a search crosses it quickly. */
    uint64_t size = 1ull << 33;
    HBitmap *hb = hbitmap_new(size);
    assert_non_null(hb);
    assert_int_equal(hbitmap_next_set(hb, 0, size), -1);
    hbitmap_set(hb, size - 3, 1);
    hbitmap_set(hb, 5, 1);
    assert_int_equal(hbitmap_next_set(hb, 0, size), 5);
    assert_int_equal(hbitmap_next_set(hb, 6, size), (int64_t)(size - 3));
    assert_int_equal(hbitmap_next_set(hb, 6, size - 10), -1);
    assert_int_equal(hbitmap_count(hb), 2);
    hbitmap_reset(hb, 0, size);
    assert_int_equal(hbitmap_count(hb), 0);
    assert_int_equal(hbitmap_next_set(hb, 0, size), -1);
    hbitmap_free(hb);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_random_small),
        cmocka_unit_test(test_random_levels),
        cmocka_unit_test(test_byte_order),
        cmocka_unit_test(test_huge_sparse),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
