/*
 * blkdebug: rules from options and rule files, error injection by event,
 * sector and I/O type, once, states, bad configurations, and breakpoints.
 *
 * The tests play the part of a parent driver: they attach a backend to a
 * blkdebug node, signal debug events on its root edge with
 * child_debug_event() and then issue requests on the same edge, exactly as
 * the raw driver does above blkdebug.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "strata/backend.h"
#include "strata/block-driver.h"
#include "strata/block.h"
#include "strata/debug-event.h"
#include "strata/loop.h"
#include "strata/opts.h"
#include "support.h"

#define IMG_SIZE (1024 * 1024)

static char *img_path;

/* ---- Fixture ---- */

typedef struct Fix {
    BlockNode *bs;
    BlockBackend *blk;
    BlockChild *root;
} Fix;

static char *write_file(const char *name, const char *text)
{
    char *path = test_path(name);
    GError *err = NULL;

    assert_true(g_file_set_contents(path, text, -1, &err));
    return path;
}

/* Options: blkdebug over the test image, plus extra keys (JSON text). */
static json_t *bd_options(const char *extra_json)
{
    json_t *o = json_pack("{s:s, s:{s:s, s:s}}", "driver", "blkdebug",
                          "image", "driver", "file", "filename", img_path);
    if (extra_json) {
        json_error_t jerr;
        json_t *extra = json_loads(extra_json, 0, &jerr);
        assert_non_null(extra);
        json_object_update(o, extra);
        json_decref(extra);
    }
    return o;
}

static bool fix_open_options(Fix *f, json_t *options, GError **errp)
{
    memset(f, 0, sizeof(*f));
    f->bs = node_open(NULL, options, NODE_O_RDWR, errp);
    if (!f->bs) {
        return false;
    }
    f->blk = blk_new(BLK_PERM_CONSISTENT_READ | BLK_PERM_WRITE,
                     BLK_PERM_ALL);
    assert_true(blk_insert_node(f->blk, f->bs, NULL));
    f->root = blk_root(f->blk);
    assert_non_null(f->root);
    return true;
}

static void fix_open(Fix *f, const char *extra_json)
{
    GError *err = NULL;

    if (!fix_open_options(f, bd_options(extra_json), &err)) {
        fail_msg("open failed: %s", err->message);
    }
}

static void fix_close(Fix *f)
{
    blk_unref(f->blk);
    node_unref(f->bs);
}

/* Open must fail with exactly this message. */
static void expect_open_error(json_t *options, const char *msg)
{
    GError *err = NULL;
    BlockNode *bs = node_open(NULL, options, NODE_O_RDWR, &err);

    if (bs) {
        node_unref(bs);
        fail_msg("open succeeded, expected: %s", msg);
    }
    assert_non_null(err);
    assert_string_equal(err->message, msg);
    g_error_free(err);
}

/* ---- Requests, as a parent driver issues them ---- */

enum { OP_NONE, OP_READ, OP_WRITE, OP_ZERO, OP_DISCARD, OP_FLUSH, OP_STATUS };

typedef struct Req {
    BlockChild *c;
    int event;               /* -1: signal nothing */
    int op;
    int64_t offset, bytes;
    int ret;
    bool done;
} Req;

static void req_entry(void *opaque)
{
    Req *r = opaque;
    uint8_t *buf = g_malloc0(r->bytes ? r->bytes : 1);
    int64_t pnum, map;
    BlockNode *file;

    if (r->event >= 0) {
        child_debug_event(r->c, r->event);
    }
    switch (r->op) {
    case OP_READ:
        r->ret = child_co_pread(r->c, r->offset, r->bytes, buf, 0);
        break;
    case OP_WRITE:
        r->ret = child_co_pwrite(r->c, r->offset, r->bytes, buf, 0);
        break;
    case OP_ZERO:
        r->ret = child_co_pwrite_zeroes(r->c, r->offset, r->bytes, 0);
        break;
    case OP_DISCARD:
        r->ret = child_co_pdiscard(r->c, r->offset, r->bytes);
        break;
    case OP_FLUSH:
        r->ret = node_co_flush(child_node(r->c));
        break;
    case OP_STATUS:
        r->ret = node_co_block_status(child_node(r->c), true, r->offset,
                                      r->bytes, &pnum, &map, &file);
        break;
    default:
        r->ret = 0;
    }
    g_free(buf);
    r->done = true;
}

