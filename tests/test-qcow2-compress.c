/*
 * qcow2 cluster compression (block/qcow2/qcow2-compress.c): round trips at
 * every cluster size, incompressible data, corrupt and truncated input,
 * trailing bytes, and compatibility with QEMU in both directions:
 *  - clusters that qemu-img 7.2 compressed (tests/data/qcow2-compress/,
 *    made by make-vectors.py there) decompress to the original bytes, and
 *    our compressor reproduces them byte for byte when the libraries are
 *    the versions qemu-img used;
 *  - what we write decodes with the plain zlib / zstd calls QEMU makes
 *    (raw inflate with a 4 KiB window; zstd streaming).
 *
 * The file under test is included so the test does not depend on how the
 * library is assembled.
 */
#include <errno.h>
#include <limits.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <cmocka.h>
#include <glib.h>

#include "../block/qcow2/qcow2-compress.c"
#include "strata/coroutine.h"
#include "strata/loop.h"

#define ZLIB QCOW2_COMPRESSION_ZLIB
#define ZSTD QCOW2_COMPRESSION_ZSTD

static const size_t cluster_sizes[] = {
    512, 4096, 65536, 1024 * 1024, 2 * 1024 * 1024,
};

/* ---- data ---- */

static uint32_t rng_next(uint32_t *s)
{
    /* xorshift32: deterministic, so failures reproduce. */
    *s ^= *s << 13;
    *s ^= *s >> 17;
    *s ^= *s << 5;
    return *s;
}

/* Text-like data: compresses well but not trivially. */
static void fill_words(uint8_t *buf, size_t len, uint32_t seed)
{
    static const char *words[] = {
        "cluster ", "refcount ", "qcow2 ", "snapshot ", "backing ",
        "L2 ", "table ", "zero ", "sector\n", "image ", "bitmap ", "data ",
    };
    uint32_t s = seed ? seed : 1;
    size_t i = 0;
    while (i < len) {
        const char *w = words[rng_next(&s) % G_N_ELEMENTS(words)];
        for (; *w && i < len; w++) {
            buf[i++] = *w;
        }
    }
}

static void fill_random(uint8_t *buf, size_t len, uint32_t seed)
{
    uint32_t s = seed ? seed : 1;
    for (size_t i = 0; i < len; i++) {
        buf[i] = rng_next(&s) >> 24;
    }
}

/* The image pattern of make-vectors.py: a 32-byte line per 512 bytes. */
static void fill_vector_pattern(uint8_t *buf, uint64_t offset, size_t len)
{
    for (size_t k = 0; k < len; k++) {
        uint64_t i = offset + k;
        char line[33];
        int n = snprintf(line, sizeof(line), "qcow2 cluster vector %08x -\n",
                         (unsigned)(i / 512));
        assert_int_equal(n, 32);
        buf[k] = line[i % 32];
    }
}

/* ---- helpers ---- */

/*
 * Compress into a buffer of exactly dest_len bytes (so ASan sees any
 * overrun) and check that nothing was written past what was returned.
 */
static ssize_t compress_exact(int type, uint8_t **out, size_t dest_len,
                              const uint8_t *src, size_t src_len)
{
    uint8_t *dest = g_malloc(dest_len ? dest_len : 1);
    memset(dest, 0xa5, dest_len);
    ssize_t ret = qcow2_compress(type, dest, dest_len, src, src_len);
    *out = dest;
    return ret;
}

static int decompress_exact(int type, uint8_t **out, size_t dest_len,
                            const uint8_t *src, size_t src_len)
{
    uint8_t *dest = g_malloc(dest_len);
    int ret = qcow2_decompress(type, dest, dest_len, src, src_len);
    *out = dest;
    return ret;
}

/* A copy of src in a heap buffer of exactly len bytes. */
static uint8_t *dup_exact(const uint8_t *src, size_t len)
{
    uint8_t *p = g_malloc(len ? len : 1);
    memcpy(p, src, len);
    return p;
}

