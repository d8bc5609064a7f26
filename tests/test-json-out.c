/*
 * strata/json-out.h against output QEMU 7.2 produced: member order of a
 * QDict, string escapes, compact and pretty layout, the human dump.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdbool.h>
#include <string.h>
#include <cmocka.h>
#include "strata/json-out.h"

static void expect_compact(json_t *v, const char *want)
{
    char *text = json_out_compact_str(v);
    assert_string_equal(text, want);
    g_free(text);
    json_decref(v);
}

/* qemu-storage-daemon's greeting, members inserted in schema order. */
static void test_qmp_greeting(void **state)
{
    (void)state;
    json_t *v = json_pack("{s:{s:{s:{s:i,s:i,s:i},s:s},s:[s]}}", "QMP",
                          "version", "qemu", "major", 7, "minor", 2,
                          "micro", 0, "package", "x", "capabilities", "oob");
    expect_compact(v, "{\"QMP\": {\"version\": {\"qemu\": {\"micro\": 0, "
                   "\"minor\": 2, \"major\": 7}, \"package\": \"x\"}, "
                   "\"capabilities\": [\"oob\"]}}");
    expect_compact(json_pack("{s:{}}", "return"), "{\"return\": {}}");
    expect_compact(json_pack("{s:[]}", "return"), "{\"return\": []}");
}

static void test_escapes(void **state)
{
    (void)state;
    /* é, U+1F600 (a surrogate pair), controls, quote, backslash. */
    expect_compact(json_string("\xc3\xa9\xf0\x9f\x98\x80\x01\t\"\\~"),
                   "\"\\u00E9\\uD83D\\uDE00\\u0001\\t\\\"\\\\~\"");
    /* Invalid UTF-8 (jansson refuses it, so build the text directly). */
    GString *out = g_string_new(NULL);
    json_out_string(out, "a\xff" "b\xc3(");
    assert_string_equal(out->str, "\"a\\uFFFDb\\uFFFD(\"");
    g_string_free(out, true);
}

/* qemu-img measure --output=json: "required" before "fully-allocated". */
static void test_pretty(void **state)
{
    (void)state;
    json_t *v = json_pack("{s:i,s:i}", "fully-allocated", 1376256,
                          "required", 327680);
    char *text = json_out_pretty_str(v);
    assert_string_equal(text, "{\n    \"required\": 327680,\n"
                        "    \"fully-allocated\": 1376256\n}");
    g_free(text);
    json_decref(v);
    v = json_pack("{s:{},s:[]}", "a", "b");
    text = json_out_pretty_str(v);
    assert_string_equal(text, "{\n    \"a\": {\n    },\n    \"b\": [\n    ]\n}");
    g_free(text);
    json_decref(v);
}

static void test_human(void **state)
{
    (void)state;
    json_t *v = json_pack("{s:s,s:b,s:[{s:i}]}", "compat", "1.1",
                          "lazy-refcounts", 0, "bitmaps", "granularity", 65536);
    GString *out = g_string_new(NULL);
    json_out_human(out, v, 1);
    assert_string_equal(out->str,
                        "    compat: 1.1\n"
                        "    lazy refcounts: false\n"
                        "    bitmaps:\n"
                        "        [0]:\n"
                        "            granularity: 65536\n");
    g_string_free(out, true);
    json_decref(v);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_qmp_greeting),
        cmocka_unit_test(test_escapes),
        cmocka_unit_test(test_pretty),
        cmocka_unit_test(test_human),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
