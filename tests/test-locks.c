/*
 * Image locks: the bytes taken for each permission, conflicts between two
 * open files of one image, the prepare/commit/abort state machine, and
 * interoperation with a real qemu-io (skipped when qemu-io is missing).
 */
#include <errno.h>
#include <inttypes.h>
#include <fcntl.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>
#include <cmocka.h>
#include <glib.h>
#include "strata/block.h"
#include "strata/error.h"
#include "../block/locks.h"
#include "support.h"

enum {
    R = BLK_PERM_CONSISTENT_READ,
    W = BLK_PERM_WRITE,
    WU = BLK_PERM_WRITE_UNCHANGED,
    RS = BLK_PERM_RESIZE,
    ALL = BLK_PERM_ALL,
};

static int open_rw(const char *path)
{
    int fd = open(path, O_RDWR | O_CLOEXEC);
    assert_true(fd >= 0);
    return fd;
}

/* The bytes in [100, 104) and [200, 204) that some other fd holds. */
static void held_by_others(int probe_fd, uint64_t *perm, uint64_t *unshared)
{
    *perm = *unshared = 0;
    for (int i = 0; i < BLK_PERM_COUNT; i++) {
        if (lock_fd_test(probe_fd, LOCK_PERM_BASE + i, 1, true) == -EAGAIN) {
            *perm |= 1ULL << i;
        }
        if (lock_fd_test(probe_fd, LOCK_SHARED_BASE + i, 1, true) == -EAGAIN) {
            *unshared |= 1ULL << i;
        }
    }
}

static void assert_held(int probe_fd, uint64_t perm, uint64_t unshared)
{
    uint64_t p, u;
    held_by_others(probe_fd, &p, &u);
    assert_int_equal(p, perm);
    assert_int_equal(u, unshared);
    /* Nothing beyond the four permissions of QEMU 7.2. */
    assert_int_equal(lock_fd_test(probe_fd, LOCK_PERM_BASE + 4, 1, true), 0);
    assert_int_equal(lock_fd_test(probe_fd, LOCK_SHARED_BASE + 4, 1, true), 0);
}

static void test_ofd_available(void **state)
{
    assert_true(lock_has_ofd());
}

static void test_lock_bytes(void **state)
{
    char *path = make_file("bytes.img", NULL, 1024 * 1024);
    int fd1 = open_rw(path), fd2 = open_rw(path);
    ImageLock il;
    GError *err = NULL;

    image_lock_init(&il, fd1, true);
    assert_held(fd2, 0, 0);
    /* A qcow2 image opened read-write: takes r/w/resize, shares r/wu. */
    assert_int_equal(image_lock_prepare(&il, R | W | RS, R | WU, path, &err), 0);
    assert_null(err);
    image_lock_commit(&il, R | W | RS, R | WU);
    assert_held(fd2, R | W | RS, W | RS);
    assert_int_equal(il.held.perm, R | W | RS);
    assert_int_equal(il.held.unshared, W | RS);

    /* Relaxing releases bytes. */
    assert_int_equal(image_lock_prepare(&il, R, ALL, path, &err), 0);
    image_lock_commit(&il, R, ALL);
    assert_held(fd2, R, 0);

    /* Closing the fd drops its locks. */
    close(fd1);
    assert_held(fd2, 0, 0);
    close(fd2);
    g_free(path);
}