static int req(Fix *f, int event, int op, int64_t offset, int64_t bytes)
{
    Req r = { .c = f->root, .event = event, .op = op, .offset = offset,
              .bytes = bytes };

    co_run_sync(req_entry, &r);
    assert_true(r.done);
    return r.ret < 0 ? r.ret : 0;
}

#define READ(f, ev, off, len) req(f, ev, OP_READ, off, len)
#define WRITE(f, ev, off, len) req(f, ev, OP_WRITE, off, len)

/* ---- Event names ---- */

static void test_event_names(void **state)
{
    assert_int_equal(BLKDBG__MAX, 48);
    assert_string_equal(blkdbg_event_names[BLKDBG_L1_UPDATE], "l1_update");
    assert_string_equal(blkdbg_event_names[BLKDBG_READ_AIO], "read_aio");
    assert_string_equal(blkdbg_event_names[BLKDBG_NONE], "none");
    assert_null(blkdbg_event_names[BLKDBG__MAX]);
    for (int i = 0; i < BLKDBG__MAX; i++) {
        assert_int_equal(blkdbg_event_from_name(blkdbg_event_names[i]), i);
    }
    assert_int_equal(blkdbg_event_from_name("bogus"), -1);
    assert_int_equal(blkdbg_event_from_name("l1_grow.alloc_table"), -1);
    assert_int_equal(blkdbg_event_from_name(NULL), -1);
    /* An edge to nothing that handles events: a no-op. */
    child_debug_event(NULL, BLKDBG_READ_AIO);
}

/* ---- Rules from options ---- */

static void test_inline_read_error(void **state)
{
    Fix f;

    fix_open(&f, "{\"inject-error\": [{\"event\": \"read_aio\"}]}");
    /* Nothing armed until the event is signalled. */
    assert_int_equal(READ(&f, -1, 0, 4096), 0);
    assert_int_equal(READ(&f, BLKDBG_READ_AIO, 0, 4096), -EIO);
    /* Still armed: the next request fails too, whatever its type. */
    assert_int_equal(READ(&f, -1, 0, 512), -EIO);
    assert_int_equal(WRITE(&f, -1, 0, 512), -EIO);
    /* Other events do not disarm it. */
    assert_int_equal(READ(&f, BLKDBG_WRITE_AIO, 0, 512), -EIO);
    fix_close(&f);
}

static void test_dotted_options(void **state)
{
    GError *err = NULL;
    char *str = g_strdup_printf("driver=blkdebug,inject-error.0.event=read_aio,"
                                "inject-error.0.errno=28,"
                                "inject-error.1.event=write_aio,"
                                "inject-error.1.errno=13,"
                                "image.driver=file,image.filename=%s",
                                img_path);
    json_t *o = opts_parse_keyval(str, NULL, &err);
    Fix f;

    assert_non_null(o);
    assert_true(fix_open_options(&f, o, &err));
    assert_int_equal(READ(&f, BLKDBG_READ_AIO, 0, 512), -ENOSPC);
    assert_int_equal(WRITE(&f, BLKDBG_WRITE_AIO, 0, 512), -EACCES);
    fix_close(&f);
    g_free(str);

    /* One section given by direct keys. */
    fix_open(&f, "{\"inject-error.event\": \"read_aio\", "
                 "\"inject-error.errno\": \"5\"}");
    assert_int_equal(READ(&f, BLKDBG_READ_AIO, 0, 512), -EIO);
    fix_close(&f);
}

