/*
 * The generated BlockdevOptions / BlockdevCreateOptions readers of the real
 * schema, from QMP-style JSON and from --blockdev dotted keys.  Every
 * expected message was produced by qemu-storage-daemon 7.2 (blockdev-add
 * for JSON, --blockdev for dotted keys).
 */
#include <pthread.h>
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <string.h>
#include <cmocka.h>
#include "cmdline.h"
#include "qapi-visit.h"
#include "strata/opts.h"

static BlockdevOptions *from_json(const char *text, GError **errp)
{
    json_t *tree = opts_parse_json(text, NULL);
    assert_non_null(tree);
    BlockdevOptions *o = qapi_BlockdevOptions_from_json(tree, errp);
    json_decref(tree);
    return o;
}

static void json_error(const char *text, const char *want)
{
    GError *err = NULL;
    BlockdevOptions *o = from_json(text, &err);
    if (o) {
        fail_msg("%s parsed, expected \"%s\"", text, want);
    }
    assert_string_equal(err->message, want);
    g_error_free(err);
}

static void cmdline_error(const char *text, const char *want)
{
    GError *err = NULL;
    BlockdevOptions *o = qapi_blockdev_options_from_cmdline(text, &err);
    if (o) {
        fail_msg("%s parsed, expected \"%s\"", text, want);
    }
    assert_string_equal(err->message, want);
    g_error_free(err);
}

static void test_json_errors(void **state)
{
    json_error("{'driver': 'foo'}", "Parameter 'driver' does not accept value 'foo'");
    json_error("{'driver': 'file'}", "Parameter 'filename' is missing");
    json_error("{'driver': 'file', 'filename': 1}",
               "Invalid parameter type for 'filename', expected: string");
    json_error("{'driver': 'qcow2', 'file': {'driver': 'file'}}",
               "Parameter 'file.filename' is missing");
    json_error("{'driver': 'qcow2', 'file': 1}",
               "Invalid parameter type for 'file', expected: BlockdevRef");
    json_error("{'driver': 'qcow2', 'file': 'x', 'backing': 5}",
               "Invalid parameter type for 'backing', expected: BlockdevRefOrNull");
    json_error("{'driver': 'quorum', 'children': [{'driver': 'file', 'filename': 'x', "
               "'y': 1}], 'vote-threshold': 1}",
               "Parameter 'children[0].y' is unexpected");
    json_error("{'driver': 'quorum', 'children': ['a', {'driver': 'file'}], "
               "'vote-threshold': 1}",
               "Parameter 'children[1].filename' is missing");
    json_error("{'driver': 'qcow2', 'file': 'x', 'l2-cache-entry-size': 'a'}",
               "Invalid parameter type for 'l2-cache-entry-size', expected: integer");
    json_error("{'driver': 'raw', 'file': 'x', 'cache': {'direct': 1}}",
               "Invalid parameter type for 'cache.direct', expected: boolean");
    json_error("{'driver': 'null-co', 'size': 1.5}",
               "Invalid parameter type for 'size', expected: integer");
    json_error("{'driver': 'file', 'filename': 'x', 'aio': 'foo'}",
               "Parameter 'aio' does not accept value 'foo'");
    json_error("{'driver': 'nbd', 'server': {'type': 'unix', 'path': 'x'}, "
               "'reconnect-delay': -1}",
               "Parameter 'reconnect-delay' expects uint32_t");
    json_error("{'driver': 'nbd', 'server': {'type': 'unix', 'path': 'x'}, "
               "'reconnect-delay': '5'}",
               "Parameter 'reconnect-delay' expects uint64");
    json_error("{'driver': 'null-co', 'latency-ns': 1.5}",
               "Parameter 'latency-ns' expects uint64");
    json_error("{'driver': 'qcow2', 'file': 'x', 'overlap-check': 5}",
               "Invalid parameter type for 'overlap-check', expected: Qcow2OverlapChecks");
    json_error("{'driver': 'qcow2', 'file': 'x', 'overlap-check': {'template': 'x'}}",
               "Parameter 'template' does not accept value 'x'");
    json_error("{'node-name': 'x'}", "Parameter 'driver' is missing");
    json_error("{'driver': 'raw', 'file': 'x', 'bogus': 1}",
               "Parameter 'bogus' is unexpected");
}

