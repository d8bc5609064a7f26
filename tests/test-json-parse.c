/*
 * opts_parse_json(): the values QEMU's JSON reader produces (the messages
 * are checked against qemu-img by the iotest json-filename-syntax).
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <string.h>
#include <cmocka.h>
#include "strata/opts.h"

static json_t *parse_ok(const char *text)
{
    GError *err = NULL;
    json_t *v = opts_parse_json(text, &err);
    if (!v) {
        fail_msg("'%s': %s", text, err->message);
    }
    assert_null(err);
    return v;
}

static char *parse_err(const char *text)
{
    GError *err = NULL;
    json_t *v = opts_parse_json(text, &err);
    assert_null(v);
    assert_non_null(err);
    char *msg = g_strdup(err->message);
    g_error_free(err);
    return msg;
}

static void test_strings(void **state)
{
    (void)state;
    json_t *v = parse_ok("{'a': 'x\"y', \"b\": \"it\\'s\", 'c': '\\u00e9\\/'}");
    assert_string_equal(json_string_value(json_object_get(v, "a")), "x\"y");
    assert_string_equal(json_string_value(json_object_get(v, "b")), "it's");
    assert_string_equal(json_string_value(json_object_get(v, "c")),
                        "\xc3\xa9/");
    json_decref(v);

    /* U+0000 stays inside the string as the modified UTF-8 pair C0 80 */
    v = parse_ok("'a\\u0000b'");
    assert_int_equal(json_string_length(v), 4);
    assert_memory_equal(json_string_value(v), "a\xc0\x80" "b", 4);
    json_decref(v);

    /* a surrogate pair is one character */
    v = parse_ok("\"\\ud83d\\ude00\"");
    assert_string_equal(json_string_value(v), "\xf0\x9f\x98\x80");
    json_decref(v);
}

static void test_numbers(void **state)
{
    (void)state;
    json_t *v = parse_ok("[0, -0, 9223372036854775807, -9223372036854775808, "
                         "9223372036854775808, 18446744073709551615, "
                         "18446744073709551616, -9223372036854775809, 1.5, "
                         "2e3, 1e400]");
    assert_int_equal(json_integer_value(json_array_get(v, 0)), 0);
    assert_int_equal(json_integer_value(json_array_get(v, 1)), 0);
    assert_true(json_integer_value(json_array_get(v, 2)) == INT64_MAX);
    assert_true(json_integer_value(json_array_get(v, 3)) == INT64_MIN);
    /* past INT64_MAX: the digits, read as text by the option takers */
    assert_string_equal(json_string_value(json_array_get(v, 4)),
                        "9223372036854775808");
    assert_string_equal(json_string_value(json_array_get(v, 5)),
                        "18446744073709551615");
    /* past 2^64 (or below INT64_MIN): a double, as in QEMU */
    assert_true(json_is_real(json_array_get(v, 6)));
    assert_true(json_is_real(json_array_get(v, 7)));
    assert_true(json_real_value(json_array_get(v, 8)) == 1.5);
    assert_true(json_real_value(json_array_get(v, 9)) == 2000.0);
    assert_string_equal(json_string_value(json_array_get(v, 10)), "inf");
    json_decref(v);
}

static void test_structure(void **state)
{
    (void)state;
    json_t *v = parse_ok(" {\"a\": {\"b\": [true, false, null, {}]}, "
                         "\"c\": []}\n");
    json_t *b = json_object_get(json_object_get(v, "a"), "b");
    assert_int_equal(json_array_size(b), 4);
    assert_true(json_is_true(json_array_get(b, 0)));
    assert_true(json_is_false(json_array_get(b, 1)));
    assert_true(json_is_null(json_array_get(b, 2)));
    assert_true(json_is_object(json_array_get(b, 3)));
    assert_int_equal(json_array_size(json_object_get(v, "c")), 0);
    json_decref(v);
}

static void test_errors(void **state)
{
    (void)state;
    static const char *const cases[][2] = {
        { "", "Expecting a JSON value" },
        { "{'a': 1, 'a': 2}", "JSON parse error, duplicate key" },
        { "{} {}", "Expecting at most one JSON value" },
        { "{'a': @}", "JSON parse error, stray '@'" },
        { "{'a'", "JSON parse error, premature EOI" },
        { "{'a': 1", "JSON parse error, premature EOI" },
        { "'abc", "JSON parse error, stray ''abc'" },
        { "[1 2]", "JSON parse error, expected separator in list" },
        { "{1: 2}", "JSON parse error, key is not a string in object" },
        { "nul", "JSON parse error, invalid keyword 'nul'" },
        { "\"\\x\"", "JSON parse error, invalid escape sequence in string" },
        { "\"\\udc00\"",
          "JSON parse error, \\udc00 is not a valid Unicode character" },
        { "\"\xff\"", "JSON parse error, stray '\"\xff'" },
        { "\"\xc0\xaf\"", "JSON parse error, invalid UTF-8 sequence in string" },
    };
    for (size_t i = 0; i < G_N_ELEMENTS(cases); i++) {
        char *msg = parse_err(cases[i][0]);
        assert_string_equal(msg, cases[i][1]);
        g_free(msg);
    }
}

static void test_nesting_limit(void **state)
{
    (void)state;
    GString *deep = g_string_new(NULL);
    for (int i = 0; i < 1025; i++) {
        g_string_append_c(deep, '[');
    }
    char *msg = parse_err(deep->str);
    assert_string_equal(msg, "JSON nesting depth limit exceeded");
    g_free(msg);
    g_string_truncate(deep, 0);
    for (int i = 0; i < 1024; i++) {
        g_string_append_c(deep, '[');
    }
    for (int i = 0; i < 1024; i++) {
        g_string_append_c(deep, ']');
    }
    json_decref(parse_ok(deep->str));
    g_string_free(deep, TRUE);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_strings),
        cmocka_unit_test(test_numbers),
        cmocka_unit_test(test_structure),
        cmocka_unit_test(test_errors),
        cmocka_unit_test(test_nesting_limit),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
