/*
 * qcow2 image creation: images byte-identical to QEMU 7.2's, checked
 * against the SHA-256 of what qemu-img 7.2 wrote for the same options (so
 * this test needs no QEMU), covering cluster sizes, versions, refcount
 * widths, extended L2, every preallocation mode including refcount-table
 * growth and the copy-on-write tail, and external data files; then QEMU's
 * errors, and that a failed creation leaves no file behind.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "strata/block-driver.h"
#include "strata/block.h"
#include "strata/units.h"
#include "support.h"


/* One image qemu-img 7.2 created: its options, length and SHA-256. */
typedef struct Golden {
    const char *name;
    const char *opts;        /* "key=value,..." ("" for none) */
    uint64_t size;
    int64_t len;
    const char *sha;
    int64_t data_len;        /* d.raw, when data_file=d.raw */
    const char *data_sha;
} Golden;

#define DATA_1M \
    "30e14955ebf1352266dc2ff8067e68104607e750abb9d3b36582b8af909fcb58"
#define DATA_TAIL \
    "f1295e11a9e904f62008f50df5da2a0c3a89d90ffb9c445ae11789704413d396"

static const Golden goldens[] = {
    { "default", "", 1 * GiB, 196624,
      "3b107e52f63fab104395d42dbb0d08b9ef9cb3f10b1e32fe083674dba258e7f8" },
    { "empty", "", 0, 196608,
      "1f0e416c971c2d5effe7d6d021965e76f4424f2bfb5431ba6d62a95a977475bb" },
    { "v2", "compat=0.10", 1 * GiB, 196624,
      "a0bf5e822daabc85ba852c35754526545d80a440353e1ade4b0bbc7de43dd680" },
    { "c512", "cluster_size=512", 1 * GiB, 264704,
      "594d00c2bc2ac9b2ca7f8e6753fea94e64b9c74b6123fcb86d1b6d8b1b961277" },
    { "c2m", "cluster_size=2097152", 1 * GiB, 6291464,
      "ea52fa7f6a7da0b72f601378ee4d3dfabc1de6c87349e3e97f6e2162a4eea7c3" },
    { "c4k_lazy", "cluster_size=4096,lazy_refcounts=on", 10 * MiB, 12328,
      "42c156ef1fce4c4fa0d37a7bb8971bcbbe3ef89f629f085c7fbe056a157d7c74" },
    { "rb1", "refcount_bits=1", 1 * GiB, 196624,
      "fd525f70d46d50edd59ecebbe8fb2061da7da55dbff1578e1525373faf0c1106" },
    /* A 16 MiB L1 table: many refcount blocks, the table grows. */
    { "rb64_512", "cluster_size=512,refcount_bits=64", 64 * GiB, 17052160,
      "8451d6a4e6ccf1fa0df21980b477bd9d28f25df92cda684501846f598ff0db12" },
    { "extl2_zstd", "extended_l2=on,compression_type=zstd", 1 * GiB, 196640,
      "d255be2e3b95d233095f1d646b39551455be30c2d29bd3c8d74758ce4d3e73f7" },
    /* The last cluster is partly in the image: QEMU copies the rest. */
    { "meta_tail", "preallocation=metadata", 1049088, 1441792,
      "f3ff87e7e3d93d8d9a8ec3f3da06c791445bffcdc843132ecb78836cba88e9b8" },
    { "meta_extl2", "preallocation=metadata,extended_l2=on", 1049088, 1378304,
      "3051c228ac2ba017dbc10c62c57454e47329a212a36ebde31bcab022614910ee" },
    { "meta_grow", "cluster_size=512,refcount_bits=64,preallocation=metadata",
      16 * MiB, 17355776,
      "d109f4c020876a17d492cf23a3fe29159b2dbb06195ef7a52470dc2d113bc570" },
    { "falloc", "preallocation=falloc", 1049088, 1441792,
      "8205e8cdf08461c0500f65111ad407ac991d56527d8d23bd1205f331775db6c9" },
    /* The old refcount table is freed and the first L2 table reuses it. */
    { "falloc_512", "cluster_size=512,preallocation=falloc", 102400, 106496,
      "2a4f2097b8f5f9b6cd3bf7553de3996f95e0f21462514c4bd959a13c38dc399d" },
    { "full_grow", "cluster_size=512,refcount_bits=64,preallocation=full",
      4 * MiB, 4331008,
      "efc9d2c3083e8be72fc0597f40847ba2233b8de04667582a69af6a247dec09f5" },
    { "datafile", "data_file=d.raw", 1 * MiB, 196616,
      "1d6fc42afe58d2360246b84abe61b8d2a771d74109fe7bf8100c69e5007df011",
      1 * MiB, DATA_1M },
    { "datafile_raw", "data_file=d.raw,data_file_raw=on", 1049088, 327680,
      "4de7ddc02460471f5a10c9b6427e966c0e397ad546aebd80aab59112fe3d2351",
      1114112, DATA_TAIL },
    { "datafile_full", "data_file=d.raw,preallocation=full", 1049088, 327680,
      "0d5bd0266983c2dc2d7d499cc12285db76ca5c42e5fc97c91a33ccb5f2b405e8",
      1114112, DATA_TAIL },
};