static void test_cmdline_errors(void **state)
{
    cmdline_error("driver=file", "Parameter 'filename' is missing");
    cmdline_error("foo.img", "Parameter 'driver' does not accept value 'foo.img'");
    cmdline_error("x=1", "Parameter 'driver' is missing");
    cmdline_error("driver=file,filename=x,aio-max-batch=abc",
                  "Parameter 'aio-max-batch' expects integer");
    cmdline_error("driver=null-co,size=1x", "Parameter 'size' expects integer");
    cmdline_error("driver=null-co,read-zeroes=maybe",
                  "Parameter 'read-zeroes' expects 'on' or 'off'");
    cmdline_error("driver=quorum,children.0.driver=file,children.0.filename=x,"
                  "children.0.y=1,vote-threshold=1",
                  "Parameter 'children.0.y' is unexpected");
    cmdline_error("driver=quorum,children.1=x,vote-threshold=1",
                  "Parameter 'children.0' missing");
    cmdline_error("driver=quorum,children.0=x,children.a=y,vote-threshold=1",
                  "Parameters 'children.*' used inconsistently");
    cmdline_error("driver=null-co,size.a=1", "Parameters 'size.*' are unexpected");
    cmdline_error("driver=qcow2,file.driver=file", "Parameter 'file.filename' is missing");
    cmdline_error("driver=raw,file.driver=qcow2,file.file.driver=file",
                  "Parameter 'file.file.filename' is missing");
    cmdline_error("driver=qcow2,file=x,cache-size=1k", "Parameter 'cache-size' expects integer");
    cmdline_error("driver=nbd,server.type=unix,reconnect-delay=5000000000",
                  "Parameter 'server.path' is missing");
    cmdline_error("driver=nbd,server.type=foo", "Parameter 'type' does not accept value 'foo'");
    cmdline_error("driver=blkdebug,image=x,max-transfer=3000000000",
                  "Parameter 'max-transfer' expects int32_t");
    cmdline_error("driver=qcow2,file=x,overlap-check=foo",
                  "Parameter 'overlap-check' does not accept value 'foo'");
    cmdline_error("driver=qcow2,file=x,overlap-check.template=foo",
                  "Parameter 'template' does not accept value 'foo'");
}

/* The same node from dotted keys and from JSON: identical C values. */
static void test_keyval_and_json_agree(void **state)
{
    GError *err = NULL;
    BlockdevOptions *k = qapi_blockdev_options_from_cmdline(
        "driver=qcow2,node-name=top,read-only=on,cache.direct=off,"
        "file.driver=file,file.filename=a.qcow2,file.aio=io_uring,"
        "backing=base,l2-cache-size=0x100000,overlap-check=cached,"
        "discard=unmap", &err);
    assert_null(err);
    BlockdevOptions *j = qapi_blockdev_options_from_cmdline(
        "{\"driver\": \"qcow2\", \"node-name\": \"top\", \"read-only\": true, "
        "\"cache\": {\"direct\": false}, \"file\": {\"driver\": \"file\", "
        "\"filename\": \"a.qcow2\", \"aio\": \"io_uring\"}, \"backing\": \"base\", "
        "\"l2-cache-size\": 1048576, \"overlap-check\": \"cached\", "
        "\"discard\": \"unmap\"}", &err);
    assert_null(err);
    assert_int_equal(k->driver, BLOCKDEV_DRIVER_QCOW2);
    assert_string_equal(k->node_name, "top");
    assert_true(k->has_read_only && k->read_only);
    assert_true(k->cache->has_direct && !k->cache->direct);
    assert_false(k->cache->has_no_flush);
    assert_int_equal(k->discard, BLOCKDEV_DISCARD_OPTIONS_UNMAP);
    BlockdevOptionsQcow2 *q = &k->u.qcow2;
    assert_int_equal(q->file->type, QTYPE_QDICT);
    assert_int_equal(q->file->u.definition.driver, BLOCKDEV_DRIVER_FILE);
    assert_string_equal(q->file->u.definition.u.file.filename, "a.qcow2");
    assert_int_equal(q->file->u.definition.u.file.aio, BLOCKDEV_AIO_OPTIONS_IO_URING);
    assert_int_equal(q->backing->type, QTYPE_QSTRING);
    assert_string_equal(q->backing->u.reference, "base");
    assert_true(q->has_l2_cache_size);
    assert_int_equal(q->l2_cache_size, 1048576);
    assert_int_equal(q->overlap_check->type, QTYPE_QSTRING);
    assert_int_equal(q->overlap_check->u.mode, QCOW2_OVERLAP_CHECK_MODE_CACHED);

    json_t *jk = qapi_BlockdevOptions_to_json(k);
    json_t *jj = qapi_BlockdevOptions_to_json(j);
    assert_true(json_equal(jk, jj));
    /* And back: the writer's output reads as the same value. */
    BlockdevOptions *again = qapi_BlockdevOptions_from_json(jk, &err);
    assert_null(err);
    json_t *ja = qapi_BlockdevOptions_to_json(again);
    assert_true(json_equal(jk, ja));
    json_decref(jk);
    json_decref(jj);
    json_decref(ja);
    qapi_free_BlockdevOptions(again);
    qapi_free_BlockdevOptions(k);
    qapi_free_BlockdevOptions(j);
}

static void test_quorum_lists(void **state)
{
    GError *err = NULL;
    BlockdevOptions *o = qapi_blockdev_options_from_cmdline(
        "driver=quorum,vote-threshold=2,children.0=a,children.1.driver=raw,"
        "children.1.file=b,children.2=c,read-pattern=fifo", &err);
    assert_null(err);
    BlockdevRefList *c = o->u.quorum.children;
    assert_string_equal(c->value->u.reference, "a");
    assert_int_equal(c->next->value->u.definition.driver, BLOCKDEV_DRIVER_RAW);
    assert_string_equal(c->next->value->u.definition.u.raw.file->u.reference, "b");
    assert_string_equal(c->next->next->value->u.reference, "c");
    assert_null(c->next->next->next);
    assert_int_equal(o->u.quorum.vote_threshold, 2);
    qapi_free_BlockdevOptions(o);
}

