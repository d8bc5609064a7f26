/*
 * strata-shell's line language (qmp-shell/parse.c, pyliteral.c,
 * pyjson.c): every expected string here is what QEMU 7.2's qmp-shell
 * (python/qemu/qmp/qmp_shell.py under Python 3.11) gives for the same
 * input, except where a comment says strata differs on purpose.  And its
 * completion over a query-qmp-schema reply (complete.c), which qmp-shell
 * does not have.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <string.h>
#include <cmocka.h>
#include "complete.h"
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

/*
 * A schema in query-qmp-schema's shape, type names masked as numbers:
 * add-node takes a flat union on "driver" (its branch "file" adds
 * "filename", "qcow2" adds "file", an alternate of a reference string and
 * the union itself) and a boolean; transaction's actions wrap each
 * action's arguments in "data".
 */
static const char schema_text[] =
    "["
    "{'name': 'add-node', 'meta-type': 'command', 'arg-type': '1'},"
    "{'name': 'add-nothing', 'meta-type': 'command', 'arg-type': '0'},"
    "{'name': 'transaction', 'meta-type': 'command', 'arg-type': '6'},"
    "{'name': '0', 'meta-type': 'object', 'members': []},"
    "{'name': '1', 'meta-type': 'object', 'tag': 'driver',"
    " 'members': [{'name': 'driver', 'type': '2'},"
    "             {'name': 'node-name', 'type': 'str'},"
    "             {'name': 'read-only', 'type': 'bool'}],"
    " 'variants': [{'case': 'file', 'type': '3'},"
    "              {'case': 'qcow2', 'type': '4'}]},"
    "{'name': '2', 'meta-type': 'enum', 'values': ['file', 'qcow2', 'raw']},"
    "{'name': '3', 'meta-type': 'object',"
    " 'members': [{'name': 'filename', 'type': 'str'}]},"
    "{'name': '4', 'meta-type': 'object',"
    " 'members': [{'name': 'file', 'type': '5'}]},"
    "{'name': '5', 'meta-type': 'alternate',"
    " 'members': [{'type': '1'}, {'type': 'str'}]},"
    "{'name': '6', 'meta-type': 'object',"
    " 'members': [{'name': 'actions', 'type': '[7]'}]},"
    "{'name': '[7]', 'meta-type': 'array', 'element-type': '7'},"
    "{'name': '7', 'meta-type': 'object', 'tag': 'type',"
    " 'members': [{'name': 'type', 'type': '8'}],"
    " 'variants': [{'case': 'snap', 'type': '9'}]},"
    "{'name': '8', 'meta-type': 'enum', 'values': ['snap']},"
    "{'name': '9', 'meta-type': 'object',"
    " 'members': [{'name': 'data', 'type': '10'}]},"
    "{'name': '10', 'meta-type': 'object',"
    " 'members': [{'name': 'device', 'type': 'str'},"
    "             {'name': 'name', 'type': 'str'}]},"
    "{'name': 'str', 'meta-type': 'builtin', 'json-type': 'string'},"
    "{'name': 'bool', 'meta-type': 'builtin', 'json-type': 'boolean'}"
    "]";

/* The candidates for LINE joined with '|'. */
static char *cands(ShellSchema *s, const char *line, bool trans)
{
    GPtrArray *c = shell_complete(s, line, trans);
    g_ptr_array_add(c, NULL);
    char *r = g_strjoinv("|", (char **)c->pdata);
    g_ptr_array_free(c, TRUE);
    return r;
}

static void check_cands(ShellSchema *s, const char *line, bool trans,
                        const char *want)
{
    g_autofree char *got = cands(s, line, trans);
    assert_string_equal(got, want);
}

static void test_complete(void **state)
{
    g_autofree char *text = g_strdup(schema_text);
    for (char *p = text; *p; p++) {
        *p = *p == '\'' ? '"' : *p;
    }
    json_error_t jerr;
    json_t *schema = json_loads(text, 0, &jerr);
    assert_non_null(schema);
    ShellSchema *s = shell_schema_new(schema, NULL);
    shell_schema_add_local(s, "graph");

    check_cands(s, "add", false, "add-node |add-nothing ");
    check_cands(s, "", false, "add-node |add-nothing |graph |transaction ");
    check_cands(s, "  gr", false, "graph ");
    check_cands(s, "add-node ", false, "driver=|node-name=|read-only=");
    check_cands(s, "add-node dr", false, "driver=");
    check_cands(s, "add-node driver=", false,
                "driver=file |driver=qcow2 |driver=raw ");
    check_cands(s, "add-node driver=q", false, "driver=qcow2 ");
    check_cands(s, "add-node read-only=", false,
                "read-only=false |read-only=true ");
    /* the branch the tag chose; keys given are not offered again */
    check_cands(s, "add-node driver=file ", false, "node-name=|read-only=|"
                "filename=");
    check_cands(s, "add-node driver=file node-name=x ", false,
                "read-only=|filename=");
    /* an alternate with an object branch: a name, or the object's keys */
    check_cands(s, "add-node driver=qcow2 fi", false, "file=|file.");
    check_cands(s, "add-node driver=qcow2 file.", false,
                "file.driver=|file.node-name=|file.read-only=");
    check_cands(s, "add-node driver=qcow2 file.driver=file file.f", false,
                "file.filename=");
    check_cands(s, "add-node driver=qcow2 file.nope.", false, "");
    check_cands(s, "no-such ", false, "");
    check_cands(s, "add-nothing ", false, "");
    /* transaction blocks: action names, then their data members */
    check_cands(s, "", true, "snap ");
    check_cands(s, "sn", true, "snap ");
    check_cands(s, "snap ", true, "device=|name=");
    check_cands(s, "snap device=d n", true, "name=");
    check_cands(s, "transaction( snap d", false, "device=");

    shell_schema_free(s);
    json_decref(schema);

    /* query-commands instead: names only */
    json_t *cmds = json_loads("[{\"name\": \"b\"}, {\"name\": \"a\"}]", 0,
                              NULL);
    s = shell_schema_new(NULL, cmds);
    check_cands(s, "", false, "a |b ");
    check_cands(s, "a x", false, "");
    shell_schema_free(s);
    json_decref(cmds);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_tokenize),
        cmocka_unit_test(test_values),
        cmocka_unit_test(test_dumps),
        cmocka_unit_test(test_lines),
        cmocka_unit_test(test_complete),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
