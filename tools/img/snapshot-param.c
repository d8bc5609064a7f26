/*
 * -l of convert and measure: the snapshot parameter ("snapshot.id=ID,
 * snapshot.name=NAME", or a bare ID or name) and loading it temporarily
 * into a read-only source, with qemu-img's messages.
 */
#include <errno.h>
#include <string.h>

#include "strata/block-ops.h"
#include "strata/error.h"
#include "strata/opts.h"
#include "strata/units.h"
#include "img.h"

static const char *json_str(json_t *o, const char *key)
{
    json_t *v = o ? json_object_get(o, key) : NULL;
    return json_is_string(v) ? json_string_value(v) : NULL;
}

bool img_load_snapshot(BlockBackend *blk, const char *name, json_t *sn_opts)
{
    BlockNode *bs = node_skip_filters(blk_node(blk));
    GError *err = NULL;
    int ret;

    if (name) {
        /* A bare name is an ID first, then a name, as in qemu-img. */
        ret = node_snapshot_load_tmp(bs, name, NULL, &err);
        if (ret == -ENOENT) {
            g_clear_error(&err);
            ret = node_snapshot_load_tmp(bs, NULL, name, &err);
        }
    } else {
        ret = node_snapshot_load_tmp(bs, json_str(sn_opts, "snapshot.id"),
                                     json_str(sn_opts, "snapshot.name"),
                                     &err);
    }
    if (ret < 0) {
        tool_error("Failed to load snapshot: %s", err->message);
        g_clear_error(&err);
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