static void round_trip(int type, const uint8_t *data, size_t cs)
{
    uint8_t *comp, *back;
    ssize_t clen = compress_exact(type, &comp, cs - 1, data, cs);
    assert_true(clen > 0);
    assert_true((size_t)clen < cs - 1);

    /* Exactly the stream, then the same stream with sector padding. */
    uint8_t *exact = dup_exact(comp, clen);
    assert_int_equal(decompress_exact(type, &back, cs, exact, clen), 0);
    assert_memory_equal(back, data, cs);
    g_free(back);

    size_t padded = (clen + 511) / 512 * 512;
    uint8_t *pad = g_malloc0(padded);
    memcpy(pad, comp, clen);
    assert_int_equal(decompress_exact(type, &back, cs, pad, padded), 0);
    assert_memory_equal(back, data, cs);
    g_free(back);
    g_free(pad);
    g_free(exact);
    g_free(comp);
}

/* ---- round trips ---- */

static void test_round_trip(void **state)
{
    int types[] = { ZLIB, ZSTD };
    for (size_t t = 0; t < G_N_ELEMENTS(types); t++) {
        for (size_t i = 0; i < G_N_ELEMENTS(cluster_sizes); i++) {
            size_t cs = cluster_sizes[i];
            uint8_t *data = g_malloc(cs);

            fill_words(data, cs, 7 + i);
            round_trip(types[t], data, cs);

            /* Mostly zeroes with a little data, as in a sparse guest. */
            memset(data, 0, cs);
            fill_random(data + cs / 3, cs / 16, 3);
            round_trip(types[t], data, cs);

            /* All zeroes: the smallest streams. */
            memset(data, 0, cs);
            round_trip(types[t], data, cs);
            g_free(data);
        }
    }
}

/* ---- incompressible data, small buffers ---- */

static void test_enospc(void **state)
{
    int types[] = { ZLIB, ZSTD };
    for (size_t t = 0; t < G_N_ELEMENTS(types); t++) {
        for (size_t i = 0; i < G_N_ELEMENTS(cluster_sizes); i++) {
            size_t cs = cluster_sizes[i];
            uint8_t *data = g_malloc(cs), *out;

            /* QEMU offers cluster_size - 1: random data never fits. */
            fill_random(data, cs, 11 + i);
            assert_int_equal(compress_exact(types[t], &out, cs - 1, data, cs),
                             -ENOSPC);
            g_free(out);

            /* Compressible data, but dest far too small (and empty). */
            fill_words(data, cs, 5);
            for (size_t dl = 0; dl < 24; dl += 7) {
                assert_int_equal(compress_exact(types[t], &out, dl, data, cs),
                                 -ENOSPC);
                g_free(out);
            }
            /* The codec is usable again after a failure. */
            round_trip(types[t], data, cs);
            g_free(data);
        }
    }
}

/*
 * The largest result that fits.  zlib's deflate reports a stream that ends
 * exactly at the end of the buffer as unfinished, so QEMU (and we) need one
 * byte more than the stream; zstd fits exactly.  Matching QEMU here decides
 * the same clusters to be stored uncompressed.
 */
static void test_exact_fit(void **state)
{
    size_t cs = 65536;
    uint8_t *data = g_malloc(cs), *out;
    fill_words(data, cs, 21);

    ssize_t clen = compress_exact(ZLIB, &out, cs - 1, data, cs);
    assert_true(clen > 0);
    g_free(out);
    assert_int_equal(compress_exact(ZLIB, &out, clen + 1, data, cs), clen);
    g_free(out);
    assert_int_equal(compress_exact(ZLIB, &out, clen, data, cs), -ENOSPC);
    g_free(out);

    clen = compress_exact(ZSTD, &out, cs - 1, data, cs);
    assert_true(clen > 0);
    g_free(out);
    assert_int_equal(compress_exact(ZSTD, &out, clen, data, cs), clen);
    g_free(out);
    assert_int_equal(compress_exact(ZSTD, &out, clen - 1, data, cs), -ENOSPC);
    g_free(out);
    g_free(data);
}

static void test_bad_type(void **state)
{
    uint8_t src[512] = { 0 }, dest[512];
    assert_int_equal(qcow2_compress(2, dest, sizeof(dest), src, sizeof(src)),
                     -EIO);
    assert_int_equal(qcow2_compress(-1, dest, sizeof(dest), src, sizeof(src)),
                     -EIO);
    assert_int_equal(qcow2_decompress(2, dest, sizeof(dest), src, sizeof(src)),
                     -EIO);
    assert_int_equal(qcow2_decompress(255, dest, sizeof(dest), src, 1), -EIO);
}

/* ---- corrupt and truncated input ---- */

/* What a cut stream may decode to. */
enum { CUT_FAILS, CUT_MAY_WORK, CUT_UNCHECKED };