static void test_config_file(void **state)
{
    char *conf = write_file("rules.conf",
                            "# a comment\n"
                            "\n"
                            "[inject-error]\n"
                            "event = \"read_aio\"\n"
                            "errno = \"28\"\n"
                            "\n"
                            "[inject-error \"w1\"]\n"
                            "  event   =   \"write_aio\"  \n"
                            "errno = \"0x1e\"\n");
    char *extra = g_strdup_printf("{\"config\": \"%s\"}", conf);
    Fix f;

    fix_open(&f, extra);
    assert_int_equal(READ(&f, BLKDBG_READ_AIO, 0, 512), -ENOSPC);
    assert_int_equal(WRITE(&f, BLKDBG_WRITE_AIO, 0, 512), -EROFS);
    fix_close(&f);
    g_free(extra);
    g_free(conf);
}

static void test_config_and_inline(void **state)
{
    char *conf = write_file("both.conf", "[inject-error]\n"
                                         "event = \"read_aio\"\n");
    char *extra = g_strdup_printf(
        "{\"config\": \"%s\", \"inject-error\": [{\"event\": \"write_aio\", "
        "\"errno\": 28}]}", conf);
    Fix f;

    fix_open(&f, extra);
    assert_int_equal(READ(&f, BLKDBG_READ_AIO, 0, 512), -EIO);
    assert_int_equal(WRITE(&f, BLKDBG_WRITE_AIO, 0, 512), -ENOSPC);
    fix_close(&f);
    g_free(extra);
    g_free(conf);
}

static void test_filename_syntax(void **state)
{
    const BlockDriver *drv = driver_find("blkdebug");
    char *conf = write_file("fn.conf", "[inject-error]\n"
                                       "event = \"read_aio\"\n"
                                       "errno = \"13\"\n");
    GError *err = NULL;
    json_t *o;
    char *fn;
    Fix f;

    assert_non_null(drv);
    assert_non_null(drv->parse_filename);

    o = json_object();
    assert_true(drv->parse_filename("blkdebug:my.conf:some/img", o, NULL));
    assert_string_equal(json_string_value(json_object_get(o, "config")),
                        "my.conf");
    assert_string_equal(json_string_value(json_object_get(o, "x-image")),
                        "some/img");
    json_decref(o);

    o = json_object();
    assert_true(drv->parse_filename("blkdebug::img:with:colons", o, NULL));
    assert_null(json_object_get(o, "config"));
    assert_string_equal(json_string_value(json_object_get(o, "x-image")),
                        "img:with:colons");
    json_decref(o);

    o = json_object();
    assert_false(drv->parse_filename("blkdebug:img", o, &err));
    assert_string_equal(err->message,
                        "blkdebug requires both config file and image path");
    g_clear_error(&err);
    json_decref(o);

    /* The whole way through node_open, with the image as a protocol node. */
    fn = g_strdup_printf("blkdebug:%s:%s", conf, img_path);
    memset(&f, 0, sizeof(f));
    f.bs = node_open(fn, json_pack("{s:s}", "driver", "blkdebug"),
                     NODE_O_RDWR, &err);
    if (!f.bs) {
        fail_msg("open %s: %s", fn, err->message);
    }
    assert_string_equal(node_get_format_name(node_primary_child(f.bs)),
                        "file");
    assert_string_equal(node_get_filename(f.bs), fn);
    f.blk = blk_new(BLK_PERM_CONSISTENT_READ, BLK_PERM_ALL);
    assert_true(blk_insert_node(f.blk, f.bs, NULL));
    f.root = blk_root(f.blk);
    assert_int_equal(READ(&f, BLKDBG_READ_AIO, 0, 512), -EACCES);
    fix_close(&f);
    g_free(fn);
    g_free(conf);

}

/* ---- Rule semantics ---- */

static void test_once(void **state)
{
    Fix f;

    fix_open(&f, "{\"inject-error\": [{\"event\": \"read_aio\", "
                 "\"once\": \"on\", \"errno\": \"28\"}]}");
    assert_int_equal(READ(&f, BLKDBG_READ_AIO, 0, 512), -ENOSPC);
    assert_int_equal(READ(&f, -1, 0, 512), 0);
    /* A once rule is gone for good, not just disarmed. */
    assert_int_equal(READ(&f, BLKDBG_READ_AIO, 0, 512), 0);
    fix_close(&f);
}