static void test_conflicts(void **state)
{
    char *path = make_file("conflict.img", NULL, 1024 * 1024);
    int fd1 = open_rw(path), fd2 = open_rw(path);
    ImageLock a, b;
    GError *err = NULL;
    char *expect;

    image_lock_init(&a, fd1, true);
    image_lock_init(&b, fd2, true);
    assert_int_equal(image_lock_prepare(&a, R | W | RS, R | WU, path, &err), 0);
    image_lock_commit(&a, R | W | RS, R | WU);

    /* A writer that shares everything: the holder does not share write. */
    assert_int_equal(image_lock_prepare(&b, R | W, ALL, path, &err), -EAGAIN);
    expect = g_strdup_printf("Failed to get \"write\" lock\n"
                             "Is another process using the image [%s]?", path);
    assert_string_equal(err->message, expect);
    g_free(expect);
    g_clear_error(&err);
    /* The failed attempt left nothing behind. */
    assert_int_equal(b.held.perm | b.held.unshared, 0);
    assert_held(fd1, 0, 0);

    /* A reader that refuses to share write: the holder writes. */
    assert_int_equal(image_lock_prepare(&b, R, R | WU, path, &err), -EAGAIN);
    expect = g_strdup_printf("Failed to get shared \"write\" lock\n"
                             "Is another process using the image [%s]?", path);
    assert_string_equal(err->message, expect);
    g_free(expect);
    g_clear_error(&err);

    /* Resize is checked too, and without a file name there is no hint. */
    assert_int_equal(lock_check(fd2, RS, ALL, NULL, &err), -EAGAIN);
    assert_string_equal(err->message, "Failed to get \"resize\" lock");
    g_clear_error(&err);

    /* force-share: read only, share everything, works next to a writer. */
    assert_int_equal(image_lock_prepare(&b, R, ALL, path, &err), 0);
    assert_null(err);
    image_lock_commit(&b, R, ALL);

    /* Once the writer shares write again, a second writer may come. */
    assert_int_equal(image_lock_prepare(&a, R | W, ALL, path, &err), 0);
    image_lock_commit(&a, R | W, ALL);
    assert_int_equal(image_lock_prepare(&b, R | W, ALL, path, &err), 0);
    image_lock_commit(&b, R | W, ALL);
    /* ...but nobody may now refuse to share write. */
    assert_int_equal(lock_check(fd2, R, R, NULL, &err), -EAGAIN);
    assert_string_equal(err->message, "Failed to get shared \"write\" lock");
    g_clear_error(&err);

    close(fd1);
    close(fd2);
    g_free(path);
}

static void test_abort_restores(void **state)
{
    char *path = make_file("abort.img", NULL, 1024 * 1024);
    int fd1 = open_rw(path), fd2 = open_rw(path);
    ImageLock il;
    GError *err = NULL;

    image_lock_init(&il, fd1, true);
    assert_int_equal(image_lock_prepare(&il, R, R | WU, path, &err), 0);
    image_lock_commit(&il, R, R | WU);
    assert_held(fd2, R, W | RS);

    /* During the transition both the old and the new needs are held. */
    assert_int_equal(image_lock_prepare(&il, R | W, ALL & ~RS, path, &err), 0);
    assert_held(fd2, R | W, W | RS);
    image_lock_abort(&il);
    assert_held(fd2, R, W | RS);

    /* Commit after prepare lands exactly on the new state. */
    assert_int_equal(image_lock_prepare(&il, R | W, ALL & ~RS, path, &err), 0);
    image_lock_commit(&il, R | W, ALL & ~RS);
    assert_held(fd2, R | W, RS);

    close(fd1);
    close(fd2);
    g_free(path);
}

static void test_disabled(void **state)
{
    char *path = make_file("off.img", NULL, 1024 * 1024);
    int fd1 = open_rw(path), fd2 = open_rw(path);
    ImageLock il;
    GError *err = NULL;

    image_lock_init(&il, fd1, false);
    assert_int_equal(image_lock_prepare(&il, R | W | RS, 0, path, &err), 0);
    image_lock_commit(&il, R | W | RS, 0);
    assert_held(fd2, 0, 0);
    close(fd1);
    close(fd2);
    g_free(path);
}

