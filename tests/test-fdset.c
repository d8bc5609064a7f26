/*
 * Descriptor sets and "/dev/fdset/N" names: QEMU's matching (access mode,
 * newest first), status flags given to the duplicate, ids, removal, and
 * its error texts.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <string.h>
#include <errno.h>
#include <fcntl.h>
#include <unistd.h>
#include <cmocka.h>

#include "strata/fdset.h"

static char *path;

static int setup(void **state)
{
    int fd = g_file_open_tmp("fdset-XXXXXX", &path, NULL);
    close(fd);
    return 0;
}

static int teardown(void **state)
{
    fdset_remove_fd(0, false, 0, NULL);
    fdset_remove_fd(1, false, 0, NULL);
    fdset_remove_fd(5, false, 0, NULL);
    unlink(path);
    g_free(path);
    return 0;
}

static void count(void *opaque, int64_t id, int fd, const char *op)
{
    (*(int *)opaque)++;
}

static void ignore(void *opaque, int64_t id, int fd, const char *op)
{
}

static int count_sets(void)
{
    int n = 0;
    fdset_foreach(count, ignore, &n);
    return n;
}

static void test_match(void **state)
{
    GError *err = NULL;
    int ro = open(path, O_RDONLY);
    int rw = open(path, O_RDWR);

    assert_int_equal(fdset_add_fd(ro, false, 0, "ro", NULL), 0);
    assert_int_equal(fdset_add_fd(rw, true, 0, NULL, NULL), 0);
    assert_int_equal(fdset_add_fd(open(path, O_RDONLY), false, 0, NULL, NULL),
                     1);

    int d = fdset_open("/dev/fdset/0", O_RDWR | O_DIRECT, &err);
    assert_true(d >= 0);
    int fl = fcntl(d, F_GETFL);
    assert_int_equal(fl & O_ACCMODE, O_RDWR);
    assert_true(fl & O_DIRECT);     /* the duplicate got the flag */
    int d2 = fdset_open("/dev/fdset/0", O_RDONLY, &err);
    assert_int_equal(fcntl(d2, F_GETFL) & O_ACCMODE, O_RDONLY);

    assert_int_equal(fdset_open("/dev/fdset/0", O_WRONLY, &err), -1);
    assert_int_equal(errno, EACCES);
    char *want = g_strdup_printf("Could not dup FD for /dev/fdset/0 flags %x: "
                                 "Permission denied", O_WRONLY);
    assert_string_equal(err->message, want);
    g_free(want);
    g_clear_error(&err);
    assert_int_equal(fdset_open("/dev/fdset/7", O_RDONLY, &err), -1);
    assert_int_equal(errno, ENOENT);
    g_clear_error(&err);
    assert_int_equal(fdset_open("/dev/fdset/x", O_RDONLY, &err), -1);
    assert_string_equal(err->message, "Could not parse fdset /dev/fdset/x");
    g_clear_error(&err);

    /* removed, but the set lives while its duplicates are open */
    assert_true(fdset_remove_fd(0, false, 0, NULL));
    assert_int_equal(count_sets(), 2);
    assert_int_equal(fdset_close(d), 0);
    assert_int_equal(count_sets(), 2);
    assert_int_equal(fdset_close(d2), 0);
    assert_int_equal(count_sets(), 1);
    /* and the freed id is the next one given out */
    assert_int_equal(fdset_add_fd(open(path, O_RDONLY), false, 0, NULL, NULL),
                     0);
}

static void test_errors(void **state)
{
    GError *err = NULL;

    assert_int_equal(fdset_add_fd(0, true, -1, NULL, &err), -1);
    assert_string_equal(err->message,
                        "Parameter 'fdset-id' expects a non-negative value");
    g_clear_error(&err);
    assert_false(fdset_remove_fd(5, true, 3, &err));
    assert_string_equal(err->message,
                        "File descriptor named 'fdset-id:5, fd:3' not found");
    g_clear_error(&err);
    assert_false(fdset_remove_fd(5, false, 0, &err));
    assert_string_equal(err->message,
                        "File descriptor named 'fdset-id:5' not found");
    g_clear_error(&err);
    assert_int_equal(fdset_add_fd(open(path, O_RDONLY), true, 5, NULL, NULL),
                     5);
    assert_false(fdset_remove_fd(5, true, 1000, &err));
    g_clear_error(&err);
    assert_true(fdset_remove_fd(5, false, 0, NULL));
}

/* Migration's wording (QEMU 10's monitor_fdset_dup_fd_add); the same
 * matching, errno and duplicates as fdset_open(). */
static void test_qemu10_words(void **state)
{
    GError *err = NULL;
    int ro = open(path, O_RDONLY);

    assert_int_equal(fdset_add_fd(ro, true, 1, NULL, NULL), 1);
    int d = fdset_open_qemu10("/dev/fdset/1", O_RDONLY, &err);
    assert_true(d >= 0);
    assert_null(err);

    assert_int_equal(fdset_open_qemu10("/dev/fdset/1", O_WRONLY | O_CREAT,
                                       &err), -1);
    assert_int_equal(errno, EACCES);
    assert_string_equal(err->message, "Failed to find file descriptor with "
                        "matching flags=0x41");
    g_clear_error(&err);
    assert_int_equal(fdset_open_qemu10("/dev/fdset/77", O_RDONLY, &err), -1);
    assert_int_equal(errno, ENOENT);
    assert_string_equal(err->message, "Failed to find fdset /dev/fdset/77");
    g_clear_error(&err);
    assert_int_equal(fdset_open_qemu10("/dev/fdset/x", O_RDONLY, &err), -1);
    assert_int_equal(errno, EINVAL);
    assert_string_equal(err->message, "Could not parse fdset /dev/fdset/x");
    g_clear_error(&err);

    /* the block layer's wording is QEMU 7.2's still */
    assert_int_equal(fdset_open("/dev/fdset/77", O_RDONLY, &err), -1);
    assert_string_equal(err->message, "Could not dup FD for /dev/fdset/77 "
                        "flags 0: No such file or directory");
    g_clear_error(&err);
    assert_int_equal(fdset_close(d), 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_match, setup, teardown),
        cmocka_unit_test_setup_teardown(test_errors, setup, teardown),
        cmocka_unit_test_setup_teardown(test_qemu10_words, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL) ? 1 : 0;
}