static void test_sector(void **state)
{
    Fix f;

    fix_open(&f, "{\"inject-error\": [{\"event\": \"none\", "
                 "\"sector\": 8}]}");
    assert_int_equal(READ(&f, -1, 0, 4096), 0);     /* sectors 0-7 */
    assert_int_equal(READ(&f, -1, 4096, 512), -EIO);
    assert_int_equal(READ(&f, -1, 3584, 1024), -EIO);
    assert_int_equal(READ(&f, -1, 4608, 512), 0);
    assert_int_equal(WRITE(&f, -1, 4096, 512), -EIO);
    /* A flush covers no sector. */
    assert_int_equal(req(&f, -1, OP_FLUSH, 0, 0), 0);
    fix_close(&f);

    /* Negative sectors other than -1 never match. */
    fix_open(&f, "{\"inject-error\": [{\"event\": \"none\", "
                 "\"sector\": \"-5\"}]}");
    assert_int_equal(READ(&f, -1, 0, 4096), 0);
    fix_close(&f);
}

static void test_iotype(void **state)
{
    Fix f;

    fix_open(&f, "{\"inject-error\": [{\"event\": \"none\", "
                 "\"iotype\": \"write\"}]}");
    assert_int_equal(READ(&f, -1, 0, 512), 0);
    assert_int_equal(WRITE(&f, -1, 0, 512), -EIO);
    assert_int_equal(req(&f, -1, OP_FLUSH, 0, 0), 0);
    fix_close(&f);

    fix_open(&f, "{\"inject-error\": [{\"event\": \"none\", "
                 "\"iotype\": \"flush\", \"errno\": 28}]}");
    assert_int_equal(WRITE(&f, -1, 0, 512), 0);
    assert_int_equal(req(&f, -1, OP_FLUSH, 0, 0), -ENOSPC);
    fix_close(&f);

    /* Discards only reach the driver with discard=unmap. */
    fix_open(&f, "{\"discard\": \"unmap\", "
                 "\"inject-error\": [{\"event\": \"none\", "
                 "\"iotype\": \"discard\"}, {\"event\": \"none\", "
                 "\"iotype\": \"write-zeroes\", \"errno\": 28}]}");
    assert_int_equal(req(&f, -1, OP_DISCARD, 0, 4096), -EIO);
    assert_int_equal(req(&f, -1, OP_ZERO, 0, 4096), -ENOSPC);
    assert_int_equal(READ(&f, -1, 0, 512), 0);
    fix_close(&f);

    /* block-status only fails when asked for explicitly. */
    fix_open(&f, "{\"inject-error\": [{\"event\": \"none\"}]}");
    assert_int_equal(req(&f, -1, OP_STATUS, 0, 4096), 0);
    fix_close(&f);
    fix_open(&f, "{\"inject-error\": [{\"event\": \"none\", "
                 "\"iotype\": \"block-status\"}]}");
    assert_int_equal(req(&f, -1, OP_STATUS, 0, 4096), -EIO);
    assert_int_equal(READ(&f, -1, 0, 512), 0);
    fix_close(&f);
}

static void test_rule_order(void **state)
{
    Fix f;

    /* Of two armed rules, the one defined first wins. */
    fix_open(&f, "{\"inject-error\": [{\"event\": \"read_aio\", "
                 "\"errno\": 5, \"sector\": 8}, {\"event\": \"read_aio\", "
                 "\"errno\": 28}]}");
    assert_int_equal(READ(&f, BLKDBG_READ_AIO, 0, 512), -ENOSPC);
    assert_int_equal(READ(&f, -1, 4096, 512), -EIO);
    fix_close(&f);

    /* An event that arms rules disarms those armed before. */
    fix_open(&f, "{\"inject-error\": [{\"event\": \"write_aio\", "
                 "\"errno\": 28, \"once\": true}, "
                 "{\"event\": \"read_aio\"}]}");
    assert_int_equal(READ(&f, BLKDBG_READ_AIO, 0, 512), -EIO);
    assert_int_equal(WRITE(&f, BLKDBG_WRITE_AIO, 0, 512), -ENOSPC);
    assert_int_equal(WRITE(&f, BLKDBG_WRITE_AIO, 0, 512), 0);
    fix_close(&f);
}