static void test_take_checked(void **state)
{
    char *path = make_file("create.img", NULL, 1024 * 1024);
    int fd1 = open_rw(path), fd2 = open_rw(path);
    GError *err = NULL;

    /* What image creation takes: write and resize, shares all but resize. */
    assert_int_equal(image_lock_take_checked(fd1, W | RS, ALL & ~RS, path,
                                             &err), 0);
    assert_held(fd2, W | RS, RS);
    assert_int_equal(image_lock_take_checked(fd2, W | RS, ALL & ~RS, path,
                                             &err), -EAGAIN);
    assert_non_null(strstr(err->message, "Failed to get \"resize\" lock"));
    g_clear_error(&err);
    /* The loser holds nothing; the winner's release frees the image. */
    image_lock_release_all(fd1);
    assert_held(fd2, 0, 0);
    assert_int_equal(image_lock_take_checked(fd2, W | RS, ALL & ~RS, path,
                                             &err), 0);
    close(fd1);
    close(fd2);
    g_free(path);
}

/* ---- Interoperation with QEMU's qemu-io ---- */

static char *qemu_io_path(void)
{
    return g_find_program_in_path("qemu-io");
}

/*
 * Start qemu-io holding img open for a while; wait until it holds exactly
 * perm and unshared.  qemu-io takes its lock bytes one fcntl() at a time
 * (QEMU's raw_apply_lock_bytes), so the first byte held says nothing about
 * the others yet: under load the probe may come between two of them.
 */
static pid_t qemu_io_hold(const char *img, const char *fmt, bool readonly,
                          int probe_fd, uint64_t perm, uint64_t unshared)
{
    uint64_t p = 0, u = 0;
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        int null = open("/dev/null", O_RDWR);
        dup2(null, 1);
        dup2(null, 2);
        if (readonly) {
            execlp("qemu-io", "qemu-io", "-f", fmt, "-r", "-c", "sleep 20000",
                   img, (char *)NULL);
        } else {
            execlp("qemu-io", "qemu-io", "-f", fmt, "-c", "sleep 20000", img,
                   (char *)NULL);
        }
        _exit(127);
    }
    for (int i = 0; i < 3000; i++) {
        held_by_others(probe_fd, &p, &u);
        if (p == perm && u == unshared) {
            return pid;
        }
        g_usleep(10000);
    }
    kill(pid, SIGKILL);
    waitpid(pid, NULL, 0);
    fail_msg("qemu-io did not take its locks: holds perm 0x%" PRIx64
             " unshared 0x%" PRIx64 ", expected 0x%" PRIx64 " 0x%" PRIx64,
             p, u, perm, unshared);
    return -1;
}

static void qemu_io_stop(pid_t pid)
{
    int status;
    kill(pid, SIGKILL);
    waitpid(pid, &status, 0);
}