/* ---- Helpers ---- */

/* "a=b,c=on" as the typed options strata-img hands a driver. */
static json_t *make_options(const char *text, uint64_t size)
{
    json_t *o = json_object();
    gchar **pairs = g_strsplit(text, ",", -1);

    json_object_set_new(o, "size", json_integer((json_int_t)size));
    for (gchar **p = pairs; *p && **p; p++) {
        char *eq = strchr(*p, '=');
        const char *v = eq + 1;
        char *end;
        long long n;

        *eq = '\0';
        n = strtoll(v, &end, 10);
        if (!strcmp(v, "on") || !strcmp(v, "off")) {
            json_object_set_new(o, *p, json_boolean(!strcmp(v, "on")));
        } else if (*v && !*end && strcmp(*p, "compat")) {
            json_object_set_new(o, *p, json_integer(n));
        } else {
            json_object_set_new(o, *p, json_string(v));
        }
    }
    g_strfreev(pairs);
    return o;
}

static void check_file(const char *name, int64_t len, const char *sha)
{
    gchar *data = NULL;
    gsize n = 0;
    gchar *sum;

    assert_true(g_file_get_contents(name, &data, &n, NULL));
    assert_int_equal((int64_t)n, len);
    sum = g_compute_checksum_for_data(G_CHECKSUM_SHA256, (guchar *)data, n);
    if (strcmp(sum, sha)) {
        fail_msg("%s: sha256 %s, QEMU's is %s", name, sum, sha);
    }
    g_free(sum);
    g_free(data);
}

static bool create(const char *opts, uint64_t size, GError **errp)
{
    return image_create("qcow2", "t.qcow2", make_options(opts, size), errp);
}

static void expect_error(const char *opts, uint64_t size, const char *msg)
{
    GError *err = NULL;

    unlink("t.qcow2");
    unlink("d.raw");
    assert_false(create(opts, size, &err));
    assert_non_null(err);
    if (strcmp(err->message, msg)) {
        fail_msg("%s: got \"%s\", expected \"%s\"", opts, err->message, msg);
    }
    g_error_free(err);
    /* Once created and opened, QEMU deletes both files again. */
    assert_int_equal(access("t.qcow2", F_OK), -1);
    assert_int_equal(access("d.raw", F_OK), -1);
}

/* ---- Tests ---- */

static void test_same_bytes_as_qemu(void **state)
{
    for (size_t i = 0; i < G_N_ELEMENTS(goldens); i++) {
        const Golden *g = &goldens[i];
        GError *err = NULL;

        unlink("t.qcow2");
        unlink("d.raw");
        if (!create(g->opts, g->size, &err)) {
            fail_msg("%s: %s", g->name, err->message);
        }
        check_file("t.qcow2", g->len, g->sha);
        if (g->data_sha) {
            check_file("d.raw", g->data_len, g->data_sha);
        }
    }
}

static void test_backing_header(void **state)
{
    static const char expect_v2[] = "\x00\x00\x00\x60\x00\x00\x00\x05";
    gchar *data = NULL;
    gsize n = 0;
    GError *err = NULL;
    json_t *o = make_options("compat=0.10", 5 * MiB);

    json_object_set_new(o, "backing_file", json_string("b.img"));
    json_object_set_new(o, "backing_fmt", json_string("raw"));
    unlink("t.qcow2");
    assert_true(image_create("qcow2", "t.qcow2", o, &err));
    assert_true(g_file_get_contents("t.qcow2", &data, &n, NULL));
    /* v2: 72-byte header, backing format extension, end, then the name. */
    assert_memory_equal(data + 12, expect_v2, 4);
    assert_memory_equal(data + 16, expect_v2 + 4, 4);
    assert_memory_equal(data + 72, "\xe2\x79\x2a\xca\x00\x00\x00\x03raw", 11);
    assert_memory_equal(data + 96, "b.img", 5);
    g_free(data);
}

