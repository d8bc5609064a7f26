/*
 * unix_socket_listen(): the path accepts connections as soon as it exists,
 * replaces what was there, leaves no temporary file, and fails with QEMU's
 * messages.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <errno.h>
#include <fcntl.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>
#include <cmocka.h>
#include <glib.h>
#include "strata/socket-listen.h"
#include "support.h"

static int connect_to(const char *path)
{
    struct sockaddr_un un = { .sun_family = AF_UNIX };
    int fd = socket(AF_UNIX, SOCK_STREAM, 0);
    g_assert(fd >= 0);
    memcpy(un.sun_path, path, strlen(path));
    int r = connect(fd, (struct sockaddr *)&un, sizeof(un));
    int err = errno;
    close(fd);
    return r < 0 ? -err : 0;
}

static int count_entries(void)
{
    GDir *d = g_dir_open(test_tmpdir, 0, NULL);
    int n = 0;
    while (g_dir_read_name(d)) {
        n++;
    }
    g_dir_close(d);
    return n;
}

static void test_listens_at_path(void **state)
{
    g_autofree char *path = test_path("s.sock");
    GError *err = NULL;
    int fd = unix_socket_listen(path, SOCK_NONBLOCK, 4, &err);
    assert_true(fd >= 0);
    assert_null(err);
    struct stat st;
    assert_int_equal(stat(path, &st), 0);
    assert_true(S_ISSOCK(st.st_mode));
    assert_int_equal(connect_to(path), 0);
    assert_int_equal(count_entries(), 1);   /* no temporary name left */
    assert_true(fcntl(fd, F_GETFL) & O_NONBLOCK);
    assert_true(fcntl(fd, F_GETFD) & FD_CLOEXEC);
    close(fd);
    unlink(path);
}

static void test_replaces_file(void **state)
{
    g_autofree char *path = test_path("f");
    g_assert(g_file_set_contents(path, "x", 1, NULL));
    GError *err = NULL;
    int fd = unix_socket_listen(path, 0, 4, &err);
    assert_true(fd >= 0);
    assert_int_equal(connect_to(path), 0);
    assert_false(fcntl(fd, F_GETFL) & O_NONBLOCK);
    close(fd);
    unlink(path);
}

static void test_errors(void **state)
{
    GError *err = NULL;
    g_autofree char *longp = g_strnfill(200, 'a');
    assert_int_equal(unix_socket_listen(longp, 0, 4, &err), -1);
    g_autofree char *want = g_strdup_printf("UNIX socket path '%s' is too long",
                                            longp);
    assert_string_equal(err->message, want);
    g_clear_error(&err);

    g_autofree char *nodir = g_build_filename(test_tmpdir, "no", "s", NULL);
    assert_int_equal(unix_socket_listen(nodir, 0, 4, &err), -1);
    g_autofree char *want2 = g_strdup_printf("Failed to bind socket to %s: "
                                             "No such file or directory",
                                             nodir);
    assert_string_equal(err->message, want2);
    g_clear_error(&err);
    assert_int_equal(count_entries(), 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_listens_at_path),
        cmocka_unit_test(test_replaces_file),
        cmocka_unit_test(test_errors),
    };
    return cmocka_run_group_tests(tests, test_tmpdir_setup,
                                  test_tmpdir_teardown);
}
