/*
 * Image maintenance shared by strata-img and the daemon's commands
 * (strata/block-ops.h): check, amend, make-empty, backing-file change and
 * size measurement.  Each checks that the driver can do it, with QEMU
 * 7.2's message when it cannot, and runs the driver in a coroutine.
 * None of them drains, as in QEMU: the drivers serialise against their
 * own requests (qcow2's lock), and a job calling them (commit's final
 * make-empty, x-blockdev-amend) is a parent of the node, so a drain here
 * would wait for the very job that asked.
 */
#include <errno.h>
#include <string.h>
#include "block-int.h"

/*
 * The driver can do what the feature names, or *errp says it cannot in
 * QEMU's words: "Block driver 'qcow2' does not support <what>".
 */
static bool driver_require(const BlockDriver *drv, DriverFeature f,
                           GError **errp)
{
    const char *what = f == DRIVER_CAN_AMEND ? "option amendment"
                       : f == DRIVER_CAN_MEASURE ? "size measurement"
                       : NULL;

    g_assert(what);
    if (driver_has(drv, f)) {
        return true;
    }
    error_setg(errp, "Block driver '%s' does not support %s",
               drv->format_name, what);
    return false;
}

/* ---- check ---- */

typedef struct CheckCall {
    BlockNode *bs;
    BlockCheckResult *res;
    int fix;
    NodeCheckReport *report;
    void *opaque;
    int ret;
} CheckCall;

static void coroutine_fn check_co(void *opaque)
{
    CheckCall *c = opaque;

    c->ret = c->bs->drv->co_check(c->bs, c->res, c->fix, c->report,
                                  c->opaque);
}

int node_check(BlockNode *bs, BlockCheckResult *res, int fix,
               NodeCheckReport *report, void *opaque)
{
    CheckCall c = { bs, res, fix, report, opaque, 0 };

    memset(res, 0, sizeof(*res));
    if (!bs->drv->co_check) {
        return -ENOTSUP;
    }
    block_co_call(bs, check_co, &c);
    return c.ret;
}

/* ---- amend ---- */

typedef struct AmendCall {
    BlockNode *bs;
    json_t *options;
    bool force;
    void (*status)(void *opaque, int64_t done, int64_t total);
    void *opaque;
    GError **errp;
    int ret;
} AmendCall;

static int coroutine_fn co_amend(AmendCall *a)
{
    if (!driver_require(a->bs->drv, DRIVER_CAN_AMEND, a->errp)) {
        return -ENOTSUP;
    }
    return a->bs->drv->amend(a->bs, a->options, a->force, a->status,
                             a->opaque, a->errp);
}

static void coroutine_fn amend_co(void *opaque)
{
    AmendCall *a = opaque;

    a->ret = co_amend(a);
}

int node_amend(BlockNode *bs, json_t *options, bool force,
               void (*status)(void *opaque, int64_t done, int64_t total),
               void *opaque, GError **errp)
{
    AmendCall a = { bs, options, force, status, opaque, errp, 0 };

    block_co_call(bs, amend_co, &a);
    return a.ret;
}

int coroutine_fn node_co_amend(BlockNode *bs, json_t *options, bool force,
                               GError **errp)
{
    /* A job in the main loop amends a node that may run in an iothread. */
    AmendCall a = { bs, options, force, NULL, NULL, errp, 0 };
    block_co_call(bs, amend_co, &a);
    return a.ret;
}

/* ---- make empty ---- */

typedef struct MakeEmptyCall {
    BlockNode *bs;
    GError **errp;
    int ret;
} MakeEmptyCall;

static void coroutine_fn make_empty_co(void *opaque)
{
    MakeEmptyCall *m = opaque;

    m->ret = m->bs->drv->make_empty(m->bs, m->errp);
}

int node_make_empty(BlockNode *bs, GError **errp)
{
    GError *local = NULL;
    MakeEmptyCall m = { bs, &local, 0 };

    if (!bs->drv->make_empty) {
        error_setg(errp, "%s does not support emptying nodes",
                   bs->drv->format_name);
        return -ENOTSUP;
    }
    block_co_call(bs, make_empty_co, &m);
    if (local) {
        g_propagate_error(errp, local);
    } else if (m.ret < 0) {
        error_setg_errno(errp, -m.ret, "Failed to empty %s", bs->filename);
    }
    return m.ret;
}

/* ---- backing file ---- */

typedef struct BackingCall {
    BlockNode *bs;
    const char *file, *fmt;
    int ret;
} BackingCall;

static void coroutine_fn backing_co(void *opaque)
{
    BackingCall *c = opaque;

    c->ret = node_co_change_backing_file(c->bs, c->file, c->fmt);
}

int node_change_backing_file(BlockNode *bs, const char *file,
                             const char *fmt, bool require_format,
                             GError **errp)
{
    BackingCall c = { bs, file, fmt, 0 };

    /* A format without a file, or a file a caller wants typed, is refused. */
    if ((fmt && !file) || (require_format && file && !fmt)) {
        c.ret = -EINVAL;
    } else {
        block_co_call(bs, backing_co, &c);
    }
    if (c.ret < 0) {
        error_setg_errno(errp, -c.ret, "Could not change backing file to "
                         "'%s'", file ? file : "");
    } else {
        /* The name now written is the one the backing is expected to have. */
        g_strlcpy(bs->auto_backing_file, file ? file : "",
                  sizeof(bs->auto_backing_file));
    }
    return c.ret;
}

int coroutine_fn node_co_change_backing_file(BlockNode *bs, const char *file,
                                             const char *fmt)
{
    if (!bs->drv->co_change_backing_file) {
        return -ENOTSUP;
    }
    return bs->drv->co_change_backing_file(bs, file, fmt);
}

/* ---- measure ---- */

typedef struct MeasureCall {
    const BlockDriver *drv;
    json_t *options;
    BlockNode *in_bs;
    BlockMeasureInfo *info;
    GError **errp;
    bool ok;
} MeasureCall;

static void coroutine_fn measure_co(void *opaque)
{
    MeasureCall *m = opaque;

    m->ok = m->drv->measure(m->options, m->in_bs, m->info, m->errp);
}

bool node_measure(const char *fmt, json_t *options, BlockNode *in_bs,
                  BlockMeasureInfo *info, GError **errp)
{
    const BlockDriver *drv = driver_find(fmt);
    MeasureCall m = { drv, options, in_bs, info, errp, false };

    memset(info, 0, sizeof(*info));
    if (!drv) {
        error_setg(errp, "Unknown file format '%s'", fmt);
        return false;
    }
    if (!driver_require(drv, DRIVER_CAN_MEASURE, errp)) {
        return false;
    }
    block_co_call(in_bs, measure_co, &m);
    return m.ok;
}