static void check_cut(int type, const uint8_t *comp, size_t cut, size_t pad,
                      const uint8_t *data, size_t cs, int expect)
{
    uint8_t *part = g_malloc0(cut + pad ? cut + pad : 1), *back;
    memcpy(part, comp, cut);
    int r = decompress_exact(type, &back, cs, part, cut + pad);
    if (expect == CUT_FAILS) {
        assert_int_equal(r, -EIO);
    } else {
        assert_true(r == 0 || r == -EIO);
        if (expect == CUT_MAY_WORK && r == 0) {
            assert_memory_equal(back, data, cs);
        }
    }
    g_free(back);
    g_free(part);
}

static void test_truncated(void **state)
{
    int types[] = { ZLIB, ZSTD };
    size_t cs = 65536;
    uint8_t *data = g_malloc(cs), *comp;
    fill_words(data, cs, 9);
    for (size_t t = 0; t < G_N_ELEMENTS(types); t++) {
        ssize_t clen = compress_exact(types[t], &comp, cs - 1, data, cs);
        assert_true(clen > 16);
        size_t cuts[] = { 0, 1, 4, 5, 13, clen / 2, clen - 8, clen - 2,
                          clen - 1 };
        for (size_t c = 0; c < G_N_ELEMENTS(cuts); c++) {
            bool zlib_tail = types[t] == ZLIB && cuts[c] >= (size_t)clen - 2;
            bool zlib_late = types[t] == ZLIB && cuts[c] >= (size_t)clen / 2;
            /*
             * Exactly the cut bytes: the cluster misses data, except that
             * the last bytes of a deflate stream may hold nothing but the
             * end-of-block code, which QEMU's reader does not need once the
             * cluster is full.
             */
            check_cut(types[t], comp, cuts[c], 0, data, cs,
                      zlib_tail ? CUT_MAY_WORK : CUT_FAILS);
            /*
             * Padded with zeroes, as on disk: raw deflate has no checksum
             * and zero bits are valid Huffman codes, so a late cut can
             * decode to wrong data that no reader (QEMU's neither) can
             * tell; zstd's block sizes expose it.
             */
            check_cut(types[t], comp, cuts[c], 512, data, cs,
                      zlib_late ? CUT_UNCHECKED : CUT_FAILS);
        }
        g_free(comp);
    }
    g_free(data);
}

static void test_garbage(void **state)
{
    size_t cs = 4096;
    uint8_t *junk = g_malloc(cs), *back;

    /* 0xff: a deflate block of the reserved type 3; no zstd magic. */
    memset(junk, 0xff, cs);
    assert_int_equal(decompress_exact(ZLIB, &back, cs, junk, cs), -EIO);
    g_free(back);
    assert_int_equal(decompress_exact(ZSTD, &back, cs, junk, cs), -EIO);
    g_free(back);

    /* Zeroes: a stored deflate block with a bad length check. */
    memset(junk, 0, cs);
    assert_int_equal(decompress_exact(ZLIB, &back, cs, junk, cs), -EIO);
    g_free(back);
    assert_int_equal(decompress_exact(ZSTD, &back, cs, junk, cs), -EIO);
    g_free(back);

    /* Random bytes. */
    for (uint32_t seed = 1; seed < 50; seed++) {
        fill_random(junk, cs, seed);
        assert_int_equal(decompress_exact(ZLIB, &back, cs, junk, cs), -EIO);
        g_free(back);
        assert_int_equal(decompress_exact(ZSTD, &back, cs, junk, cs), -EIO);
        g_free(back);
    }
    g_free(junk);
}

/* A stream for fewer bytes than the cluster, followed by sector padding. */
static void test_short_stream(void **state)
{
    int types[] = { ZLIB, ZSTD };
    size_t cs = 4096;
    uint8_t data[4096], *comp, *back;
    fill_words(data, cs, 4);
    for (size_t t = 0; t < G_N_ELEMENTS(types); t++) {
        ssize_t clen = compress_exact(types[t], &comp, cs, data, cs - 1);
        assert_true(clen > 0);
        uint8_t *pad = g_malloc0(clen + 600);
        memcpy(pad, comp, clen);
        assert_int_equal(decompress_exact(types[t], &back, cs, pad, clen + 600),
                         -EIO);
        g_free(back);
        g_free(pad);
        g_free(comp);
    }
}