static void test_immediately_and_errno(void **state)
{
    Fix f;

    fix_open(&f, "{\"inject-error\": [{\"event\": \"read_aio\", "
                 "\"immediately\": \"on\", \"errno\": 13}]}");
    assert_int_equal(READ(&f, BLKDBG_READ_AIO, 0, 512), -EACCES);
    fix_close(&f);

    /* errno 0 arms a rule that lets requests through. */
    fix_open(&f, "{\"inject-error\": [{\"event\": \"read_aio\", "
                 "\"errno\": 0}]}");
    assert_int_equal(READ(&f, BLKDBG_READ_AIO, 0, 512), 0);
    fix_close(&f);
}

static void test_states(void **state)
{
    Fix f;

    /*
     * State 1 at start; read_aio moves to 2, and only in state 2 does
     * write_aio arm its rule.  All rules of one event see the state the
     * event started in.
     */
    fix_open(&f, "{\"set-state\": [{\"event\": \"read_aio\", \"state\": 1, "
                 "\"new_state\": 2}, {\"event\": \"flush_to_os\", "
                 "\"new_state\": 1}], "
                 "\"inject-error\": [{\"event\": \"write_aio\", "
                 "\"state\": 2}, {\"event\": \"read_aio\", \"state\": 2, "
                 "\"errno\": 28}]}");
    assert_int_equal(WRITE(&f, BLKDBG_WRITE_AIO, 0, 512), 0);
    assert_int_equal(READ(&f, BLKDBG_READ_AIO, 0, 512), 0);
    assert_int_equal(READ(&f, BLKDBG_READ_AIO, 0, 512), -ENOSPC);
    assert_int_equal(WRITE(&f, BLKDBG_WRITE_AIO, 0, 512), -EIO);
    /* Back to state 1: write_aio arms nothing, the old rule stays armed. */
    assert_int_equal(req(&f, BLKDBG_FLUSH_TO_OS, OP_NONE, 0, 0), 0);
    assert_int_equal(WRITE(&f, BLKDBG_WRITE_AIO, 0, 512), -EIO);
    fix_close(&f);

    /* Of two set-state rules on one event, the first defined wins. */
    fix_open(&f, "{\"set-state\": [{\"event\": \"read_aio\", "
                 "\"new_state\": 2}, {\"event\": \"read_aio\", "
                 "\"new_state\": 3}], "
                 "\"inject-error\": [{\"event\": \"write_aio\", "
                 "\"state\": 2}, {\"event\": \"write_aio\", \"state\": 3, "
                 "\"errno\": 28}]}");
    assert_int_equal(READ(&f, BLKDBG_READ_AIO, 0, 512), 0);
    assert_int_equal(WRITE(&f, BLKDBG_WRITE_AIO, 0, 512), -EIO);
    fix_close(&f);
}

/* ---- Limits and permissions ---- */

static void test_limits(void **state)
{
    Fix f;
    uint8_t buf[512];

    fix_open(&f, "{\"align\": 4096, \"max-transfer\": 65536, "
                 "\"opt-discard\": 8192, \"max-write-zero\": 131072}");
    assert_int_equal(f.bs->bl.request_alignment, 4096);
    assert_int_equal(f.bs->bl.max_transfer, 65536);
    assert_int_equal(f.bs->bl.pdiscard_alignment, 8192);
    assert_int_equal(f.bs->bl.max_pwrite_zeroes, 131072);
    /* io.c must bounce the unaligned request; blkdebug asserts it did. */
    memset(buf, 0, sizeof(buf));
    assert_int_equal(blk_pread(f.blk, 512, 512, buf, 0), 0);
    assert_int_equal(blk_getlength(f.blk), IMG_SIZE);
    fix_close(&f);
}

