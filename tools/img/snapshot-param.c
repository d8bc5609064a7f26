/*
 * -l of convert and measure: the snapshot parameter ("snapshot.id=ID,
 * snapshot.name=NAME", or a bare ID or name) and loading it temporarily
 * into a read-only source, with qemu-img's messages.
 */
#include <errno.h>
#include <string.h>

#include "strata/block-driver.h"
#include "img.h"

typedef struct LoadSnapCo {
    BlockNode *bs;
    const char *id, *name;
    GError *err;
    int ret;
} LoadSnapCo;

static void coroutine_fn load_snapshot_co(void *opaque)
{
    LoadSnapCo *c = opaque;
    c->ret = c->bs->drv->snapshot_load_tmp(c->bs, c->id, c->name, &c->err);
}

static const char *json_str(json_t *o, const char *key)
{
    json_t *v = o ? json_object_get(o, key) : NULL;
    return json_is_string(v) ? json_string_value(v) : NULL;
}

bool img_load_snapshot(BlockBackend *blk, const char *name, json_t *sn_opts)
{
    BlockNode *bs = node_skip_filters(blk_node(blk));
    LoadSnapCo c = { .bs = bs };

    if (!bs->drv->snapshot_load_tmp) {
        tool_error("Failed to load snapshot: Block format '%s' used by "
                   "device '' does not support temporarily loading internal "
                   "snapshots", bs->drv->format_name);
        return false;
    }
    if (name) {
        c.id = name;
        co_run_sync(load_snapshot_co, &c);
        if (c.ret == -ENOENT) {
            g_clear_error(&c.err);
            c.id = NULL;
            c.name = name;
            co_run_sync(load_snapshot_co, &c);
        }
    } else {
        c.id = json_str(sn_opts, "snapshot.id");
        c.name = json_str(sn_opts, "snapshot.name");
        co_run_sync(load_snapshot_co, &c);
    }
    if (c.ret < 0) {
        tool_error("Failed to load snapshot: %s",
                   c.err ? c.err->message : g_strerror(-c.ret));
        g_clear_error(&c.err);
        return false;
    }
    return true;
}

bool img_parse_snapshot_opts(json_t **sn_opts, const char *arg)
{
    GError *err = NULL;
    const char *key;
    json_t *value;

    json_decref(*sn_opts);
    *sn_opts = NULL;
    if (!tool_qemuopts_parse(sn_opts, arg, false, &err)) {
        tool_error_gerror(err, "%s", "");
        goto fail;
    }
    json_object_foreach(*sn_opts, key, value) {
        if (strcmp(key, "snapshot.id") && strcmp(key, "snapshot.name")) {
            tool_error("Invalid parameter '%s'", key);
            goto fail;
        }
    }
    return true;
fail:
    tool_error("Failed in parsing snapshot param '%s'", arg);
    return false;
}
