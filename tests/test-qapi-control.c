/*
 * The generated command table and the control/introspection handlers of
 * the real schema (qapi/schema/), called through their marshallers as the
 * server calls them.  Error messages are qemu-storage-daemon 7.2's.
 *
 * qmp_capabilities and quit belong to the server (qapi/cmd-control.c);
 * here they record their arguments so the marshallers can be checked.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <string.h>
#include <cmocka.h>
#include "strata/qmp.h"
#include "strata/qmp-server.h"
#include "qapi-commands.h"
#include "qapi-visit.h"

static int capabilities_calls;
static bool capabilities_oob;
static int quit_calls;

void qmp_qmp_capabilities(QMPCapabilityList *enable, GError **errp)
{
    capabilities_calls++;
    capabilities_oob = false;
    for (; enable; enable = enable->next) {
        capabilities_oob |= enable->value == QMP_CAPABILITY_OOB;
    }
}

void qmp_quit(GError **errp)
{
    quit_calls++;
}

/* Descriptor passing needs a connection: see test-qmp-server, iotests. */
void qmp_getfd(const char *fdname, GError **errp)
{
    error_setg(errp, "not in this test");
}

void qmp_closefd(const char *fdname, GError **errp)
{
    error_setg(errp, "not in this test");
}

AddfdInfo *qmp_add_fd(bool has_fdset_id, int64_t fdset_id,
                      const char *opaque, GError **errp)
{
    error_setg(errp, "not in this test");
    return NULL;
}

void qmp_remove_fd(int64_t fdset_id, bool has_fd, int64_t fd, GError **errp)
{
    error_setg(errp, "not in this test");
}

FdsetInfoList *qmp_query_fdsets(GError **errp)
{
    error_setg(errp, "not in this test");
    return NULL;
}

void qmp_event_send(const char *event, json_t *data)
{
    json_decref(data);
}

/* Handlers run here outside any client session. */
QmpSession *qmp_session_current(void)
{
    return NULL;
}

/* The node commands register their shutdown step; no daemon stops here. */
void qmp_server_at_shutdown(QmpShutdownPhase phase, void (*fn)(void))
{
    (void)phase;
    (void)fn;
}

/* Events go nowhere here, throttled or not. */
void qmp_server_throttle_event(const char *event, unsigned period_ms)
{
    (void)event;
    (void)period_ms;
}

/* Run a command as the server would; returns the reply or NULL + *msg. */
static json_t *run(const char *name, const char *args_json, char **msg)
{
    const QmpCommand *cmd = qmp_command_find(name);
    json_t *args = json_loads(args_json, 0, NULL);
    json_t *ret = NULL;
    GError *err = NULL;
    assert_non_null(cmd);
    assert_non_null(args);
    bool ok = cmd->fn(args, &ret, &err);
    json_decref(args);
    if (!ok) {
        assert_non_null(err);
        assert_null(ret);
        *msg = g_strdup(err->message);
        g_error_free(err);
        return NULL;
    }
    assert_null(err);
    assert_non_null(ret);
    return ret;
}

static void expect_error(const char *name, const char *args, const char *want)
{
    char *msg = NULL;
    json_t *ret = run(name, args, &msg);
    if (ret) {
        fail_msg("%s %s succeeded, expected \"%s\"", name, args, want);
    }
    assert_string_equal(msg, want);
    g_free(msg);
}

static void test_table(void **state)
{
    assert_true(qmp_commands_count >= 5);
    for (size_t i = 1; i < qmp_commands_count; i++) {
        assert_true(strcmp(qmp_commands[i - 1].name, qmp_commands[i].name) < 0);
    }
    for (size_t i = 0; i < qmp_commands_count; i++) {
        assert_ptr_equal(qmp_command_find(qmp_commands[i].name), &qmp_commands[i]);
    }
    assert_null(qmp_command_find("no-such-command"));
    assert_null(qmp_command_find(""));
    assert_true(qmp_command_find("query-version")->flags & QMP_CMD_ALLOW_PRECONFIG);
    assert_false(qmp_command_find("query-version")->flags & QMP_CMD_ALLOW_OOB);
}

static void test_query_version(void **state)
{
    char *msg = NULL;
    json_t *ret = run("query-version", "{}", &msg);
    json_t *want = json_pack("{s:{s:i,s:i,s:i},s:s}", "qemu", "major", 7,
                             "minor", 2, "micro", 0,
                             "package", "strata " STRATA_VERSION);
    assert_true(json_equal(ret, want));
    json_decref(ret);
    json_decref(want);
    expect_error("query-version", "{\"x\": 1}", "Parameter 'x' is unexpected");
}

