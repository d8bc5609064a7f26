/*
 * Backing chains that come back to an image they already hold fail to
 * open with "Backing file 'x' creates an infinite loop." in the library
 * itself (node_open), read-only and read-write, whatever name leads back
 * (the image's own name, another image's, a symbolic link, a backing file
 * named by options); finite chains and opens without backing files are
 * not affected.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "strata/block-driver.h"
#include "strata/block.h"
#include "strata/units.h"
#include "support.h"


/* A 1 MiB qcow2 image naming `backing` (qcow2) as its backing file. */
static void create(const char *name, const char *backing)
{
    json_t *o = json_object();
    GError *err = NULL;

    json_object_set_new(o, "size", json_integer(MiB));
    if (backing) {
        json_object_set_new(o, "backing_file", json_string(backing));
        json_object_set_new(o, "backing_fmt", json_string("qcow2"));
    }
    unlink(name);
    if (!image_create("qcow2", name, o, &err)) {
        fail_msg("creating %s: %s", name, err->message);
    }
}

/*
 * The header's backing file name is rewritten in place (the name is
 * stored last, so a name of the same length fits): how an image comes to
 * name a file created after it, as "qemu-img rebase -u" does.
 */
static void rename_backing(const char *name, const char *from, const char *to)
{
    gchar *data = NULL;
    gsize n = 0;
    char *p;

    assert_int_equal(strlen(from), strlen(to));
    assert_true(g_file_get_contents(name, &data, &n, NULL));
    p = memmem(data, n, from, strlen(from));
    assert_non_null(p);
    memcpy(p, to, strlen(to));
    assert_true(g_file_set_contents(name, data, (gssize)n, NULL));
    g_free(data);
}

static void expect_loop(const char *filename, json_t *options, int flags,
                        const char *culprit)
{
    GError *err = NULL;
    BlockNode *bs = node_open(filename, options, flags, &err);
    char *want = g_strdup_printf("Backing file '%s' creates an infinite "
                                 "loop.", culprit);

    assert_null(bs);
    assert_non_null(err);
    assert_true(node_error_is_backing_loop(err));
    assert_string_equal(err->message, want);
    g_free(want);
    g_error_free(err);
}

static void expect_open(const char *filename, int flags)
{
    GError *err = NULL;
    BlockNode *bs = node_open(filename, NULL, flags, &err);

    if (!bs) {
        fail_msg("opening %s: %s", filename, err->message);
    }
    node_unref(bs);
}

static void test_self(void **state)
{
    create("self.qcow2", "xxxx.qcow2");
    rename_backing("self.qcow2", "xxxx.qcow2", "self.qcow2");
    expect_loop("self.qcow2", NULL, 0, "self.qcow2");
    expect_loop("self.qcow2", NULL, NODE_O_RDWR, "self.qcow2");
    expect_open("self.qcow2", NODE_O_NO_BACKING);
    expect_open("self.qcow2", NODE_O_RDWR | NODE_O_NO_BACKING);
}

static void test_pair_and_ancestor(void **state)
{
    create("a.qcow2", "x.qcow2");
    create("b.qcow2", "a.qcow2");
    rename_backing("a.qcow2", "x.qcow2", "b.qcow2");
    expect_loop("b.qcow2", NULL, 0, "b.qcow2");
    expect_loop("a.qcow2", NULL, NODE_O_RDWR, "a.qcow2");

    /* c4 -> c3 -> c2 -> c1 -> c3 */
    create("c1.qcow2", "xxxxxxxx");
    create("c2.qcow2", "c1.qcow2");
    create("c3.qcow2", "c2.qcow2");
    create("c4.qcow2", "c3.qcow2");
    rename_backing("c1.qcow2", "xxxxxxxx", "c3.qcow2");
    expect_loop("c4.qcow2", NULL, 0, "c3.qcow2");
}

static void test_other_names(void **state)
{
    /* The same file under another name: a symbolic link to the image. */
    create("l.qcow2", "xxxxxxxxxxx");
    rename_backing("l.qcow2", "xxxxxxxxxxx", "./link.qcow");
    unlink("link.qcow");
    assert_int_equal(symlink("l.qcow2", "link.qcow"), 0);
    expect_loop("l.qcow2", NULL, 0, "./link.qcow");
    expect_loop("link.qcow", NULL, NODE_O_RDWR, "./link.qcow");

    /* A protocol name: nothing to look at before the open. */
    create("pp.qcow2", "xxxxxxxxxxxxx");
    rename_backing("pp.qcow2", "xxxxxxxxxxxxx", "file:pp.qcow2");
    expect_loop("pp.qcow2", NULL, 0, "pp.qcow2");
    expect_loop("pp.qcow2", NULL, NODE_O_RDWR, "pp.qcow2");

    /*
     * A backing file named by options, whose own backing file (from its
     * header) is the top image: caught when its storage opens, before it
     * takes locks against the read-write top.
     */
    json_t *o = json_pack("{s:s, s:{s:s}, s:{s:s, s:{s:s, s:{s:s}}}}",
                          "driver", "qcow2",
                          "file", "filename", "self.qcow2",
                          "backing", "driver", "qcow2",
                          "file", "driver", "blkdebug",
                          "image", "filename", "self.qcow2");
    assert_non_null(o);
    expect_loop(NULL, o, NODE_O_RDWR, "self.qcow2");
}

static void test_finite(void **state)
{
    create("f1.qcow2", NULL);
    create("f2.qcow2", "f1.qcow2");
    create("f3.qcow2", "f2.qcow2");
    expect_open("f3.qcow2", 0);
    expect_open("f3.qcow2", NODE_O_RDWR);
    /* The same base twice in one process, beside each other, is no loop. */
    GError *err = NULL;
    BlockNode *x = node_open("f2.qcow2", NULL, 0, &err);
    BlockNode *y = node_open("f3.qcow2", NULL, 0, &err);
    assert_non_null(x);
    assert_non_null(y);
    node_unref(y);
    node_unref(x);
}

static int setup(void **state)
{
    const BlockDriver *drv = driver_find("qcow2");

    if (!drv || !drv->create || !driver_find("blkdebug")) {
        fprintf(stderr, "qcow2 or blkdebug missing: skipped\n");
        exit(77);
    }
    if (test_tmpdir_setup(state) != 0) {
        return -1;
    }
    /* The chains' backing names are relative. */
    test_tmpdir_enter();
    return 0;
}
int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_self),
        cmocka_unit_test(test_pair_and_ancestor),
        cmocka_unit_test(test_other_names),
        cmocka_unit_test(test_finite),
    };
    return cmocka_run_group_tests(tests, setup, test_tmpdir_teardown);
}
