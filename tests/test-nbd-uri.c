/*
 * nbd_parse_filename(): the options each NBD filename form gives, and the
 * forms QEMU refuses (the messages are checked against qemu-io by the
 * iotest nbd-client-errors).
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <string.h>
#include <cmocka.h>
#include "../block/drivers/nbd-int.h"

/* Parse name; return the options flattened to "k=v;" in key order. */
static char *parse(const char *name)
{
    GError *err = NULL;
    json_t *o = json_object();
    if (!nbd_parse_filename(name, o, &err)) {
        char *msg = g_strdup_printf("error: %s", err->message);
        g_error_free(err);
        json_decref(o);
        return msg;
    }
    json_t *flat = opts_flatten(o);
    const char **keys = g_new0(const char *, json_object_size(flat) + 1);
    const char *k;
    json_t *v;
    size_t n = 0;
    json_object_foreach(flat, k, v) {
        keys[n++] = k;
    }
    for (size_t i = 0; i < n; i++) {         /* insertion sort: few keys */
        for (size_t j = i; j > 0 && strcmp(keys[j - 1], keys[j]) > 0; j--) {
            const char *t = keys[j];
            keys[j] = keys[j - 1];
            keys[j - 1] = t;
        }
    }
    GString *s = g_string_new("");
    for (size_t i = 0; i < n; i++) {
        g_string_append_printf(s, "%s=%s;", keys[i],
                               json_string_value(json_object_get(flat, keys[i])));
    }
    g_free(keys);
    json_decref(flat);
    json_decref(o);
    return g_string_free(s, FALSE);
}

static void check(const char *name, const char *want)
{
    char *got = parse(name);
    if (strcmp(got, want)) {
        fail_msg("%s: got '%s', want '%s'", name, got, want);
    }
    g_free(got);
}

static void test_uris(void **state)
{
    (void)state;
    check("nbd://host/exp",
          "export=exp;server.host=host;server.port=10809;server.type=inet;");
    check("nbd+tcp://host:1234",
          "server.host=host;server.port=1234;server.type=inet;");
    check("nbd://[::1]:99/a/b",
          "export=a/b;server.host=::1;server.port=99;server.type=inet;");
    check("nbd://host:0/",
          "server.host=host;server.port=10809;server.type=inet;");
    check("nbd+unix:///exp?socket=/tmp/s",
          "export=exp;server.path=/tmp/s;server.type=unix;");
    check("nbd+unix://?socket=/tmp/a%20b",
          "server.path=/tmp/a b;server.type=unix;");
    check("nbd+unix:///e%78p?socket=s",
          "export=exp;server.path=s;server.type=unix;");
}

static void test_bad_uris(void **state)
{
    (void)state;
    const char *bad[] = {
        "nbd://", "nbd:///exp", "nbd://host/?socket=x", "nbd://host:p/",
        "nbd+unix:///exp", "nbd+unix://host/?socket=x",
        "nbd+unix:///?socket=a&b=c", "nbd+unix:///?path=x",
        "nbd+unix:///e%7?socket=x", "nbd+foo://host", "nbd://[::1/",
    };
    for (size_t i = 0; i < G_N_ELEMENTS(bad); i++) {
        check(bad[i], "error: No valid URL specified");
    }
}

static void test_legacy(void **state)
{
    (void)state;
    check("nbd:unix:/tmp/s", "server.path=/tmp/s;server.type=unix;");
    check("nbd:unix:/tmp/s:exportname=e",
          "export=e;server.path=/tmp/s;server.type=unix;");
    check("nbd:localhost:10809:exportname=e",
          "export=e;server.host=localhost;server.port=10809;"
          "server.type=inet;");
    check("nbd:[::1]:5", "server.host=::1;server.port=5;server.type=inet;");
    check("nbd:", "");
    check("nbd:unix:/s:exportname=", "");
    check("nbd:foo", "error: error parsing address 'foo'");
    check("nbd:host:", "error: error parsing address 'host:'");
}

static void test_conflicts(void **state)
{
    (void)state;
    GError *err = NULL;
    json_t *o = json_object();
    json_object_set_new(o, "export", json_string("x"));
    assert_false(nbd_parse_filename("nbd://h/e", o, &err));
    assert_string_equal(err->message,
                        "Option 'export' cannot be used with a file name");
    g_clear_error(&err);
    json_decref(o);
    o = json_object();
    json_object_set_new(o, "server.path", json_string("x"));
    assert_false(nbd_parse_filename("nbd://h/e", o, &err));
    assert_string_equal(err->message,
                        "Option 'server.path' cannot be used with a file name");
    g_clear_error(&err);
    json_decref(o);
}

static void test_make_filename(void **state)
{
    (void)state;
    NbdAddress u = { .is_unix = true, .path = (char *)"/s" };
    NbdAddress i = { .host = (char *)"h", .port = (char *)"7" };
    char *f;
    assert_string_equal(f = nbd_make_filename(&u, "e"),
                        "nbd+unix:///e?socket=/s");
    g_free(f);
    assert_string_equal(f = nbd_make_filename(&u, NULL),
                        "nbd+unix://?socket=/s");
    g_free(f);
    assert_string_equal(f = nbd_make_filename(&i, "e"), "nbd://h:7/e");
    g_free(f);
    assert_string_equal(f = nbd_make_filename(&i, NULL), "nbd://h:7");
    g_free(f);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_uris),
        cmocka_unit_test(test_bad_uris),
        cmocka_unit_test(test_legacy),
        cmocka_unit_test(test_conflicts),
        cmocka_unit_test(test_make_filename),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
