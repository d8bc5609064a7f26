/*
 * strata-shell's line language (qmp-shell/parse.c, pyliteral.c,
 * pyjson.c): every expected string here is what QEMU 7.2's qmp-shell
 * (python/qemu/qmp/qmp_shell.py under Python 3.11) gives for the same
 * input, except where a comment says strata differs on purpose.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <string.h>
#include <cmocka.h>
#include "parse.h"
#include "pyjson.h"

/* The words joined with '|'. */
static char *words(const char *line)
{
    GPtrArray *w = shell_tokenize(line);
    g_ptr_array_add(w, NULL);
    char *s = g_strjoinv("|", (char **)w->pdata);
    g_ptr_array_free(w, TRUE);
    return s;
}

static void check_words(const char *line, const char *want)
{
    g_autofree char *got = words(line);
    assert_string_equal(got, want);
}

static void test_tokenize(void **state)
{
    check_words("a b", "a|b");
    check_words("  ", "");
    check_words("x=\"a b\" y", "x=\"a b\"|y");
    check_words("a='x\\'y z' w", "a='x\\'y z'|w");
    /* an unclosed quote is skipped, the rest splits on */
    check_words("a=\"xy", "a=|xy");
    /* backtracking gives the backslash back to close the quote */
    check_words("\"a\\\"", "\"a\\\"");
    check_words("a=\"b\\\" c\" d", "a=\"b\\\" c\"|d");
    check_words("transaction( x a=1 )", "transaction(|x|a=1|)");
}

/* A value as JSON text, or "error: message". */
static char *value(const char *v)
{
    GError *err = NULL;
    json_t *j = shell_parse_value(v, &err);
    if (!j) {
        char *s = g_strdup_printf("error: %s", err->message);
        g_error_free(err);
        return s;
    }
    char *s = py_json_dumps(j, false);
    json_decref(j);
    return s;
}

static void check_value(const char *v, const char *want)
{
    g_autofree char *got = value(v);
    assert_string_equal(got, want);
}

static void test_values(void **state)
{
    check_value("1_0", "10");
    check_value("+5", "5");
    check_value("007", "7");
    check_value("-0", "0");
    check_value("1__0", "\"1__0\"");
    check_value("_1", "\"_1\"");
    check_value("1.5", "\"1.5\"");          /* floats stay strings */
    check_value("TRUE", "true");
    check_value("false", "false");
    check_value("null", "\"null\"");        /* only inside [ ] or { } */
    check_value("'x'", "\"'x'\"");          /* quotes are kept */
    check_value("-9223372036854775808", "-9223372036854775808");
    /* Python has no limit; jansson has 64 bits: refused, not mangled */
    check_value("9223372036854775808",
                "error: Integer '9223372036854775808' does not fit in 64 bits");
    check_value("[1,{'a':True}]", "[1, {\"a\": true}]");
    check_value("{'a':None}", "{\"a\": null}");
    check_value("[0x10, 1e3, -2, (1,2)]", "[16, 1000.0, -2, [1, 2]]");
    check_value("[a]", "\"[a]\"");
    check_value("[1,2,]", "[1, 2]");
    check_value("{},", "[{}]");             /* a tuple without ( ) */
    check_value("[1], [2],", "[[1], [2]]");
    check_value("[01]", "\"[01]\"");
    check_value("[-0x1_0]", "[-16]");
    check_value("['a' \"b\"]", "[\"ab\"]");
    check_value("[(1)]", "[1]");
    check_value("{\"a\":1,\"a\":2}", "{\"a\": 2}");
    check_value("[true, null]", "[true, null]");
    check_value("{1: 2, True: None, 'a': 0, False: 1, 0: 3}",
                "{\"1\": null, \"a\": 0, \"false\": 3}");
    check_value("[1, '\\d']", "[1, \"\\\\d\"]");
    check_value("[\"\\u00e9\", '\\x41']", "[\"\\u00e9\", \"A\"]");
    check_value("[1.0, 0.1, 1e16, 1e-5, 123456789012345678.0, 1e-4, 2.5e300]",
                "[1.0, 0.1, 1e+16, 1e-05, 1.2345678901234568e+17, 0.0001, "
                "2.5e+300]");
    /* a set cannot be sent; qmp-shell crashes, strata sends the text */
    check_value("{1,2}", "\"{1,2}\"");
}

static void test_dumps(void **state)
{
    json_t *v = json_pack("{s:[i,{}],s:s}", "b", 1, "a",
                          "\xc3\xa9\xf0\x9f\x98\x80\x7f\x01\"\\");
    g_autofree char *pretty = py_json_dumps(v, true);
    g_autofree char *flat = py_json_dumps(v, false);
    assert_string_equal(pretty,
        "{\n"
        "    \"a\": \"\\u00e9\\ud83d\\ude00\\u007f\\u0001\\\"\\\\\",\n"
        "    \"b\": [\n"
        "        1,\n"
        "        {}\n"
        "    ]\n"
        "}");
    /* insertion order without -p, as qmp-shell sends it */
    assert_string_equal(flat, "{\"b\": [1, {}], \"a\": "
                        "\"\\u00e9\\ud83d\\ude00\\u007f\\u0001\\\"\\\\\"}");
    json_decref(v);
}

