/*
 * The device state registry of the QMP commands (qapi/cmd-device-state.c):
 * who holds which streams when saves and restores overlap.  A migrate that
 * took no stream ending while a snapshot-save job holds one must leave the
 * job's streams alone (it used to end and free them under the job); one
 * set at a time holds streams, a holder that took none blocks nobody, and
 * the messages name the holder.  getfd names come through the hook the
 * QMP server's program sets.
 */
#include <errno.h>
#include <fcntl.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>

#include "strata/device-state.h"
#include "strata/fdset.h"
#include "qapi-commands.h"

/* Registers @id with the read end of a new pipe (a save reads it). */
static int reg(const char *id)
{
    GError *err = NULL;
    int p[2];
    assert_int_equal(pipe2(p, O_CLOEXEC), 0);
    int64_t set = fdset_add_fd(p[0], false, 0, NULL, &err);
    assert_true(set >= 0);
    char name[32];
    snprintf(name, sizeof(name), "/dev/fdset/%lld", (long long)set);
    qmp_x_strata_device_state_add(id, name, false, false, &err);
    assert_null(err);
    fdset_remove_fd(set, false, 0, NULL);
    return p[1];
}

/* "id status" of every registered stream. */
static char *registry(void)
{
    GError *err = NULL;
    XStrataDeviceStateInfoList *l = qmp_x_strata_query_device_state(&err);
    GString *s = g_string_new(NULL);
    for (XStrataDeviceStateInfoList *e = l; e; e = e->next) {
        g_string_append_printf(s, "%s%s %s", s->len ? ", " : "",
                               e->value->id,
                               XStrataDeviceStateStatus_str(e->value->status));
    }
    qapi_free_XStrataDeviceStateInfoList(l);
    return g_string_free(s, false);
}

static void registry_is(const char *want)
{
    g_autofree char *got = registry();
    assert_string_equal(got, want);
}

static void del(const char *id, const char *want_err)
{
    GError *err = NULL;
    qmp_x_strata_device_state_del(id, &err);
    if (want_err) {
        assert_non_null(err);
        assert_string_equal(err->message, want_err);
        g_error_free(err);
    } else {
        assert_null(err);
    }
}

/*
 * uaf2.py's order: migrate (no stream registered yet), then a stream,
 * then snapshot-save takes it; the migrate ends first, then the job.
 */
static void test_empty_holder_ends_first(void **state)
{
    GError *err = NULL;
    DsSet *mig, *job;

    assert_true(ds_registry_begin(false, "migrate", NULL, &mig, &err));
    assert_null(mig);
    int w = reg("slow");
    assert_true(ds_registry_begin(false, "snapshot-save", "j", &job, &err));
    assert_non_null(job);
    registry_is("slow saving");
    ds_registry_end(mig);                   /* the migrate concludes */
    registry_is("slow saving");
    del("slow", "Device state 'slow' is in use by snapshot-save job 'j'");
    /* the job's set is whole: its stream and descriptor still there */
    DsStream *st = ds_set_get(job, 0);
    assert_string_equal(st->id, "slow");
    assert_true(fcntl(st->fd, F_GETFD) >= 0);
    atomic_store(&st->outcome, DS_DONE);
    ds_registry_end(job);
    registry_is("slow saved");
    del("slow", NULL);
    close(w);
}

/* The other way round: a job that took none ends while migrate holds. */
static void test_empty_job_ends_first(void **state)
{
    GError *err = NULL;
    DsSet *mig, *job;

    assert_true(ds_registry_begin(true, "snapshot-load", "j", &job, &err));
    assert_null(job);
    int w = reg("a");
    assert_true(ds_registry_begin(false, "migrate", NULL, &mig, &err));
    assert_non_null(mig);
    ds_registry_end(job);
    registry_is("a saving");
    del("a", "Device state 'a' is in use by migrate");
    ds_registry_end(mig);                   /* untouched: registered */
    registry_is("a registered");
    del("a", NULL);
    close(w);
}

/* One set at a time holds streams; one that wants none is not refused. */
static void test_second_holder(void **state)
{
    GError *err = NULL;
    DsSet *mig, *other;

    int wa = reg("a");
    assert_true(ds_registry_begin(false, "migrate", NULL, &mig, &err));
    int wb = reg("b");
    assert_false(ds_registry_begin(false, "snapshot-save", "j", &other,
                                   &err));
    assert_null(other);
    assert_string_equal(err->message, "Device state 'a' is in use by a "
                        "running save or restore (migrate)");
    g_clear_error(&err);
    GPtrArray *ids = g_ptr_array_new();
    g_ptr_array_add(ids, (char *)"b");
    assert_false(ds_registry_begin_ids(false, "x-strata-machine-snapshot",
                                       "m", ids, &other, &err));
    assert_string_equal(err->message, "Device state 'b' cannot be taken "
                        "while migrate holds device state 'a' (one save or "
                        "restore at a time has the streams)");
    g_clear_error(&err);
    g_ptr_array_set_size(ids, 0);
    assert_true(ds_registry_begin_ids(false, "x-strata-machine-snapshot",
                                      "m", ids, &other, &err));
    assert_null(other);
    ds_registry_end(other);
    registry_is("a saving, b registered");
    ds_registry_end(mig);
    registry_is("a registered, b registered");
    /* now b alone can be taken, and a stays free */
    g_ptr_array_add(ids, (char *)"b");
    assert_true(ds_registry_begin_ids(false, "x-strata-machine-snapshot",
                                      "m", ids, &other, &err));
    registry_is("a registered, b saving");
    ds_registry_end(other);
    g_ptr_array_free(ids, true);
    del("a", NULL);
    del("b", NULL);
    close(wa);
    close(wb);
}

/* The QMP session's getfd names, as the daemon's hook sees them. */
static int named_fd = -1;

static int take_named(const char *name)
{
    int fd = strcmp(name, "fs0-state") == 0 ? named_fd : -1;
    if (fd >= 0) {
        named_fd = -1;
    }
    return fd;
}

static void add_named_fails(const char *id, const char *name)
{
    GError *err = NULL;
    g_autofree char *want = g_strdup_printf("File descriptor named '%s' has "
                                            "not been found", name);
    qmp_x_strata_device_state_add(id, name, false, false, &err);
    assert_non_null(err);
    assert_string_equal(err->message, want);
    g_error_free(err);
}

/*
 * A getfd name is taken through ds_registry_set_named_fds's hook (the
 * registry used weak references to the QMP server instead): without a
 * hook no name is found; with one, the descriptor is taken from the
 * session (the name is gone) and closed by the registry.
 */
static void test_named_fd(void **state)
{
    GError *err = NULL;
    int p[2];

    assert_int_equal(pipe2(p, O_CLOEXEC), 0);
    named_fd = p[0];
    add_named_fails("n", "fs0-state");
    assert_int_equal(named_fd, p[0]);
    ds_registry_set_named_fds(take_named);
    add_named_fails("n", "other");
    qmp_x_strata_device_state_add("n", "fs0-state", false, false, &err);
    assert_null(err);
    assert_int_equal(named_fd, -1);
    registry_is("n registered");
    add_named_fails("m", "fs0-state");
    del("n", NULL);
    /* the registry owned it: closed with the registration */
    assert_int_equal(fcntl(p[0], F_GETFD), -1);
    assert_int_equal(errno, EBADF);
    registry_is("");
    ds_registry_set_named_fds(NULL);
    close(p[1]);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_empty_holder_ends_first),
        cmocka_unit_test(test_empty_job_ends_first),
        cmocka_unit_test(test_second_holder),
        cmocka_unit_test(test_named_fd),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