/* backing: null is the alternate's null branch, not a missing member. */
static void test_backing_null(void **state)
{
    GError *err = NULL;
    BlockdevOptions *o = from_json("{'driver': 'qcow2', 'file': 'f', 'backing': null}",
                                   &err);
    assert_null(err);
    assert_non_null(o->u.qcow2.backing);
    assert_int_equal(o->u.qcow2.backing->type, QTYPE_QNULL);
    json_t *j = qapi_BlockdevOptions_to_json(o);
    assert_true(json_is_null(json_object_get(j, "backing")));
    json_decref(j);
    qapi_free_BlockdevOptions(o);
}

static void test_create_options(void **state)
{
    GError *err = NULL;
    json_t *tree = opts_parse_json(
        "{'driver': 'qcow2', 'file': 'proto', 'size': 1073741824, "
        "'cluster-size': 65536, 'version': 'v3', 'backing-fmt': 'raw', "
        "'encrypt': {'format': 'luks', 'key-secret': 'sec0', 'iter-time': 10}}",
        NULL);
    BlockdevCreateOptions *c = qapi_BlockdevCreateOptions_from_json(tree, &err);
    assert_null(err);
    BlockdevCreateOptionsQcow2 *q = &c->u.qcow2;
    assert_int_equal(q->size, 1073741824);
    assert_true(q->has_cluster_size);
    assert_int_equal(q->version, BLOCKDEV_QCOW2_VERSION_V3);
    assert_int_equal(q->backing_fmt, BLOCKDEV_DRIVER_RAW);
    assert_int_equal(q->encrypt->format, Q_CRYPTO_BLOCK_FORMAT_LUKS);
    assert_string_equal(q->encrypt->u.luks.key_secret, "sec0");
    assert_int_equal(q->encrypt->u.luks.iter_time, 10);
    json_t *back = qapi_BlockdevCreateOptions_to_json(c);
    assert_true(json_equal(back, tree));
    json_decref(back);
    json_decref(tree);
    qapi_free_BlockdevCreateOptions(c);

    /* A size in keyval mode takes suffixes; in JSON it must be a number. */
    tree = opts_parse_keyval("driver=file,filename=x,size=1.5G", NULL, NULL);
    c = qapi_BlockdevCreateOptions_from_keyval(tree, &err);
    assert_null(err);
    assert_int_equal(c->u.file.size, 1610612736);
    qapi_free_BlockdevCreateOptions(c);
    json_decref(tree);
    tree = opts_parse_keyval("driver=file,filename=x,size=1.5Q", NULL, NULL);
    c = qapi_BlockdevCreateOptions_from_keyval(tree, &err);
    assert_null(c);
    assert_string_equal(err->message, "Parameter 'size' expects size");
    g_clear_error(&err);
    json_decref(tree);
    tree = opts_parse_json("{'driver': 'file', 'filename': 'x', 'size': '1G'}", NULL);
    c = qapi_BlockdevCreateOptions_from_json(tree, &err);
    assert_null(c);
    assert_string_equal(err->message, "Parameter 'size' expects uint64");
    g_clear_error(&err);
    json_decref(tree);
}

/*
 * The deepest tree the JSON parser lets through (1024 levels) is read,
 * written and freed recursively: it must fit in a coroutine's 1 MiB stack
 * (marshallers run in coroutines), with room to spare, also under ASan.
 */
static int deep_ok;

static void *read_deep(void *arg)
{
    GString *s = g_string_new(NULL);
    for (int i = 0; i < 1000; i++) {
        g_string_append(s, "{\"driver\": \"raw\", \"file\": ");
    }
    g_string_append(s, "\"proto\"");
    for (int i = 0; i < 1000; i++) {
        g_string_append_c(s, '}');
    }
    json_t *tree = opts_parse_json(s->str, NULL);
    g_string_free(s, TRUE);
    BlockdevOptions *o = qapi_BlockdevOptions_from_json(tree, NULL);
    json_t *back = o ? qapi_BlockdevOptions_to_json(o) : NULL;
    bool same = back && json_equal(back, tree);
    json_decref(back);
    json_decref(tree);
    qapi_free_BlockdevOptions(o);
    deep_ok = same;
    return NULL;
}

static void test_deep_nesting(void **state)
{
    pthread_attr_t attr;
    pthread_t th;
    pthread_attr_init(&attr);
    pthread_attr_setstacksize(&attr, 1024 * 1024);
    assert_int_equal(pthread_create(&th, &attr, read_deep, NULL), 0);
    pthread_join(th, NULL);
    pthread_attr_destroy(&attr);
    assert_true(deep_ok);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_json_errors),
        cmocka_unit_test(test_cmdline_errors),
        cmocka_unit_test(test_keyval_and_json_agree),
        cmocka_unit_test(test_quorum_lists),
        cmocka_unit_test(test_backing_null),
        cmocka_unit_test(test_create_options),
        cmocka_unit_test(test_deep_nesting),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