static void test_bad_limits(void **state)
{
    expect_open_error(bd_options("{\"align\": 3}"),
                      "Cannot meet constraints with align 3");
    expect_open_error(bd_options("{\"align\": \"2G\"}"),
                      "Cannot meet constraints with align 2147483648");
    expect_open_error(bd_options("{\"align\": 4096, \"max-transfer\": 512}"),
                      "Cannot meet constraints with max-transfer 512");
    expect_open_error(bd_options("{\"opt-write-zero\": 4096, "
                                 "\"max-write-zero\": 1024}"),
                      "Cannot meet constraints with max-write-zero 1024");
    expect_open_error(bd_options("{\"align\": 1024, \"opt-discard\": 1536}"),
                      "Cannot meet constraints with opt-discard 1536");
}

static void test_child_perms(void **state)
{
    Fix f;
    uint64_t perm, shared;

    fix_open(&f, "{\"take-child-perms\": [\"resize\"], "
                 "\"unshare-child-perms\": [\"write-unchanged\"]}");
    child_get_perm(f.bs->file, &perm, &shared);
    assert_true(perm & BLK_PERM_RESIZE);
    assert_false(shared & BLK_PERM_WRITE_UNCHANGED);
    fix_close(&f);

    expect_open_error(bd_options("{\"take-child-perms\": [\"bogus\"]}"),
                      "Parameter 'null' does not accept value 'bogus'");
    expect_open_error(bd_options("{\"take-child-perms.1\": \"write\"}"),
                      "List indices are not contiguous, saw 1 elements but "
                      "1 largest index");
}

/*
 * A reopen that keeps the node's options (active commit making a base
 * read-write; here a writable node stays so) repeats the rules unchanged: accepted, as QEMU 7.2; and the
 * rules still fire afterwards.
 */
static void test_reopen_keeps_rules(void **state)
{
    Fix f;
    GError *err = NULL;

    fix_open(&f, "{\"inject-error\": [{\"event\": \"read_aio\", "
                 "\"errno\": 28}], "
                 "\"set-state\": [{\"event\": \"write_aio\", "
                 "\"new_state\": 2}], \"take-child-perms\": [\"resize\"]}");
    if (!node_reopen(f.bs, NULL, false, &err)) {
        fail_msg("reopen read-write: %s", err->message);
    }
    assert_int_equal(READ(&f, BLKDBG_READ_AIO, 0, 512), -ENOSPC);
    fix_close(&f);
}

/* ---- Bad configurations ---- */

static void expect_conf_error(const char *text, const char *msg)
{
    char *conf = write_file("bad.conf", text);
    char *extra = g_strdup_printf("{\"config\": \"%s\"}", conf);

    expect_open_error(bd_options(extra), msg);
    g_free(extra);
    g_free(conf);
}

static void test_bad_config(void **state)
{
    char *missing = test_path("missing.conf");
    char *extra = g_strdup_printf("{\"config\": \"%s\"}", missing);

    expect_open_error(bd_options(extra), "Could not read blkdebug config "
                      "file: No such file or directory");
    g_free(extra);
    g_free(missing);

    expect_conf_error("[inject-error]\nevent = \"bogus\"\n",
                      "invalid parameter value: bogus");
    expect_conf_error("[inject-error]\nevent = \"read_aio\"\nerrno = \"x\"\n",
                      "Parameter 'errno' expects a number");
    expect_conf_error("[inject-error]\nevent = \"read_aio\"\n"
                      "errno = \"99999999999999999999\"\n",
                      "Value '99999999999999999999' is too large for "
                      "parameter 'errno'");
    expect_conf_error("[inject-error]\nonce = \"maybe\"\n",
                      "Parameter 'once' expects 'on' or 'off'");
    expect_conf_error("[inject-error]\nstate = \"1\"\n",
                      "Missing event name for rule");
    expect_conf_error("event = \"read_aio\"\n", "no group defined");
    expect_conf_error("[foo]\n", "There is no option group 'foo'");
    expect_conf_error("[inject-error]\nfoo = \"1\"\n",
                      "Invalid parameter 'foo'");
    expect_conf_error("[set-state]\nevent = \"read_aio\"\nonce = \"on\"\n",
                      "Invalid parameter 'once'");
    expect_conf_error("[inject-error]\n   \n", "parse error");
    /* An unquoted value reads as the empty string, as in QEMU. */
    expect_conf_error("[inject-error]\nevent = read_aio\n",
                      "invalid parameter value: ");
    expect_conf_error("[inject-error]\nevent = \"read_aio\"\n"
                      "iotype = \"sideways\"\n",
                      "invalid parameter value: sideways");
    expect_conf_error("[inject-error \"a\"]\nevent = \"read_aio\"\n"
                      "[inject-error \"a\"]\nevent = \"read_aio\"\n",
                      "Duplicate ID 'a' for inject-error");
    /* A section is checked before the next group name is looked up. */
    expect_conf_error("[inject-error]\nerrno = \"x\"\n[bogus]\n",
                      "Parameter 'errno' expects a number");
    /* Syntax and option errors come before unknown event names. */
    expect_conf_error("[inject-error]\nevent = \"bogus\"\n[inject-error]\n"
                      "errno = \"x\"\n",
                      "Parameter 'errno' expects a number");
}

