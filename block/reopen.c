/*
 * Reopen: change the options and read-only state of several nodes as one
 * transaction.
 *
 *   prepare  every driver computes its new state without applying it (a new
 *            fd, say); the node's ReopenState is visible to the permission
 *            code, which switches each affected edge to the union of its old
 *            and new perm and the intersection of its old and new shared
 *            (seed 002): both the old and the new use are allowed while the
 *            transition is under way, so either outcome is safe;
 *   commit   drivers apply their prepared state (cannot fail), then the edges
 *            move to their final permissions, which only relaxes; errors of
 *            the protocol layer while relaxing (unlocking) are ignored;
 *   abort    drivers drop their prepared state and every edge gets its old
 *            permissions back.
 */
#include <string.h>
#include "block-int.h"

struct ReopenQueue {
    GList *states; /* ReopenState* in queue order */
};

static ReopenState *queue_find(ReopenQueue *q, BlockNode *bs)
{
    for (GList *l = q->states; l; l = l->next) {
        ReopenState *rs = l->data;
        if (rs->bs == bs) {
            return rs;
        }
    }
    return NULL;
}

static bool is_child_name(BlockNode *bs, const char *key)
{
    return node_find_child(bs, key) != NULL;
}

ReopenQueue *reopen_queue_add(ReopenQueue *q, BlockNode *bs, json_t *options,
                              bool read_only)
{
    if (!q) {
        q = g_new0(ReopenQueue, 1);
    }
    if (!options) {
        options = json_object();
    }
    ReopenState *rs = queue_find(q, bs);
    if (!rs) {
        rs = g_new0(ReopenState, 1);
        rs->bs = bs;
        node_ref(bs);
        q->states = g_list_append(q->states, rs);
        /* Start from the options the node has, then overlay the new ones. */
        rs->options = json_object();
        const char *k;
        json_t *v;
        json_object_foreach(bs->options, k, v) {
            if (!json_is_object(v) && !is_child_name(bs, k)) {
                json_object_set(rs->options, k, v);
            }
        }
    }
    rs->read_only = read_only;

    /*
     * Children: inline options go to them; they follow our read-only state
     * and, unless told otherwise, our new cache mode.
     */
    json_t *inherit = opts_flatten(options);
    for (GList *l = bs->children; l; l = l->next) {
        BlockChild *c = l->data;
        json_t *sub = opts_take_subtree(options, c->name);
        static const char *const inherited[] = { "cache.direct", "cache.no-flush" };
        for (size_t i = 0; i < G_N_ELEMENTS(inherited); i++) {
            json_t *v = json_object_get(inherit, inherited[i]);
            if (!v || (c->role & CHILD_ROLE_COW)) {
                continue;
            }
            if (!sub) {
                sub = json_object();
            }
            json_t *flat_sub = opts_flatten(sub);
            if (!json_object_get(flat_sub, inherited[i])) {
                opts_set_dotted(sub, inherited[i], json_incref(v), NULL);
            }
            json_decref(flat_sub);
        }
        bool child_ro = read_only;
        if (c->role & CHILD_ROLE_COW) {
            child_ro = true;
        }
        if (sub && json_object_get(sub, "read-only")) {
            opts_take_bool(sub, "read-only", &child_ro, NULL);
        }
        if (!sub && ((c->role & CHILD_ROLE_COW) || !c->inherits)) {
            /*
             * A backing file stays as it is, and so does a node the parent
             * was given by reference: it has other users and its own state.
             */
            continue;
        }
        q = reopen_queue_add(q, c->bs, sub, child_ro);
    }
    json_decref(inherit);
    const char *k;
    json_t *v;
    json_object_foreach(options, k, v) {
        if (!strcmp(k, "read-only")) {
            opts_take_bool(options, "read-only", &rs->read_only, NULL);
            break;
        }
    }
    json_object_del(options, "read-only");
    json_t *flat = opts_flatten(options);
    json_object_foreach(flat, k, v) {
        json_object_set(rs->options, k, v);
    }
    json_decref(flat);
    json_decref(options);
    return q;
}

