/*
 * The NBD client driver's libnbd, loaded when the first nbd node opens
 * (block/drivers/nbd-lib.c): a library that cannot be loaded, or lacks a
 * function, is an open error naming it, and a later open tries again; once
 * loaded, nodes open, serve reads, close and open again; neither libnbd
 * nor libgcrypt is mapped before that.  The server is strata's own, in
 * this process, exporting a null-co node.
 */
#include <dlfcn.h>
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <cmocka.h>
#include "strata/backend.h"
#include "strata/block.h"
#include "strata/loop.h"
#include "strata/nbd-server.h"
#include "support.h"

static char *sock_path;

static json_t *nbd_options(void)
{
    return json_pack("{s:s, s:s, s:{s:s, s:s}}", "driver", "nbd",
                     "export", "exp", "server", "type", "unix",
                     "path", sock_path);
}

/* The open fails and says so in these words (a prefix: dlerror()'s text). */
static void expect_open_error(const char *prefix)
{
    GError *err = NULL;
    BlockBackend *blk = blk_new_open(NULL, nbd_options(), 0, &err);
    assert_null(blk);
    assert_non_null(err);
    if (strncmp(err->message, prefix, strlen(prefix))) {
        fail_msg("unexpected error: %s", err->message);
    }
    g_error_free(err);
}

static BlockBackend *open_nbd(void)
{
    GError *err = NULL;
    BlockBackend *blk = blk_new_open(NULL, nbd_options(), 0, &err);
    if (!blk) {
        fail_msg("open failed: %s", err->message);
    }
    return blk;
}

static void read_zeroes(BlockBackend *blk)
{
    uint8_t buf[4096];
    memset(buf, 0xaa, sizeof(buf));
    assert_int_equal(blk_pread(blk, 8192, sizeof(buf), buf, 0), 0);
    for (size_t i = 0; i < sizeof(buf); i++) {
        assert_int_equal(buf[i], 0);
    }
}

static void test_load(void **state)
{
    GError *err = NULL;
    json_t *o = json_pack("{s:s, s:s, s:s, s:b}", "driver", "null-co",
                          "node-name", "zero", "size", "1M",
                          "read-zeroes", 1);
    BlockNode *bs = node_open(NULL, o, 0, &err);
    assert_non_null(bs);
    NbdServerAddr a = { .type = NBD_ADDR_UNIX, .path = sock_path };
    assert_true(nbd_server_start(&a, 0, NULL));
    NbdExportOptions eo = { .id = "exp", .node_name = "zero", .name = "exp" };
    assert_true(nbd_export_add(&eo, NULL));

    /*
     * Neither libnbd nor libgcrypt is mapped before it is needed (the
     * program links neither; docs/performance.md says why).
     */
    assert_null(dlopen("libnbd.so.0", RTLD_NOW | RTLD_NOLOAD));
    assert_null(dlopen("libgcrypt.so.20", RTLD_NOW | RTLD_NOLOAD));

    setenv("STRATA_LIBNBD", "/nonexistent/libnbd.so.0", 1);
    expect_open_error("The nbd driver needs libnbd, which could not be "
                      "loaded: /nonexistent/libnbd.so.0: cannot open shared "
                      "object file");
    /* A library, but not libnbd: a missing function is named. */
    setenv("STRATA_LIBNBD", "libz.so.1", 1);
    expect_open_error("The nbd driver needs libnbd, which could not be "
                      "loaded: libz.so.1 has no nbd_create");
    unsetenv("STRATA_LIBNBD");

    assert_null(dlopen("libnbd.so.0", RTLD_NOW | RTLD_NOLOAD));
    BlockBackend *b1 = open_nbd();
    void *h = dlopen("libnbd.so.0", RTLD_NOW | RTLD_NOLOAD);
    assert_non_null(h);
    dlclose(h);     /* the reference NOLOAD took, not the driver's */
    BlockBackend *b2 = open_nbd();
    read_zeroes(b1);
    read_zeroes(b2);
    blk_unref(b1);
    read_zeroes(b2);
    blk_unref(b2);
    /* Loaded once: the override is no longer looked at. */
    setenv("STRATA_LIBNBD", "/nonexistent/libnbd.so.0", 1);
    b1 = open_nbd();
    read_zeroes(b1);
    blk_unref(b1);
    unsetenv("STRATA_LIBNBD");

    assert_true(nbd_server_stop(NULL));
    node_unref(bs);
}

static int setup(void **state)
{
    if (test_tmpdir_setup(state) != 0) {
        return -1;
    }
    sock_path = test_path("nbd.sock");
    return 0;
}

static int teardown(void **state)
{
    g_free(sock_path);
    return test_tmpdir_teardown(state);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_load),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