static void test_bad_inline(void **state)
{
    expect_open_error(bd_options("{\"inject-error\": [{\"event\": "
                                 "\"read_aio\", \"foo\": 1}]}"),
                      "[inject-error] section doesn't support the option "
                      "'foo'");
    expect_open_error(bd_options("{\"inject-error.event\": \"read_aio\", "
                                 "\"inject-error.0.event\": \"read_aio\"}"),
                      "Unknown option '0.event' for [inject-error]");
    expect_open_error(bd_options("{\"inject-error.1.event\": \"read_aio\"}"),
                      "Unused option '1.event' for [inject-error]");
    expect_open_error(bd_options("{\"inject-error.0\": \"x\"}"),
                      "[inject-error] section (index 0) does not consist of "
                      "keys");
    expect_open_error(bd_options("{\"inject-error\": [{\"event\": "
                                 "\"read_aio\", \"errno\": 2.5}]}"),
                      "Parameter 'errno' expects a number");
    expect_open_error(bd_options("{\"set-state\": [{\"event\": \"nope\", "
                                 "\"new_state\": 2}]}"),
                      "invalid parameter value: nope");
    expect_open_error(json_pack("{s:s}", "driver", "blkdebug"),
                      "A block device must be specified for \"image\"");
}

/* ---- Breakpoints ---- */

static GPtrArray *notices;

static void record_notice(const char *line)
{
    g_ptr_array_add(notices, g_strdup(line));
}