/* Feed lines through one parser; each result is the command's JSON, "-"
 * for nothing, or "error: message". */
static char *feed(ShellParser *p, const char *line)
{
    GError *err = NULL;
    json_t *cmd;
    int r = shell_parse_line(p, line, &cmd, &err);
    if (r < 0) {
        char *s = g_strdup_printf("error: %s", err->message);
        g_error_free(err);
        return s;
    }
    if (r == SHELL_LINE_NOTHING) {
        return g_strdup("-");
    }
    char *s = py_json_dumps(cmd, false);
    json_decref(cmd);
    return s;
}

static void check_line(ShellParser *p, const char *line, const char *want)
{
    g_autofree char *got = feed(p, line);
    assert_string_equal(got, want);
}

static void test_lines(void **state)
{
    ShellParser p;
    shell_parser_init(&p);

    check_line(&p, "query-version",
               "{\"execute\": \"query-version\", \"arguments\": {}}");
    check_line(&p, "", "-");
    check_line(&p, "   ", "-");
    check_line(&p, "blockdev-add driver=file node-name=f filename=x.img",
               "{\"execute\": \"blockdev-add\", \"arguments\": {\"driver\": "
               "\"file\", \"node-name\": \"f\", \"filename\": \"x.img\"}}");
    /* every dotted key starts from the top (qmp-shell 7.2 would put the
     * second one in file.file: a bug strata does not copy) */
    check_line(&p, "blockdev-add driver=qcow2 file.driver=file "
               "file.filename=x node-name=q",
               "{\"execute\": \"blockdev-add\", \"arguments\": {\"driver\": "
               "\"qcow2\", \"file\": {\"driver\": \"file\", \"filename\": "
               "\"x\"}, \"node-name\": \"q\"}}");
    check_line(&p, "foo bar",
               "error: Expected a key=value pair, got 'bar'");
    check_line(&p, "foo a=1 a.b=2",
               "error: Cannot use \"a\" as both leaf and non-leaf key");
    /* these two follow from keys starting at the top (qmp-shell 7.2
     * nests the second key inside the first and reports nothing) */
    check_line(&p, "foo a.b.c=1 a.b=2",
               "error: Cannot use \"a.b\" as both leaf and non-leaf key");
    check_line(&p, "foo x.a=1 x.a.b=2",
               "error: Cannot use \"x.a\" as both leaf and non-leaf key");
    /* a key set to an object and then to a value: qmp-shell names the
     * key's parent ("", here), strata the key */
    check_line(&p, "foo a={} a=2",
               "error: Cannot use \"a\" as both leaf and non-leaf key");
    check_line(&p, "foo a=1 a=2",
               "error: Cannot set \"a\" multiple times");
    check_line(&p, "foo a=", "{\"execute\": \"foo\", \"arguments\": "
               "{\"a\": \"\"}}");
    check_line(&p, ")", "{\"execute\": \")\", \"arguments\": {}}");
    check_line(&p, "foo =1 a.=2", "{\"execute\": \"foo\", \"arguments\": "
               "{\"\": 1, \"a\": {\"\": 2}}}");

    /* a block over several lines */
    check_line(&p, "transaction(", "-");
    assert_true(p.in_transaction);
    check_line(&p, "abc x=1", "-");
    check_line(&p, "bad", "-");
    check_line(&p, "q y", "error: Expected a key=value pair, got 'y'");
    assert_true(p.in_transaction);          /* a bad action does not end it */
    check_line(&p, ")",
               "{\"execute\": \"transaction\", \"arguments\": {\"actions\": "
               "[{\"type\": \"abc\", \"data\": {\"x\": 1}}, "
               "{\"type\": \"bad\", \"data\": {}}]}}");
    assert_false(p.in_transaction);

    /* on one line, and ending on an action line */
    check_line(&p, "transaction( a n=1 )",
               "{\"execute\": \"transaction\", \"arguments\": {\"actions\": "
               "[{\"type\": \"a\", \"data\": {\"n\": 1}}]}}");
    check_line(&p, "transaction( )",
               "{\"execute\": \"transaction\", \"arguments\": "
               "{\"actions\": []}}");
    check_line(&p, "transaction(", "-");
    check_line(&p, "a k=v )",
               "{\"execute\": \"transaction\", \"arguments\": {\"actions\": "
               "[{\"type\": \"a\", \"data\": {\"k\": \"v\"}}]}}");
    /* a new "transaction(" drops what was collected */
    check_line(&p, "transaction( a", "-");
    check_line(&p, "transaction( b )",
               "{\"execute\": \"transaction\", \"arguments\": {\"actions\": "
               "[{\"type\": \"b\", \"data\": {}}]}}");
    check_line(&p, "transaction(", "-");
    check_line(&p, ") x",
               "error: Unexpected input after close of Transaction sub-shell");
    assert_false(p.in_transaction);

    check_line(&p, "foo a=\xff", "error: The line is not UTF-8");
    shell_parser_reset(&p);
    json_decref(p.actions);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_tokenize),
        cmocka_unit_test(test_values),
        cmocka_unit_test(test_dumps),
        cmocka_unit_test(test_lines),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