/* Run qemu-io once on img; returns its exit status, stderr in *err_out. */
static int qemu_io_run(const char *img, const char *fmt, bool readonly,
                       char **err_out)
{
    const char *rw[] = { "qemu-io", "-f", fmt, "-c", "read 0 512", img, NULL };
    const char *ro[] = { "qemu-io", "-f", fmt, "-r", "-c", "read 0 512", img,
                         NULL };
    const char **argv = readonly ? ro : rw;
    int status = -1;
    GError *gerr = NULL;
    gboolean ok = g_spawn_sync(NULL, (char **)argv, NULL,
                               G_SPAWN_SEARCH_PATH |
                               G_SPAWN_STDOUT_TO_DEV_NULL,
                               NULL, NULL, NULL, err_out, &status, &gerr);
    assert_true(ok);
    return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

static void qemu_img_qcow2(const char *path)
{
    const char *argv[] = { "qemu-img", "create", "-q", "-f", "qcow2", path,
                           "1M", NULL };
    int status = -1;
    assert_true(g_spawn_sync(NULL, (char **)argv, NULL,
                             G_SPAWN_SEARCH_PATH | G_SPAWN_STDOUT_TO_DEV_NULL,
                             NULL, NULL, NULL, NULL, &status, NULL));
    assert_true(WIFEXITED(status) && WEXITSTATUS(status) == 0);
}

/* qemu-io holds the image; strata refuses or accepts exactly as QEMU does. */
static void test_qemu_holds(void **state)
{
    g_autofree char *qio = qemu_io_path();
    if (!qio) {
        skip();
    }
    g_autofree char *path = test_path("held.qcow2");
    qemu_img_qcow2(path);
    int fd = open_rw(path);
    ImageLock il;
    GError *err = NULL;
    image_lock_init(&il, fd, true);

    /* qcow2 read-write: takes r/w/resize, does not share write/resize. */
    pid_t pid = qemu_io_hold(path, "qcow2", false, fd, R | W | RS, W | RS);
    assert_held(fd, R | W | RS, W | RS);
    assert_int_equal(image_lock_prepare(&il, R | W, ALL, path, &err), -EAGAIN);
    assert_true(g_str_has_prefix(err->message, "Failed to get \"write\" lock"));
    g_clear_error(&err);
    assert_int_equal(image_lock_prepare(&il, R, R | WU, path, &err), -EAGAIN);
    assert_true(g_str_has_prefix(err->message,
                                 "Failed to get shared \"write\" lock"));
    g_clear_error(&err);
    /* force-share works next to QEMU's writer. */
    assert_int_equal(image_lock_prepare(&il, R, ALL, path, &err), 0);
    image_lock_commit(&il, R, ALL);
    image_lock_commit(&il, 0, ALL);
    qemu_io_stop(pid);

    /* qcow2 read-only: takes r, still does not share write/resize. */
    pid = qemu_io_hold(path, "qcow2", true, fd, R, W | RS);
    assert_held(fd, R, W | RS);
    assert_int_equal(image_lock_prepare(&il, R | W, R | WU, path, &err),
                     -EAGAIN);
    assert_true(g_str_has_prefix(err->message, "Failed to get \"write\" lock"));
    g_clear_error(&err);
    assert_int_equal(image_lock_prepare(&il, R, R | WU, path, &err), 0);
    image_lock_commit(&il, R, R | WU);
    qemu_io_stop(pid);

    image_lock_commit(&il, 0, ALL);
    close(fd);
}

/* strata holds the image; qemu-io refuses or accepts. */
static void test_strata_holds(void **state)
{
    g_autofree char *qio = qemu_io_path();
    if (!qio) {
        skip();
    }
    g_autofree char *path = test_path("ours.qcow2");
    qemu_img_qcow2(path);
    int fd = open_rw(path);
    ImageLock il;
    GError *err = NULL;
    char *msg = NULL;
    image_lock_init(&il, fd, true);

    /* As a qcow2 node opened read-write would. */
    assert_int_equal(image_lock_prepare(&il, R | W | RS, R | WU, path, &err),
                     0);
    image_lock_commit(&il, R | W | RS, R | WU);
    assert_int_equal(qemu_io_run(path, "qcow2", false, &msg), 1);
    assert_non_null(strstr(msg, "Failed to get \"write\" lock\n"
                                "Is another process using the image ["));
    g_free(msg);
    assert_int_equal(qemu_io_run(path, "qcow2", true, &msg), 1);
    assert_non_null(strstr(msg, "Failed to get shared \"write\" lock"));
    g_free(msg);
    /* Raw read-only qemu-io takes only consistent-read and shares all. */
    assert_int_equal(qemu_io_run(path, "raw", true, &msg), 0);
    g_free(msg);

    /* Shared write: qemu-io -f raw (shares everything) can write too. */
    image_lock_commit(&il, R | W, ALL);
    assert_int_equal(qemu_io_run(path, "raw", false, &msg), 0);
    g_free(msg);

    image_lock_commit(&il, 0, ALL);
    assert_int_equal(qemu_io_run(path, "qcow2", false, &msg), 0);
    g_free(msg);
    close(fd);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_ofd_available),
        cmocka_unit_test(test_lock_bytes),
        cmocka_unit_test(test_conflicts),
        cmocka_unit_test(test_abort_restores),
        cmocka_unit_test(test_disabled),
        cmocka_unit_test(test_take_checked),
        cmocka_unit_test(test_qemu_holds),
        cmocka_unit_test(test_strata_holds),
    };
    return cmocka_run_group_tests(tests, test_tmpdir_setup,
                                  test_tmpdir_teardown);
}