static void test_breakpoints(void **state)
{
    const BlockDriver *drv;
    Req r1, r2;
    Coroutine *co;
    Fix f;

    notices = g_ptr_array_new_with_free_func(g_free);
    blkdbg_set_notice_func(record_notice);
    fix_open(&f, NULL);
    drv = f.bs->drv;

    assert_int_equal(drv->debug_breakpoint(f.bs, "bogus", "A"), -ENOENT);
    assert_int_equal(drv->debug_breakpoint(f.bs, "read_aio", "A"), 0);
    assert_false(drv->debug_is_suspended(f.bs, "A"));

    r1 = (Req){ .c = f.root, .event = BLKDBG_READ_AIO, .op = OP_READ,
                .offset = 0, .bytes = 512 };
    co = co_create(req_entry, &r1);
    co_enter(co);
    assert_false(r1.done);
    assert_true(drv->debug_is_suspended(f.bs, "A"));
    assert_int_equal(notices->len, 1);
    assert_string_equal(g_ptr_array_index(notices, 0),
                        "blkdebug: Suspended request 'A'");

    /* The breakpoint fired once and is gone: this request passes. */
    r2 = (Req){ .c = f.root, .event = BLKDBG_READ_AIO, .op = OP_READ,
                .offset = 512, .bytes = 512 };
    co_run_sync(req_entry, &r2);
    assert_true(r2.done);
    assert_int_equal(r2.ret, 0);
    assert_false(r1.done);

    assert_int_equal(drv->debug_resume(f.bs, "B"), -ENOENT);
    assert_int_equal(drv->debug_resume(f.bs, "A"), 0);
    assert_false(drv->debug_is_suspended(f.bs, "A"));
    LOOP_WAIT_WHILE(!r1.done);
    assert_int_equal(r1.ret, 0);
    assert_string_equal(g_ptr_array_index(notices, 1),
                        "blkdebug: Resuming request 'A'");

    /* remove_break resumes what it parked; only a dropped rule is success. */
    assert_int_equal(drv->debug_breakpoint(f.bs, "write_aio", "W"), 0);
    assert_int_equal(drv->debug_remove_breakpoint(f.bs, "W"), 0);
    assert_int_equal(drv->debug_remove_breakpoint(f.bs, "W"), -ENOENT);

    assert_int_equal(drv->debug_breakpoint(f.bs, "write_aio", "W"), 0);
    r1 = (Req){ .c = f.root, .event = BLKDBG_WRITE_AIO, .op = OP_WRITE,
                .offset = 0, .bytes = 512 };
    co = co_create(req_entry, &r1);
    co_enter(co);
    assert_true(drv->debug_is_suspended(f.bs, "W"));
    assert_int_equal(drv->debug_remove_breakpoint(f.bs, "W"), -ENOENT);
    assert_false(drv->debug_is_suspended(f.bs, "W"));
    LOOP_WAIT_WHILE(!r1.done);
    assert_int_equal(r1.ret, 0);

    /* Two breakpoints on one event park the request twice. */
    assert_int_equal(drv->debug_breakpoint(f.bs, "read_aio", "X"), 0);
    assert_int_equal(drv->debug_breakpoint(f.bs, "read_aio", "Y"), 0);
    r1 = (Req){ .c = f.root, .event = BLKDBG_READ_AIO, .op = OP_READ,
                .offset = 0, .bytes = 512 };
    co = co_create(req_entry, &r1);
    co_enter(co);
    assert_true(drv->debug_is_suspended(f.bs, "X"));
    assert_true(drv->debug_is_suspended(f.bs, "Y"));
    assert_int_equal(drv->debug_resume(f.bs, "X"), 0);
    for (int i = 0; i < 10; i++) {
        loop_iterate(false);
    }
    assert_false(r1.done);
    assert_int_equal(drv->debug_resume(f.bs, "Y"), 0);
    LOOP_WAIT_WHILE(!r1.done);

    fix_close(&f);
    blkdbg_set_notice_func(NULL);
    g_ptr_array_unref(notices);
}

/* ---- Setup ---- */

static int setup(void **state)
{
    char *data = g_malloc(IMG_SIZE);
    GError *err = NULL;

    if (test_tmpdir_setup(state) != 0) {
        return -1;
    }
    img_path = test_path("test.img");
    for (int i = 0; i < IMG_SIZE; i++) {
        data[i] = i / 512;
    }
    assert_true(g_file_set_contents(img_path, data, IMG_SIZE, &err));
    g_free(data);
    return 0;
}

static int teardown(void **state)
{
    g_free(img_path);
    return test_tmpdir_teardown(state);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_event_names),
        cmocka_unit_test(test_inline_read_error),
        cmocka_unit_test(test_dotted_options),
        cmocka_unit_test(test_config_file),
        cmocka_unit_test(test_config_and_inline),
        cmocka_unit_test(test_filename_syntax),
        cmocka_unit_test(test_once),
        cmocka_unit_test(test_sector),
        cmocka_unit_test(test_iotype),
        cmocka_unit_test(test_rule_order),
        cmocka_unit_test(test_immediately_and_errno),
        cmocka_unit_test(test_states),
        cmocka_unit_test(test_limits),
        cmocka_unit_test(test_bad_limits),
        cmocka_unit_test(test_child_perms),
        cmocka_unit_test(test_reopen_keeps_rules),
        cmocka_unit_test(test_bad_config),
        cmocka_unit_test(test_bad_inline),
        cmocka_unit_test(test_breakpoints),
    };

    return cmocka_run_group_tests(tests, setup, teardown);
}