void reopen_queue_free(ReopenQueue *q)
{
    if (!q) {
        return;
    }
    for (GList *l = q->states; l; l = l->next) {
        ReopenState *rs = l->data;
        json_decref(rs->options);
        json_decref(rs->requested);
        node_unref(rs->bs);
        g_free(rs);
    }
    g_list_free(q->states);
    g_free(q);
}

/* Generic options: what changes is checked here, the driver sees the rest. */
static bool reopen_generic(ReopenState *rs, GError **errp)
{
    BlockNode *bs = rs->bs;
    bool direct = bs->open_flags & NODE_O_NOCACHE;
    bool no_flush = bs->open_flags & NODE_O_NO_FLUSH;
    char *name = NULL, *driver = NULL;
    bool force_share = bs->force_share;

    if (!opts_take_bool(rs->options, "cache.direct", &direct, errp) ||
        !opts_take_bool(rs->options, "cache.no-flush", &no_flush, errp) ||
        !opts_take_bool(rs->options, "force-share", &force_share, errp) ||
        !opts_take_str(rs->options, "node-name", &name, errp) ||
        !opts_take_str(rs->options, "driver", &driver, errp)) {
        return false;
    }
    bool ok = true;
    if (name && strcmp(name, bs->node_name)) {
        error_setg(errp, "Cannot change the option 'node-name'");
        ok = false;
    } else if (driver && strcmp(driver, bs->drv->format_name)) {
        error_setg(errp, "Cannot change the option 'driver'");
        ok = false;
    } else if (force_share != bs->force_share) {
        error_setg(errp, "Cannot change the option 'force-share'");
        ok = false;
    } else if (force_share && !rs->read_only) {
        error_setg(errp, "force-share=on can only be used with read-only images");
        ok = false;
    }
    g_free(name);
    g_free(driver);
    static const char *const dz_names[] = { "off", "on", "unmap", NULL };
    static const char *const discard_names[] = { "ignore", "unmap", "off", "on", NULL };
    int dz = bs->detect_zeroes, discard = bs->discard_unmap ? 1 : 0;
    if (ok && (!opts_take_enum(rs->options, "detect-zeroes", dz_names, &dz, errp) ||
               !opts_take_enum(rs->options, "discard", discard_names, &discard, errp))) {
        ok = false;
    }
    bool unmap = discard == 1 || discard == 3;
    if (ok && dz == DETECT_ZEROES_UNMAP && !unmap) {
        error_setg(errp, "setting detect-zeroes to unmap is not allowed "
                         "without setting discard operation to unmap");
        ok = false;
    }
    rs->detect_zeroes = dz;
    rs->discard_unmap = unmap;
    json_object_del(rs->options, "auto-read-only");
    rs->flags = (bs->open_flags & ~(NODE_O_RDWR | NODE_O_NOCACHE | NODE_O_NO_FLUSH)) |
                (rs->read_only ? 0 : NODE_O_RDWR) |
                (direct ? NODE_O_NOCACHE : 0) | (no_flush ? NODE_O_NO_FLUSH : 0);
    return ok;
}

/* Any option left that differs from the node's current value cannot change. */
static bool reopen_check_leftovers(ReopenState *rs, GError **errp)
{
    const char *k;
    json_t *v;
    json_t *old_flat = opts_flatten(rs->bs->options);
    bool ok = true;
    json_object_foreach(rs->options, k, v) {
        json_t *old = json_object_get(old_flat, k);
        char *a = old ? opts_get_str(old_flat, k) : NULL;
        char *b = opts_get_str(rs->options, k);
        if (!old || g_strcmp0(a, b)) {
            error_setg(errp, "Cannot change the option '%s'", k);
            ok = false;
        }
        g_free(a);
        g_free(b);
        if (!ok) {
            break;
        }
    }
    json_decref(old_flat);
    return ok;
}

