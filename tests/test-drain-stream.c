/*
 * The stream job's completion (jobs/stream.c stream_prepare) and the
 * drain it makes to move the image's backing link.  From a job-finalize
 * (a coroutine) that drain begins in a BH, after whatever the loop had
 * queued: another job's completion there may change the chain below the
 * streamed part, which the stream does not freeze (QEMU iotest 258, our
 * qmp-commit-stream-finalize-race).  What the stream links to must be
 * what is there once drained, not a node found before.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <string.h>
#include <cmocka.h>
#include "strata/block-driver.h"
#include "strata/block-events.h"
#include "strata/block-ops.h"
#include "strata/coroutine.h"
#include "strata/job.h"
#include "strata/loop.h"
#include "strata/stream.h"
#include "strata/units.h"
#include "support.h"

/* Has bs a copy-on-read filter above it (the stream's, until prepare)? */
static bool has_cor_parent(BlockNode *bs)
{
    for (BlockChild *c = node_next_parent(bs, NULL); c;
         c = node_next_parent(bs, c)) {
        if (child_parent_kind(c) == PARENT_NODE &&
            strcmp(node_get_format_name(child_parent(c)),
                   "copy-on-read") == 0) {
            return true;
        }
    }
    return false;
}

typedef struct {
    BlockNode *top, *mid, *base0;
    bool queued, dropped;
    bool ok, done;
} CommitRace;

static CommitRace *race;

/*
 * Another job's completion, as a commit of `base` into base0 finishing:
 * mid's backing moves to base0, and `base`, held only by that edge, is
 * freed.
 */
static void commit_done_bh(void *opaque)
{
    CommitRace *r = opaque;
    GError *err = NULL;

    g_assert(child_replace_node(node_backing_child(r->mid), r->base0, &err));
    r->dropped = true;
}

/*
 * A job above the image's file: a drain's end resumes it, and it
 * finishes at once, queuing its completion (a commit of the chain below
 * the stream: QEMU's 258).  The end that counts is the one of the last
 * drain before prepare moves the backing link, i.e. the filter's drop:
 * the prepare's coroutine goes on from that end at once, and its next
 * drain begins in a BH queued behind the completion.
 */
static void job_drained_begin(BlockChild *c)
{
}

static void job_drained_end(BlockChild *c)
{
    if (race && !race->queued && !has_cor_parent(race->top)) {
        race->queued = true;
        loop_bh(commit_done_bh, race);
    }
}

static char *job_desc(BlockChild *c)
{
    return g_strdup("other job");
}

static const BlockChildClass other_job_class = {
    .kind = "job",
    .get_parent_desc = job_desc,
    .drained_begin = job_drained_begin,
    .drained_end = job_drained_end,
};

static void coroutine_fn finalize_co(void *opaque)
{
    CommitRace *r = opaque;
    GError *err = NULL;

    r->ok = job_finalize(job_find("st"), &err);
    if (err) {
        print_message("job_finalize: %s\n", err->message);
    }
    g_clear_error(&err);
    r->done = true;
}

/*
 * base0 <- base <- mid <- top, stream top down to base (mid leaves);
 * base goes while prepare drains.  Before, prepare looked base up before
 * its drain and referenced it after: a use after free (ASan:
 * heap-use-after-free in node_ref), and the image linked to freed memory.
 * Now the image's backing is base0, what mid had below it by then.
 */
static void test_prepare_base_gone(void **state)
{
    GError *err = NULL;
    g_autofree char *b0 = make_qcow2("sp-base0.qcow2", MiB, NULL);
    g_autofree char *b = make_qcow2("sp-base.qcow2", MiB, b0);
    g_autofree char *m = make_qcow2("sp-mid.qcow2", MiB, b);
    g_autofree char *t = make_qcow2("sp-top.qcow2", MiB, m);
    CommitRace r = { 0 };
    r.top = open_json(json_pack("{s:s, s:s, s:{s:s, s:s}}", "driver",
                                "qcow2", "node-name", "sptop", "file",
                                "driver", "file", "filename", t));
    r.mid = node_backing(r.top);
    BlockNode *base = node_backing(r.mid);
    r.base0 = node_backing(base);
    assert_non_null(r.base0);
    node_ref(r.base0);

    StreamOptions o = {
        .bs = r.top, .base = base, .on_error = BLOCKDEV_ON_ERROR_REPORT,
        .flags = JOB_MANUAL_FINALIZE | JOB_MANUAL_DISMISS,
    };
    assert_true(stream_start("st", &o, &err));
    Job *job = job_find("st");
    job_ref(job);
    LOOP_WAIT_WHILE(job->status != JOB_STATUS_PENDING);

    BlockNode *file = child_node(node_find_child(r.top, "file"));
    BlockChild *other = child_attach(file, "other", &other_job_class, 0, 0,
                                     BLK_PERM_ALL, NULL, &err);
    assert_non_null(other);
    race = &r;
    co_enter(co_create(finalize_co, &r));
    LOOP_WAIT_WHILE(!r.done);
    race = NULL;
    assert_true(r.dropped);
    assert_true(r.ok);
    assert_int_equal(job->status, JOB_STATUS_CONCLUDED);
    assert_int_equal(job->ret, 0);
    assert_ptr_equal(node_backing(r.top), r.base0);
    assert_true(job_dismiss(job, &err));
    job_unref(job);
    assert_true(child_detach(other, &err));
    node_unref(r.top);
    node_unref(r.base0);
    assert_null(node_next(NULL));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_prepare_base_gone),
    };
    return cmocka_run_group_tests(tests, test_tmpdir_setup,
                                  test_tmpdir_teardown);
}