/*
 * A stream for more than a cluster: QEMU's inflate takes the first cluster
 * and ignores the rest, while a zstd frame must end at the cluster size.
 */
static void test_long_stream(void **state)
{
    size_t cs = 4096;
    uint8_t data[8192], *comp, *back;
    fill_words(data, sizeof(data), 8);

    ssize_t clen = compress_exact(ZLIB, &comp, sizeof(data), data, sizeof(data));
    assert_true(clen > 0);
    assert_int_equal(decompress_exact(ZLIB, &back, cs, comp, clen), 0);
    assert_memory_equal(back, data, cs);
    g_free(back);
    g_free(comp);

    clen = compress_exact(ZSTD, &comp, sizeof(data), data, sizeof(data));
    assert_true(clen > 0);
    assert_int_equal(decompress_exact(ZSTD, &back, cs, comp, clen), -EIO);
    g_free(back);
    g_free(comp);
}

/*
 * Every byte of a valid stream replaced by other values: raw deflate and
 * zstd without checksums cannot always notice, but the result is 0 or
 * -EIO and nothing is written outside dest (ASan checks the bounds).
 */
static void test_corrupt_fuzz(void **state)
{
    int types[] = { ZLIB, ZSTD };
    size_t cs = 4096;
    uint8_t data[4096], *comp, *back;
    fill_words(data, cs, 12);
    static const uint8_t values[] = { 0x00, 0xff, 0x80, 0x01, 0x5a };

    for (size_t t = 0; t < G_N_ELEMENTS(types); t++) {
        ssize_t clen = compress_exact(types[t], &comp, cs - 1, data, cs);
        assert_true(clen > 0);
        uint8_t *bad = g_malloc(clen);
        int eio = 0;
        for (ssize_t pos = 0; pos < clen; pos++) {
            for (size_t v = 0; v < sizeof(values); v++) {
                memcpy(bad, comp, clen);
                bad[pos] ^= values[v] ? values[v] : 0x10;
                int r = decompress_exact(types[t], &back, cs, bad, clen);
                assert_true(r == 0 || r == -EIO);
                eio += r == -EIO;
                g_free(back);
            }
        }
        /* Most corruptions are caught. */
        assert_true(eio > clen);
        g_free(bad);
        g_free(comp);
    }
}

/* ---- trailing bytes ---- */

static void test_trailing_garbage(void **state)
{
    int types[] = { ZLIB, ZSTD };
    for (size_t t = 0; t < G_N_ELEMENTS(types); t++) {
        for (size_t i = 0; i < G_N_ELEMENTS(cluster_sizes); i++) {
            size_t cs = cluster_sizes[i];
            uint8_t *data = g_malloc(cs), *comp, *back;
            fill_words(data, cs, 30 + i);
            ssize_t clen = compress_exact(types[t], &comp, cs - 1, data, cs);
            assert_true(clen > 0);
            /* Random bytes, then more than a sector of them. */
            size_t extra[] = { 1, 511, 4096 };
            for (size_t e = 0; e < G_N_ELEMENTS(extra); e++) {
                uint8_t *buf = g_malloc(clen + extra[e]);
                memcpy(buf, comp, clen);
                fill_random(buf + clen, extra[e], 77 + e);
                assert_int_equal(decompress_exact(types[t], &back, cs, buf,
                                                  clen + extra[e]), 0);
                assert_memory_equal(back, data, cs);
                g_free(back);
                g_free(buf);
            }
            g_free(comp);
            g_free(data);
        }
    }
}

/* ---- zstd frame shapes QEMU must read ---- */

static size_t zstd_frame(uint8_t *dest, size_t dest_len, const uint8_t *src,
                         size_t src_len, bool record_size)
{
    ZSTD_CCtx *cctx = ZSTD_createCCtx();
    assert_non_null(cctx);
    assert_false(ZSTD_isError(ZSTD_CCtx_setParameter(
        cctx, ZSTD_c_contentSizeFlag, record_size)));
    ZSTD_outBuffer out = { dest, dest_len, 0 };
    ZSTD_inBuffer in = { src, src_len, 0 };
    /* Streamed in two parts, so zstd cannot know the size up front. */
    ZSTD_inBuffer first = { src, src_len / 2, 0 };
    size_t r = ZSTD_compressStream2(cctx, &out, &first, ZSTD_e_continue);
    assert_false(ZSTD_isError(r));
    in.pos = first.pos;
    do {
        r = ZSTD_compressStream2(cctx, &out, &in, ZSTD_e_end);
        assert_false(ZSTD_isError(r));
    } while (r != 0);
    ZSTD_freeCCtx(cctx);
    return out.pos;
}