static void test_capabilities(void **state)
{
    char *msg = NULL;
    json_t *ret = run("qmp_capabilities", "{}", &msg);
    assert_true(json_is_object(ret) && json_object_size(ret) == 0);
    json_decref(ret);
    assert_int_equal(capabilities_calls, 1);
    assert_false(capabilities_oob);

    ret = run("qmp_capabilities", "{\"enable\": [\"oob\"]}", &msg);
    json_decref(ret);
    assert_int_equal(capabilities_calls, 2);
    assert_true(capabilities_oob);

    /* List elements have no name: QEMU says 'null'. */
    expect_error("qmp_capabilities", "{\"enable\": [\"oob\", \"foo\"]}",
                 "Parameter 'null' does not accept value 'foo'");
    expect_error("qmp_capabilities", "{\"enable\": \"oob\"}",
                 "Invalid parameter type for 'enable', expected: array");
    expect_error("qmp_capabilities", "{\"enable\": [1]}",
                 "Invalid parameter type for 'enable[0]', expected: string");
    assert_int_equal(capabilities_calls, 2);

    ret = run("quit", "{}", &msg);
    json_decref(ret);
    assert_int_equal(quit_calls, 1);
    expect_error("quit", "{\"now\": true}", "Parameter 'now' is unexpected");
}

static void test_query_commands(void **state)
{
    char *msg = NULL;
    json_t *ret = run("query-commands", "{}", &msg);
    assert_int_equal(json_array_size(ret), qmp_commands_count);
    for (size_t i = 0; i < qmp_commands_count; i++) {
        json_t *e = json_array_get(ret, i);
        assert_int_equal(json_object_size(e), 1);
        assert_string_equal(json_string_value(json_object_get(e, "name")),
                            qmp_commands[i].name);
    }
    json_decref(ret);
}

/* Find the entry named `name` in a SchemaInfo list. */
static json_t *schema_entry(json_t *schema, const char *name)
{
    size_t i;
    json_t *e;
    json_array_foreach(schema, i, e) {
        if (!strcmp(json_string_value(json_object_get(e, "name")), name)) {
            return e;
        }
    }
    return NULL;
}

static void test_query_qmp_schema(void **state)
{
    char *msg = NULL;
    json_t *ret = run("query-qmp-schema", "{}", &msg);
    json_t *direct = qmp_introspection();
    /* Through SchemaInfoList and back: the data fits its own schema. */
    assert_true(json_equal(ret, direct));
    json_decref(direct);

    for (size_t i = 0; i < qmp_commands_count; i++) {
        json_t *e = schema_entry(ret, qmp_commands[i].name);
        assert_non_null(e);
        assert_string_equal(json_string_value(json_object_get(e, "meta-type")),
                            "command");
    }
    /* query-version: no arguments (the empty object), returns VersionInfo. */
    json_t *qv = schema_entry(ret, "query-version");
    json_t *arg = schema_entry(ret, json_string_value(json_object_get(qv, "arg-type")));
    assert_int_equal(json_array_size(json_object_get(arg, "members")), 0);
    json_t *vi = schema_entry(ret, json_string_value(json_object_get(qv, "ret-type")));
    json_t *m0 = json_array_get(json_object_get(vi, "members"), 0);
    assert_string_equal(json_string_value(json_object_get(m0, "name")), "qemu");
    json_t *m1 = json_array_get(json_object_get(vi, "members"), 1);
    assert_string_equal(json_string_value(json_object_get(m1, "type")), "str");
    /* Masked names: only built-ins keep theirs. */
    assert_null(schema_entry(ret, "VersionInfo"));
    assert_non_null(schema_entry(ret, "int"));
    assert_null(schema_entry(ret, "int64"));
    /* qmp_capabilities' optional list: 'default': null, array of enum. */
    json_t *qc = schema_entry(ret, "qmp_capabilities");
    json_t *qa = schema_entry(ret, json_string_value(json_object_get(qc, "arg-type")));
    json_t *en = json_array_get(json_object_get(qa, "members"), 0);
    assert_true(json_is_null(json_object_get(en, "default")));
    json_t *arr = schema_entry(ret, json_string_value(json_object_get(en, "type")));
    assert_string_equal(json_string_value(json_object_get(arr, "meta-type")), "array");
    json_t *cap = schema_entry(ret, json_string_value(json_object_get(arr, "element-type")));
    assert_string_equal(json_string_value(json_array_get(json_object_get(cap, "values"), 0)),
                        "oob");
    json_decref(ret);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_table),
        cmocka_unit_test(test_query_version),
        cmocka_unit_test(test_capabilities),
        cmocka_unit_test(test_query_commands),
        cmocka_unit_test(test_query_qmp_schema),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