bool reopen_multiple(ReopenQueue *q, GError **errp)
{
    if (!q) {
        return true;
    }
    bool ok = true;
    GList *prepared = NULL;
    GSList *nodes = NULL;

    drain_all_begin();
    for (GList *l = q->states; l && ok; l = l->next) {
        ReopenState *rs = l->data;
        BlockNode *bs = rs->bs;
        node_set_reopen_state(bs, rs);
        nodes = g_slist_prepend(nodes, bs);
        rs->requested = json_deep_copy(rs->options);
        if (!reopen_generic(rs, errp)) {
            ok = false;
            break;
        }
        if (bs->drv->reopen_prepare) {
            if (bs->drv->reopen_prepare(rs, errp) < 0) {
                ok = false;
                break;
            }
            prepared = g_list_prepend(prepared, rs);
        } else if ((rs->flags ^ bs->open_flags) & (NODE_O_NOCACHE | NODE_O_NO_FLUSH)) {
            error_setg(errp, "Block format '%s' used by node '%s' does not "
                       "support reopening files", bs->drv->format_name,
                       bs->node_name);
            ok = false;
            break;
        }
        if (!reopen_check_leftovers(rs, errp)) {
            ok = false;
            break;
        }
    }

    Txn *txn = NULL;
    if (ok) {
        txn = txn_new();
        ok = perm_refresh_nodes(nodes, txn, false, errp);
        if (!ok) {
            txn_abort(txn);
        }
    }

    if (!ok) {
        for (GList *l = prepared; l; l = l->next) {
            ReopenState *rs = l->data;
            if (rs->bs->drv->reopen_abort) {
                rs->bs->drv->reopen_abort(rs);
            }
        }
        for (GList *l = q->states; l; l = l->next) {
            node_set_reopen_state(((ReopenState *)l->data)->bs, NULL);
        }
    } else {
        txn_commit(txn);
        for (GList *l = q->states; l; l = l->next) {
            ReopenState *rs = l->data;
            BlockNode *bs = rs->bs;
            if (bs->drv->reopen_commit &&
                g_list_find(prepared, rs)) {
                bs->drv->reopen_commit(rs);
            }
            bs->read_only = rs->read_only;
            bs->open_flags = rs->flags;
            bs->detect_zeroes = rs->detect_zeroes;
            bs->discard_unmap = rs->discard_unmap;
            /* Remember the options now in force for the next reopen. */
            json_t *flat = opts_flatten(bs->options);
            const char *rk;
            json_t *rv;
            json_object_foreach(rs->requested, rk, rv) {
                json_object_set(flat, rk, rv);
            }
            json_object_set_new(flat, "read-only", json_boolean(rs->read_only));
            json_object_set_new(flat, "cache.direct",
                                json_boolean(rs->flags & NODE_O_NOCACHE));
            json_object_set_new(flat, "cache.no-flush",
                                json_boolean(rs->flags & NODE_O_NO_FLUSH));
            json_decref(bs->options);
            bs->options = json_object();
            const char *k;
            json_t *v;
            json_object_foreach(flat, k, v) {
                opts_set_dotted(bs->options, k, json_incref(v), NULL);
            }
            json_decref(flat);
            node_set_reopen_state(bs, NULL);
        }
        /* Final permissions: only relaxing, so protocol errors are ignored. */
        Txn *relax = txn_new();
        perm_refresh_nodes(nodes, relax, true, NULL);
        txn_commit(relax);
        for (GList *l = q->states; l; l = l->next) {
            node_refresh_limits(((ReopenState *)l->data)->bs);
        }
    }
    drain_all_end();
    g_list_free(prepared);
    g_slist_free(nodes);
    reopen_queue_free(q);
    return ok;
}

bool node_reopen(BlockNode *bs, json_t *options, bool read_only, GError **errp)
{
    return reopen_multiple(reopen_queue_add(NULL, bs, options, read_only), errp);
}