static void test_zstd_no_content_size(void **state)
{
    size_t cs = 65536;
    uint8_t *data = g_malloc(cs), *comp = g_malloc(2 * cs), *back;
    fill_words(data, cs, 40);
    size_t clen = zstd_frame(comp, 2 * cs, data, cs, false);
    assert_true(ZSTD_getFrameContentSize(comp, clen) ==
                ZSTD_CONTENTSIZE_UNKNOWN);
    uint8_t *exact = dup_exact(comp, clen);
    assert_int_equal(decompress_exact(ZSTD, &back, cs, exact, clen), 0);
    assert_memory_equal(back, data, cs);
    g_free(back);
    g_free(exact);
    g_free(comp);
    g_free(data);
}

static void test_zstd_multi_frame(void **state)
{
    size_t cs = 65536, half = cs / 2;
    uint8_t *data = g_malloc(cs), *comp = g_malloc(2 * cs), *back;
    fill_words(data, cs, 41);
    size_t l1 = zstd_frame(comp, 2 * cs, data, half, true);
    size_t l2 = zstd_frame(comp + l1, 2 * cs - l1, data + half, half, false);
    memset(comp + l1 + l2, 0, 300);
    assert_int_equal(decompress_exact(ZSTD, &back, cs, comp, l1 + l2 + 300), 0);
    assert_memory_equal(back, data, cs);
    g_free(back);

    /* The first frame alone is too short. */
    assert_int_equal(decompress_exact(ZSTD, &back, cs, comp, l1), -EIO);
    g_free(back);
    g_free(comp);
    g_free(data);
}

/* ---- what QEMU reads from us ---- */

/* QEMU's reader: raw inflate, window 2^12, one Z_FINISH call. */
static void plain_inflate(const uint8_t *src, size_t src_len, uint8_t *dest,
                          size_t cs)
{
    z_stream s;
    memset(&s, 0, sizeof(s));
    assert_int_equal(inflateInit2(&s, -12), Z_OK);
    s.next_in = src;
    s.avail_in = src_len;
    s.next_out = dest;
    s.avail_out = cs;
    assert_int_equal(inflate(&s, Z_FINISH), Z_STREAM_END);
    assert_int_equal(s.total_out, cs);
    assert_int_equal(s.total_in, src_len);
    inflateEnd(&s);
}

static void plain_zstd(const uint8_t *src, size_t src_len, uint8_t *dest,
                       size_t cs)
{
    /* A single frame recording the cluster size, as QEMU writes it. */
    assert_int_equal(ZSTD_findFrameCompressedSize(src, src_len), src_len);
    assert_true(ZSTD_getFrameContentSize(src, src_len) == cs);

    ZSTD_DCtx *d = ZSTD_createDCtx();
    ZSTD_outBuffer out = { dest, cs, 0 };
    ZSTD_inBuffer in = { src, src_len, 0 };
    size_t r;
    do {
        size_t ip = in.pos, op = out.pos;
        r = ZSTD_decompressStream(d, &out, &in);
        assert_false(ZSTD_isError(r));
        assert_true(in.pos > ip || out.pos > op || r == 0);
    } while (r != 0);
    assert_int_equal(out.pos, cs);
    ZSTD_freeDCtx(d);
}

static void test_plain_readers(void **state)
{
    for (size_t i = 0; i < G_N_ELEMENTS(cluster_sizes); i++) {
        size_t cs = cluster_sizes[i];
        uint8_t *data = g_malloc(cs), *back = g_malloc(cs), *comp;
        fill_words(data, cs, 50 + i);

        ssize_t clen = compress_exact(ZLIB, &comp, cs - 1, data, cs);
        assert_true(clen > 0);
        plain_inflate(comp, clen, back, cs);
        assert_memory_equal(back, data, cs);
        g_free(comp);

        clen = compress_exact(ZSTD, &comp, cs - 1, data, cs);
        assert_true(clen > 0);
        plain_zstd(comp, clen, back, cs);
        assert_memory_equal(back, data, cs);
        g_free(comp);
        g_free(back);
        g_free(data);
    }
}

/* ---- QEMU's clusters ---- */

static char *data_dir;