static void test_errors(void **state)
{
    char *long_name = g_strnfill(1030, 'x');
    json_t *o;
    GError *err = NULL;

    expect_error("cluster_size=1000", MiB,
                 "Cluster size must be a power of two between 512 and 2048k");
    expect_error("extended_l2=on,cluster_size=8192", MiB,
                 "Extended L2 entries are only supported with cluster sizes "
                 "of at least 16384 bytes");
    expect_error("compat=0.10,refcount_bits=8", MiB,
                 "Different refcount widths than 16 bits require "
                 "compatibility level 1.1 or above (use version=v3 or "
                 "greater)");
    expect_error("refcount_bits=3", MiB, "Refcount width must be a power of "
                 "two and may not exceed 64 bits");
    expect_error("compat=1.0", MiB,
                 "Parameter 'version' does not accept value '1.0'");
    expect_error("compat=1.0,preallocation=foo", MiB,
                 "Parameter 'version' does not accept value '1.0'");
    expect_error("compression_type=lz4", MiB,
                 "Parameter 'compression-type' does not accept value 'lz4'");
    expect_error("data_file_raw=on", MiB, "data-file-raw requires data-file");
    expect_error("compat=0.10,data_file=d.raw", MiB,
                 "External data files are only supported with compatibility "
                 "level 1.1 and above (use version=v3 or greater)");
    expect_error("backing_fmt=raw", MiB,
                 "Backing format cannot be used without backing file");
    expect_error("cluster_size=512", 1 * TiB,
                 "Could not resize image: Failed to grow the L1 table: "
                 "File too large");
    expect_error("", 9223372036854775296ull,
                 "Could not resize image: offset(9223372036854775296) "
                 "exceeds maximum(9223372035781033984)");
    expect_error("encrypt.format=luks", MiB,
                 "Parameter 'encrypt.key-secret' is required for cipher");
    expect_error("encrypt.key-secret=s", MiB,
                 "Parameter 'encrypt.format' is missing");
    expect_error("encrypt.format=aes,encrypt.cipher-alg=aes-128", MiB,
                 "Parameter 'encrypt.cipher-alg' is unexpected");

    /* Refused before any file is created. */
    unlink("t.qcow2");
    o = make_options("encryption=on,encrypt.format=luks", MiB);
    assert_false(image_create("qcow2", "t.qcow2", o, &err));
    assert_string_equal(err->message, "'encrypt.format' and its alias "
                        "'encryption' can't be used at the same time");
    g_clear_error(&err);
    assert_int_equal(access("t.qcow2", F_OK), -1);

    o = make_options("", MiB);
    json_object_set_new(o, "backing_file", json_string(long_name));
    json_object_set_new(o, "backing_fmt", json_string("raw"));
    assert_false(image_create("qcow2", "t.qcow2", o, &err));
    assert_true(g_str_has_suffix(err->message, "with format 'raw': Invalid "
                                 "argument"));
    g_clear_error(&err);
    assert_int_equal(access("t.qcow2", F_OK), -1);
    g_free(long_name);
}

static void test_option_names(void **state)
{
    const BlockDriver *drv = driver_find("qcow2");
    bool size = false, compat = false;

    for (const char *const *n = drv->create_opts; *n; n++) {
        size = size || !strcmp(*n, "size");
        compat = compat || !strcmp(*n, "compat");
    }
    assert_true(size && compat);
}

/* ---- Setup ---- */

static int setup(void **state)
{
    const BlockDriver *drv = driver_find("qcow2");

    if (!drv || !drv->create) {
        /* The qcow2 driver is wired to qcow2-create.c by its table. */
        fprintf(stderr, "qcow2 driver without create: skipped\n");
        exit(77);
    }
    if (test_tmpdir_setup(state) != 0) {
        return -1;
    }
    /* The data file's name is stored as given: keep it relative. */
    test_tmpdir_enter();
    return 0;
}
int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_same_bytes_as_qemu),
        cmocka_unit_test(test_backing_header),
        cmocka_unit_test(test_errors),
        cmocka_unit_test(test_option_names),
    };
    return cmocka_run_group_tests(tests, setup, test_tmpdir_teardown);
}
