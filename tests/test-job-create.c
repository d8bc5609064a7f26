/*
 * blockdev-create as a job: file and qcow2 (and luks) images created
 * through blockdev_create_job() on nodes, compared with what qemu-img 7.2
 * creates for the same options (same bytes, `qemu-img check` clean, equal
 * `qemu-img info`); the job's states and QEMU's errors (seen from
 * qemu-storage-daemon 7.2 for the same arguments).
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "strata/create.h"
#include "strata/job.h"
#include "strata/loop.h"
#include "strata/secret.h"
#include "strata/units.h"
#include "support.h"

static GString *events;
static unsigned listener;

static void record(Job *job, JobEvent ev, JobStatus old, void *opaque)
{
    if (ev == JOB_EVENT_STATUS_CHANGE && !job_is_internal(job)) {
        g_string_append_printf(events, "%s ", job_status_name(job->status));
    }
}

static const uint8_t *lookup_secret(const char *id, size_t *len)
{
    if (strcmp(id, "sec0")) {
        return NULL;
    }
    *len = 3;
    return (const uint8_t *)"foo";
}

/* Run argv; its stdout (caller frees) and exit status. */
static int run(char **out, const char *const *argv)
{
    int status = -1;
    GError *err = NULL;
    if (!g_spawn_sync(NULL, (char **)argv, NULL, G_SPAWN_SEARCH_PATH, NULL,
                      NULL, out, NULL, &status, &err)) {
        fail_msg("cannot run %s: %s", argv[0], err->message);
    }
    return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

static bool have_qemu_img(void)
{
    g_autofree char *p = g_find_program_in_path("qemu-img");
    return p != NULL;
}

/* Run a blockdev-create job to its end; the error it left, or NULL. */
static char *create(const char *id, json_t *options)
{
    GError *err = NULL;
    g_string_truncate(events, 0);
    if (!blockdev_create_job(id, options, &err)) {
        fail_msg("blockdev_create_job: %s", err->message);
    }
    json_decref(options);
    Job *job = job_find(id);
    assert_non_null(job);
    LOOP_WAIT_WHILE(job->status != JOB_STATUS_CONCLUDED);
    JobQueryInfo *info = job_query(job);
    assert_int_equal(info->type, JOB_TYPE_CREATE);
    assert_int_equal(info->current_progress, 1);
    assert_int_equal(info->total_progress, 1);
    char *error = g_strdup(info->error);
    job_query_info_free(info);
    /* Not auto-dismissed, as QEMU's create job. */
    assert_true(job_dismiss(job, NULL));
    assert_null(job_find(id));
    return error;
}

static void create_ok(const char *id, json_t *options)
{
    char *error = create(id, options);
    if (error) {
        fail_msg("job %s failed: %s", id, error);
    }
    assert_string_equal(events->str, "created running waiting pending "
                        "concluded null ");
}

static void create_file(const char *name, uint64_t size)
{
    g_autofree char *p = test_path(name);
    create_ok("cf", json_pack("{ss ss sI}", "driver", "file", "filename", p,
                              "size", (json_int_t)size));
}

static BlockNode *open_file_node(const char *name, const char *node_name)
{
    GError *err = NULL;
    g_autofree char *p = test_path(name);
    BlockNode *bs = node_open(NULL, json_pack("{ss ss ss}", "driver", "file",
                                              "filename", p, "node-name",
                                              node_name),
                              NODE_O_RDWR, &err);
    if (!bs) {
        fail_msg("open %s: %s", p, err->message);
    }
    return bs;
}

static void assert_same_bytes(const char *a, const char *b)
{
    g_autofree char *pa = test_path(a), *pb = test_path(b);
    g_autofree char *ca = NULL, *cb = NULL;
    gsize la, lb;
    assert_true(g_file_get_contents(pa, &ca, &la, NULL));
    assert_true(g_file_get_contents(pb, &cb, &lb, NULL));
    assert_int_equal(la, lb);
    assert_memory_equal(ca, cb, la);
}

/* `qemu-img info` of both, with the file names taken out, are equal. */
static void assert_same_info(const char *a, const char *b)
{
    g_autofree char *pa = test_path(a), *pb = test_path(b);
    char *out[2];
    const char *names[2] = { pa, pb };
    json_t *info[2];
    for (int i = 0; i < 2; i++) {
        const char *argv[] = { "qemu-img", "info", "--output=json", "-U",
                               names[i], NULL };
        assert_int_equal(run(&out[i], argv), 0);
        info[i] = json_loads(out[i], 0, NULL);
        assert_non_null(info[i]);
        json_object_del(info[i], "filename");
        json_object_del(info[i], "actual-size");
        json_object_del(info[i], "dirty-flag");
        g_free(out[i]);
    }
    if (!json_equal(info[0], info[1])) {
        char *x = json_dumps(info[0], 0), *y = json_dumps(info[1], 0);
        fail_msg("info differs:\n%s\n%s", x, y);
    }
    json_decref(info[0]);
    json_decref(info[1]);
}

static void assert_check_clean(const char *name, const char *const *extra)
{
    g_autofree char *p = test_path(name);
    const char *argv[16] = { "qemu-img", "check" };
    int n = 2;
    for (; extra && *extra; extra++) {
        argv[n++] = *extra;
    }
    argv[n++] = p;
    argv[n] = NULL;
    char *out = NULL;
    int rc = run(&out, argv);
    if (rc != 0) {
        fail_msg("qemu-img check %s: %d\n%s", name, rc, out);
    }
    g_free(out);
}

/* qemu-img create -f fmt [-o opts] name size. */
static void qemu_img_create(const char *fmt, const char *opts,
                            const char *name, uint64_t size)
{
    g_autofree char *p = test_path(name);
    g_autofree char *sz = g_strdup_printf("%" PRIu64, size);
    const char *argv[12] = { "qemu-img", "create", "-q", "-f", fmt };
    int n = 5;
    if (opts && *opts) {
        argv[n++] = "-o";
        argv[n++] = opts;
    }
    argv[n++] = p;
    argv[n++] = sz;
    argv[n] = NULL;
    char *out = NULL;
    assert_int_equal(run(&out, argv), 0);
    g_free(out);
}

/* ---- file ---- */

static void test_file(void **state)
{
    if (!have_qemu_img()) {
        skip();
    }
    create_file("a.raw", 1 * MiB);
    qemu_img_create("raw", "", "b.raw", 1 * MiB);
    assert_same_bytes("a.raw", "b.raw");

    g_autofree char *p = test_path("c.raw");
    create_ok("cf", json_pack("{ss ss sI ss sb}", "driver", "file",
                              "filename", p, "size", (json_int_t)(64 * KiB),
                              "preallocation", "full", "nocow", 1));
    qemu_img_create("raw", "preallocation=full,nocow=on", "d.raw", 64 * KiB);
    assert_same_bytes("c.raw", "d.raw");
    struct stat st;
    assert_int_equal(stat(p, &st), 0);
    assert_true((uint64_t)st.st_blocks * 512 >= 64 * KiB);

    /* blockdev-create keeps the exact size (qemu-img rounds to sectors). */
    create_ok("cf", json_pack("{ss ss sI}", "driver", "file", "filename", p,
                              "size", (json_int_t)1000));
    assert_int_equal(stat(p, &st), 0);
    assert_int_equal(st.st_size, 1000);

    /* An existing file is emptied. */
    create_ok("cf", json_pack("{ss ss sI ss}", "driver", "file", "filename",
                              p, "size", (json_int_t)4096, "preallocation",
                              "falloc"));
    assert_int_equal(stat(p, &st), 0);
    assert_int_equal(st.st_size, 4096);
}

/* ---- qcow2 ---- */

typedef struct Qcow2Case {
    const char *name;
    const char *qmp;       /* extra BlockdevCreateOptionsQcow2 members */
    const char *img_opts;  /* the same for qemu-img create -o */
    uint64_t size;
} Qcow2Case;

static const Qcow2Case qcow2_cases[] = {
    { "default", "{}", "", 64 * MiB },
    { "empty", "{}", "", 0 },
    { "v2", "{\"version\": \"v2\"}", "compat=0.10", 64 * MiB },
    { "c4k-lazy-rb1",
      "{\"cluster-size\": 4096, \"lazy-refcounts\": true, "
      "\"refcount-bits\": 1}",
      "cluster_size=4096,lazy_refcounts=on,refcount_bits=1", 32 * MiB },
    { "c512-rb64", "{\"cluster-size\": 512, \"refcount-bits\": 64}",
      "cluster_size=512,refcount_bits=64", 8 * MiB },
    { "meta", "{\"preallocation\": \"metadata\"}", "preallocation=metadata",
      16 * MiB },
    { "falloc", "{\"preallocation\": \"falloc\", \"cluster-size\": 65536}",
      "preallocation=falloc", 4 * MiB },
    { "full", "{\"preallocation\": \"full\"}", "preallocation=full",
      2 * MiB },
    { "backing",
      "{\"backing-file\": \"base.img\", \"backing-fmt\": \"raw\"}",
      "backing_file=base.img,backing_fmt=raw", 1 * MiB },
    { "zstd-extl2",
      "{\"compression-type\": \"zstd\", \"extended-l2\": true}",
      "compression_type=zstd,extended_l2=on", 1 * GiB },
    { "extl2-meta",
      "{\"extended-l2\": true, \"preallocation\": \"metadata\", "
      "\"cluster-size\": 131072}",
      "extended_l2=on,preallocation=metadata,cluster_size=131072",
      8 * MiB },
};

static void test_qcow2(void **state)
{
    if (!have_qemu_img()) {
        skip();
    }
    /* qemu-img create wants the backing file to exist. */
    qemu_img_create("raw", "", "base.img", 1 * MiB);
    for (size_t i = 0; i < G_N_ELEMENTS(qcow2_cases); i++) {
        const Qcow2Case *c = &qcow2_cases[i];
        g_autofree char *ours = g_strdup_printf("%s.s.qcow2", c->name);
        g_autofree char *theirs = g_strdup_printf("%s.q.qcow2", c->name);

        create_file(ours, 0);
        BlockNode *f = open_file_node(ours, "f");
        json_t *o = json_loads(c->qmp, 0, NULL);
        json_object_set_new(o, "driver", json_string("qcow2"));
        json_object_set_new(o, "file", json_string("f"));
        json_object_set_new(o, "size", json_integer((json_int_t)c->size));
        create_ok("c2", o);
        node_unref(f);

        qemu_img_create("qcow2", c->img_opts, theirs, c->size);
        assert_same_bytes(ours, theirs);
        assert_check_clean(ours, NULL);
        assert_same_info(ours, theirs);
    }
}

/* The image file given as blockdev-add options, and an external data file. */
static void test_qcow2_inline_ref_and_data_file(void **state)
{
    if (!have_qemu_img()) {
        skip();
    }
    g_autofree char *img = test_path("ext.s.qcow2");
    g_autofree char *data = test_path("ext.s.data");
    create_file("ext.s.qcow2", 0);
    create_file("ext.s.data", 0);
    BlockNode *d = open_file_node("ext.s.data", "d");
    create_ok("c2", json_pack("{ss s{ss ss} ss sI sb}", "driver", "qcow2",
                              "file", "driver", "file", "filename", img,
                              "data-file", "d", "size", (json_int_t)(4 * MiB),
                              "data-file-raw", 1));
    node_unref(d);

    g_autofree char *ours = NULL;
    gsize len;
    assert_true(g_file_get_contents(data, &ours, &len, NULL));

    /*
     * The header records the data file's name (ours: the node's file
     * name), so qemu-img must be given the same path: it creates that file
     * anew, which must come out as ours did.
     */
    g_autofree char *opts = g_strdup_printf("data_file=%s,data_file_raw=on",
                                            data);
    qemu_img_create("qcow2", opts, "ext.q.qcow2", 4 * MiB);
    g_autofree char *theirs = NULL;
    gsize tlen;
    assert_true(g_file_get_contents(data, &theirs, &tlen, NULL));
    assert_int_equal(len, tlen);
    assert_memory_equal(ours, theirs, len);
    assert_same_bytes("ext.s.qcow2", "ext.q.qcow2");
    assert_check_clean("ext.s.qcow2", NULL);
    assert_same_info("ext.s.qcow2", "ext.q.qcow2");
}

static void test_qcow2_encrypted(void **state)
{
    if (!have_qemu_img()) {
        skip();
    }
    create_file("enc.qcow2", 0);
    BlockNode *f = open_file_node("enc.qcow2", "f");
    create_ok("c2", json_pack("{ss ss sI s{ss ss sI}}", "driver", "qcow2",
                              "file", "f", "size", (json_int_t)(1 * MiB),
                              "encrypt", "format", "luks", "key-secret",
                              "sec0", "iter-time", (json_int_t)10));
    node_unref(f);
    g_autofree char *p = test_path("enc.qcow2");
    g_autofree char *spec = g_strdup_printf(
        "driver=qcow2,file.filename=%s,encrypt.key-secret=sec0", p);
    const char *argv[] = { "qemu-img", "check", "--object",
                           "secret,id=sec0,data=foo", "--image-opts", spec,
                           NULL };
    char *out = NULL;
    assert_int_equal(run(&out, argv), 0);
    g_free(out);
    const char *info[] = { "qemu-img", "info", "--output=json", p, NULL };
    assert_int_equal(run(&out, info), 0);
    json_t *j = json_loads(out, 0, NULL);
    g_free(out);
    assert_true(json_is_true(json_object_get(j, "encrypted")));
    json_t *enc = json_object_get(json_object_get(json_object_get(
        json_object_get(j, "format-specific"), "data"), "encrypt"), "format");
    assert_string_equal(json_string_value(enc), "luks");
    json_decref(j);
}

static void test_luks(void **state)
{
    if (!have_qemu_img()) {
        skip();
    }
    create_file("l.luks", 0);
    BlockNode *f = open_file_node("l.luks", "f");
    create_ok("cl", json_pack("{ss ss sI ss sI}", "driver", "luks", "file",
                              "f", "size", (json_int_t)(1 * MiB),
                              "key-secret", "sec0", "iter-time",
                              (json_int_t)10));
    node_unref(f);
    g_autofree char *p = test_path("l.luks");
    g_autofree char *spec = g_strdup_printf(
        "driver=luks,file.filename=%s,key-secret=sec0", p);
    const char *argv[] = { "qemu-io", "--object", "secret,id=sec0,data=foo",
                           "--image-opts", spec, "-c", "write -P 0x5a 0 64k",
                           "-c", "read -P 0x5a 0 64k", NULL };
    char *out = NULL;
    assert_int_equal(run(&out, argv), 0);
    assert_non_null(strstr(out, "read 65536/65536 bytes"));
    assert_null(strstr(out, "Pattern verification failed"));
    g_free(out);
    const char *info[] = { "qemu-img", "info", "--output=json", p, NULL };
    assert_int_equal(run(&out, info), 0);
    json_t *j = json_loads(out, 0, NULL);
    g_free(out);
    assert_string_equal(json_string_value(json_object_get(j, "format")),
                        "luks");
    assert_int_equal(json_integer_value(json_object_get(j, "virtual-size")),
                     1 * MiB);
    json_decref(j);
}

/* ---- Errors, as qemu-storage-daemon 7.2 reports them ---- */

static void test_errors(void **state)
{
    GError *err = NULL;
    json_t *o = json_pack("{ss}", "driver", "raw");
    assert_false(blockdev_create_job("c", o, &err));
    assert_string_equal(err->message,
                        "Driver does not support blockdev-create");
    g_clear_error(&err);
    json_decref(o);

    o = json_pack("{ss ss sI}", "driver", "vdi", "file", "f", "size",
                  (json_int_t)1024);
    assert_false(blockdev_create_job("c", o, &err));
    assert_string_equal(err->message,
                        "Block driver 'vdi' not found or not supported");
    g_clear_error(&err);

    /* The driver is checked before the id, as QEMU. */
    assert_false(blockdev_create_job("3c", o, &err));
    assert_string_equal(err->message,
                        "Block driver 'vdi' not found or not supported");
    g_clear_error(&err);
    json_object_set_new(o, "driver", json_string("qcow2"));
    assert_false(blockdev_create_job("3c", o, &err));
    assert_string_equal(err->message, "Invalid job ID '3c'");
    g_clear_error(&err);
    json_decref(o);

    /* Failures inside the job: aborting, then concluded with the error. */
    static const struct {
        const char *json, *error;
    } cases[] = {
        { "{\"driver\": \"qcow2\", \"file\": \"nope\", \"size\": 1024}",
          "Cannot find device='nope' nor node-name='nope'" },
        { "{\"driver\": \"qcow2\", \"file\": \"f\", \"size\": 1000}",
          "Image size must be a multiple of 512 bytes" },
        { "{\"driver\": \"qcow2\", \"file\": \"f\", \"size\": 1048576, "
          "\"cluster-size\": 3}",
          "Cluster size must be a power of two between 512 and 2048k" },
        { "{\"driver\": \"qcow2\", \"file\": \"f\", \"size\": 1048576, "
          "\"version\": \"v2\", \"lazy-refcounts\": true}",
          "Lazy refcounts only supported with compatibility level 1.1 and "
          "above (use version=v3 or greater)" },
        { "{\"driver\": \"qcow2\", \"file\": \"f\", \"size\": 1048576, "
          "\"data-file-raw\": true}",
          "data-file-raw requires data-file" },
        { "{\"driver\": \"qcow2\", \"file\": \"f\", \"size\": 1048576, "
          "\"backing-fmt\": \"raw\"}",
          "Backing format cannot be used without backing file" },
        { "{\"driver\": \"qcow2\", \"file\": \"f\", \"size\": 1048576, "
          "\"bogus\": 1}",
          "Parameter 'options.bogus' is unexpected" },
        { "{\"driver\": \"qcow2\", \"file\": \"f\"}",
          "Parameter 'options.size' is missing" },
        { "{\"driver\": \"luks\", \"file\": \"f\", \"size\": 1048576}",
          "Parameter 'key-secret' is required for cipher" },
        { "{\"driver\": \"qcow2\", \"file\": \"f\", \"size\": 1048576, "
          "\"encrypt\": {\"format\": \"luks\"}}",
          "Parameter 'encrypt.key-secret' is required for cipher" },
        { "{\"driver\": \"file\", \"filename\": \"/nonexistent-dir/x\", "
          "\"size\": 0}",
          "Could not create '/nonexistent-dir/x': No such file or "
          "directory" },
    };
    create_file("err.qcow2", 0);
    BlockNode *f = open_file_node("err.qcow2", "f");
    for (size_t i = 0; i < G_N_ELEMENTS(cases); i++) {
        g_autofree char *error = create("c", json_loads(cases[i].json, 0,
                                                        NULL));
        assert_non_null(error);
        assert_string_equal(error, cases[i].error);
        assert_string_equal(events->str, "created running aborting "
                            "concluded null ");
    }
    node_unref(f);

    /* A read-only node cannot take the image. */
    g_autofree char *ro_path = test_path("err.qcow2");
    BlockNode *ro = node_open(NULL, json_pack("{ss ss ss sb}", "driver",
                                              "file", "filename", ro_path,
                                              "node-name", "ro", "read-only",
                                              1), 0, &err);
    assert_non_null(ro);
    static const char *const ro_cases[] = {
        "{\"driver\": \"qcow2\", \"file\": \"ro\", \"size\": 1048576}",
        "{\"driver\": \"luks\", \"file\": \"ro\", \"size\": 1048576, "
        "\"key-secret\": \"sec0\", \"iter-time\": 10}",
    };
    for (size_t i = 0; i < G_N_ELEMENTS(ro_cases); i++) {
        g_autofree char *error = create("c", json_loads(ro_cases[i], 0,
                                                        NULL));
        assert_non_null(error);
        assert_string_equal(error, "Block node is read-only");
    }
    node_unref(ro);

    /* The id is taken while the job exists. */
    o = json_pack("{ss ss sI}", "driver", "file", "filename", "/dev/null",
                  "size", (json_int_t)0);
    create_file("busy.raw", 0);
    g_autofree char *p = test_path("busy.raw");
    json_object_set_new(o, "filename", json_string(p));
    assert_true(blockdev_create_job("dup", o, NULL));
    assert_false(blockdev_create_job("dup", o, &err));
    assert_string_equal(err->message, "Job ID 'dup' already in use");
    g_clear_error(&err);
    json_decref(o);
    Job *job = job_find("dup");
    LOOP_WAIT_WHILE(job->status != JOB_STATUS_CONCLUDED);
    assert_true(job_dismiss(job, NULL));
}

static int setup(void **state)
{
    if (test_tmpdir_setup(state) != 0) {
        return -1;
    }
    events = g_string_new("");
    listener = job_add_listener(record, NULL);
    crypto_secret_set_lookup(lookup_secret);
    /* qemu-img resolves relative names (backing files) from here. */
    test_tmpdir_enter();
    return 0;
}
static int teardown(void **state)
{
    job_remove_listener(listener);
    g_string_free(events, TRUE);
    return test_tmpdir_teardown(state);
}
int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_file),
        cmocka_unit_test(test_qcow2),
        cmocka_unit_test(test_qcow2_inline_ref_and_data_file),
        cmocka_unit_test(test_qcow2_encrypted),
        cmocka_unit_test(test_luks),
        cmocka_unit_test(test_errors),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