static char *find_data_dir(void)
{
    const char *env = getenv("STRATA_TEST_DATA");
    if (env) {
        return g_build_filename(env, "qcow2-compress", NULL);
    }
    /*
     * The source path as the compiler saw it (relative to the build
     * directory, where meson runs tests), else beside the executable in a
     * build directory inside the source tree.
     */
    char *src_dir = g_path_get_dirname(__FILE__);
    char *exe = g_file_read_link("/proc/self/exe", NULL);
    char *exe_dir = exe ? g_path_get_dirname(exe) : g_strdup(".");
    char *cands[] = {
        g_build_filename(src_dir, "data", "qcow2-compress", NULL),
        g_build_filename(exe_dir, "..", "..", "tests", "data",
                         "qcow2-compress", NULL),
    };
    char *found = NULL;
    for (size_t i = 0; i < G_N_ELEMENTS(cands); i++) {
        char *probe = g_build_filename(cands[i], "VERSIONS", NULL);
        if (!found && g_file_test(probe, G_FILE_TEST_IS_REGULAR)) {
            found = g_strdup(cands[i]);
        }
        g_free(probe);
        g_free(cands[i]);
    }
    g_free(src_dir);
    g_free(exe_dir);
    g_free(exe);
    return found;
}

static int setup_data(void **state)
{
    data_dir = find_data_dir();
    if (!data_dir) {
        fprintf(stderr, "tests/data/qcow2-compress not found "
                "(set STRATA_TEST_DATA to the tests/data directory)\n");
        return -1;
    }
    return 0;
}

static int teardown_data(void **state)
{
    g_free(data_dir);
    return 0;
}

static uint8_t *load_vector(const char *name, size_t *len)
{
    char *path = g_build_filename(data_dir, name, NULL);
    gchar *buf;
    gsize n;
    GError *err = NULL;
    if (!g_file_get_contents(path, &buf, &n, &err)) {
        fail_msg("%s", err->message);
    }
    g_free(path);
    uint8_t *exact = dup_exact((uint8_t *)buf, n);
    g_free(buf);
    *len = n;
    return exact;
}

/* Were the vectors written with the zlib and zstd we run with? */
static bool same_libraries(void)
{
    size_t n;
    uint8_t *v = load_vector("VERSIONS", &n);
    char *text = g_strndup((char *)v, n);
    char *zl = g_strdup_printf("\nzlib %s\n", zlibVersion());
    char *zs = g_strdup_printf("\nzstd %s\n", ZSTD_versionString());
    bool same = strstr(text, zl) && strstr(text, zs);
    if (!same) {
        fprintf(stderr, "note: zlib %s / zstd %s differ from the vectors' "
                "libraries; byte-identity checks skipped\n",
                zlibVersion(), ZSTD_versionString());
    }
    g_free(zl);
    g_free(zs);
    g_free(text);
    g_free(v);
    return same;
}

static void test_qemu_vectors(void **state)
{
    static const struct {
        const char *name;
        int type;
        size_t cs;
    } vecs[] = {
        { "zlib-512.bin", ZLIB, 512 },  { "zlib-4k.bin", ZLIB, 4096 },
        { "zlib-64k.bin", ZLIB, 65536 }, { "zstd-512.bin", ZSTD, 512 },
        { "zstd-4k.bin", ZSTD, 4096 },  { "zstd-64k.bin", ZSTD, 65536 },
    };
    bool identical = same_libraries();

    for (size_t i = 0; i < G_N_ELEMENTS(vecs); i++) {
        size_t cs = vecs[i].cs, vlen;
        uint8_t *vec = load_vector(vecs[i].name, &vlen);
        uint8_t *want = g_malloc(cs), *back, *comp;
        /* The vectors are guest cluster 1 of the image. */
        fill_vector_pattern(want, cs, cs);

        assert_int_equal(decompress_exact(vecs[i].type, &back, cs, vec, vlen),
                         0);
        assert_memory_equal(back, want, cs);
        g_free(back);

        if (identical) {
            /* Reuse of this thread's codec state must not change a byte. */
            uint8_t *other = g_malloc(cs);
            fill_random(other, cs, 99);
            assert_int_equal(compress_exact(vecs[i].type, &comp, cs - 1,
                                            other, cs), -ENOSPC);
            g_free(comp);
            g_free(other);

            ssize_t clen = compress_exact(vecs[i].type, &comp, cs - 1, want,
                                          cs);
            assert_true(clen > 0 && (size_t)clen <= vlen);
            assert_memory_equal(comp, vec, clen);
            g_free(comp);
        }
        g_free(want);
        g_free(vec);
    }
}

/* ---- thread pool, coroutines, threads ---- */

typedef struct CoCase {
    int type;
    size_t cs;
    uint32_t seed;
    int ret;
    int *pending;
} CoCase;

static void co_round_trip(void *opaque)
{
    CoCase *c = opaque;
    uint8_t *data = g_malloc(c->cs), *comp = g_malloc(c->cs - 1);
    uint8_t *back = g_malloc(c->cs);
    fill_words(data, c->cs, c->seed);
    ssize_t clen = qcow2_co_compress(c->type, comp, c->cs - 1, data, c->cs);
    c->ret = clen > 0 ? 0 : -1;
    if (clen > 0) {
        c->ret = qcow2_co_decompress(c->type, back, c->cs, comp, clen);
        if (c->ret == 0 && memcmp(back, data, c->cs) != 0) {
            c->ret = -2;
        }
    }
    /* Errors come back through the pool too. */
    if (c->ret == 0 &&
        qcow2_co_decompress(c->type, back, c->cs, comp, clen / 2) != -EIO) {
        c->ret = -3;
    }
    fill_random(data, c->cs, c->seed);
    if (c->ret == 0 &&
        qcow2_co_compress(c->type, comp, c->cs - 1, data, c->cs) != -ENOSPC) {
        c->ret = -4;
    }
    g_free(back);
    g_free(comp);
    g_free(data);
    (*c->pending)--;
}

static void test_coroutine(void **state)
{
    enum { N = 16 };
    CoCase cases[N];
    int pending = N;
    for (int i = 0; i < N; i++) {
        cases[i] = (CoCase){ .type = i % 2 ? ZSTD : ZLIB,
                             .cs = (size_t)4096 << (i % 6),
                             .seed = 100 + i, .ret = 1, .pending = &pending };
        co_enter(co_create(co_round_trip, &cases[i]));
    }
    LOOP_WAIT_WHILE(pending > 0);
    for (int i = 0; i < N; i++) {
        assert_int_equal(cases[i].ret, 0);
    }
}

static gpointer thread_round_trips(gpointer opaque)
{
    uint32_t seed = GPOINTER_TO_UINT(opaque);
    size_t cs = 65536;
    uint8_t *data = g_malloc(cs), *comp = g_malloc(cs), *back = g_malloc(cs);
    gpointer ok = GINT_TO_POINTER(1);
    for (int i = 0; i < 20 && ok; i++) {
        int type = i % 2 ? ZSTD : ZLIB;
        fill_words(data, cs, seed + i);
        ssize_t clen = qcow2_compress(type, comp, cs - 1, data, cs);
        if (clen <= 0 || qcow2_decompress(type, back, cs, comp, clen) != 0 ||
            memcmp(back, data, cs) != 0) {
            ok = NULL;
        }
    }
    g_free(back);
    g_free(comp);
    g_free(data);
    return ok;
}

/* Threads with their own codec state, freed as each thread exits. */
static void test_threads(void **state)
{
    GThread *th[4];
    for (int i = 0; i < 4; i++) {
        th[i] = g_thread_new("codec", thread_round_trips,
                             GUINT_TO_POINTER(200 + 10 * i));
    }
    for (int i = 0; i < 4; i++) {
        assert_non_null(g_thread_join(th[i]));
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_round_trip),
        cmocka_unit_test(test_enospc),
        cmocka_unit_test(test_exact_fit),
        cmocka_unit_test(test_bad_type),
        cmocka_unit_test(test_truncated),
        cmocka_unit_test(test_garbage),
        cmocka_unit_test(test_short_stream),
        cmocka_unit_test(test_long_stream),
        cmocka_unit_test(test_corrupt_fuzz),
        cmocka_unit_test(test_trailing_garbage),
        cmocka_unit_test(test_zstd_no_content_size),
        cmocka_unit_test(test_zstd_multi_frame),
        cmocka_unit_test(test_plain_readers),
        cmocka_unit_test(test_qemu_vectors),
        cmocka_unit_test(test_coroutine),
        cmocka_unit_test(test_threads),
    };
    return cmocka_run_group_tests(tests, setup_data, teardown_data);
}
