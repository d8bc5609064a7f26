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
 *
 * The options "backing" and "file" may name another node (or, for backing,
 * be null): the edge is pointed at that node inside the same transaction,
 * after the driver's prepare, as QEMU 7.2 does.  The edge is retargeted
 * rather than replaced, so drivers holding a pointer to it (qcow2's data
 * file, blkdebug's image) follow.  The node it left is kept alive until the
 * reopen is over, so that abort can put it back and commit can close it.
 */
#include <string.h>
#include "block-int.h"
#include "strata/json-out.h"

struct ReopenQueue {
    GList *states; /* ReopenState* in queue order */
    /*
     * ReopenState* -> GPtrArray of "name." prefixes: a child named by
     * reference ("backing=node") cannot also take inline options
     * ("backing.x=y"); those are refused whatever their value.
     */
    GHashTable *ref_prefixes;
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

static bool key_is_child(BlockNode *bs, const char *key);

static void queue_note_ref_prefixes(ReopenQueue *q, ReopenState *rs,
                                    json_t *options)
{
    const char *k;
    json_t *v;
    json_object_foreach(options, k, v) {
        if (json_is_object(v)) {
            continue;
        }
        char *prefix = g_strconcat(k, ".", NULL);
        const char *k2;
        json_t *v2;
        bool found = false;
        json_object_foreach(options, k2, v2) {
            if (g_str_has_prefix(k2, prefix)) {
                found = true;
            }
        }
        if (!found) {
            g_free(prefix);
            continue;
        }
        GPtrArray *a = g_hash_table_lookup(q->ref_prefixes, rs);
        if (!a) {
            a = g_ptr_array_new_with_free_func(g_free);
            g_hash_table_insert(q->ref_prefixes, rs, a);
        }
        g_ptr_array_add(a, prefix);
    }
}

ReopenQueue *reopen_queue_add_opts(ReopenQueue *q, BlockNode *bs,
                                   json_t *options, bool read_only,
                                   bool keep_old_opts)
{
    if (!q) {
        q = g_new0(ReopenQueue, 1);
        q->ref_prefixes = g_hash_table_new_full(
            NULL, NULL, NULL, (GDestroyNotify)g_ptr_array_unref);
    }
    if (!options) {
        options = json_object();
    }
    ReopenState *rs = queue_find(q, bs);
    if (!rs) {
        rs = g_new0(ReopenState, 1);
        rs->bs = bs;
        rs->keep_old = keep_old_opts;
        node_ref(bs);
        q->states = g_list_append(q->states, rs);
        /*
         * Start from the options the node has (or, when the new set
         * replaces them, from nothing), then overlay the new ones.
         */
        rs->options = json_object();
        const char *k;
        json_t *v;
        json_object_foreach(bs->options, k, v) {
            /* A child's own options ("file.driver") are its, not ours. */
            if (keep_old_opts && !json_is_object(v) && !is_child_name(bs, k) &&
                !(strchr(k, '.') && key_is_child(bs, k))) {
                json_object_set(rs->options, k, v);
            }
        }
    }
    /*
     * The node's own read-only option is what its children inherit.  A
     * node queued again (twice in one blockdev-reopen list, or listed and
     * reached as a child) keeps what it was explicitly given unless the
     * new options name it too, as QEMU joins the two sets.
     */
    bool ro_given = json_object_get(options, "read-only") != NULL;
    if (!rs->read_only_given || ro_given) {
        rs->read_only = read_only;
    }
    rs->read_only_given |= ro_given;
    opts_take_bool(options, "read-only", &rs->read_only, NULL);
    json_object_del(options, "read-only");
    queue_note_ref_prefixes(q, rs, options);
    if (!keep_old_opts) {
        json_t *flat = opts_flatten(options);
        rs->backing_missing = !json_object_get(flat, "backing") &&
                              !json_object_get(flat, "backing.driver") &&
                              !json_object_get(rs->options, "backing") &&
                              !json_object_get(rs->options, "backing.driver");
        json_decref(flat);
    }

    /*
     * Children opened with this node follow it: inline options go to them;
     * they take our read-only state and, unless told otherwise, our new
     * cache mode.  A node the parent was given by reference has other users
     * and its own state: it is not reopened, and options for it inline stay
     * with the parent, which refuses them as options it cannot change.
     */
    json_t *inherit = opts_flatten(options);
    for (GList *l = bs->children; l; l = l->next) {
        BlockChild *c = l->data;
        /*
         * A job's filter took over an edge that inherits: the filter
         * itself was not opened by us (QEMU: its inherits_from is NULL).
         */
        if (!c->inherits || !c->bs->opened_by_parent) {
            continue;
        }
        json_t *ref = json_object_get(options, c->name);
        json_t *sub = NULL;
        bool child_keep = keep_old_opts;
        if (ref && !json_is_object(ref)) {
            /*
             * The child named by reference: a different node (or null)
             * replaces it, so it is not reopened; the same node is reopened
             * with the options it has.
             */
            if (!json_is_string(ref) ||
                strcmp(json_string_value(ref), c->bs->node_name)) {
                continue;
            }
            child_keep = true;
        } else {
            sub = opts_take_subtree(options, c->name);
            if (!sub && !keep_old_opts) {
                sub = json_object();
            }
        }
        static const char *const inherited[] = {
            "cache.direct", "cache.no-flush", "force-share",
        };
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
        bool child_ro = rs->read_only;
        if (c->role & CHILD_ROLE_COW) {
            child_ro = true;
        }
        if (child_keep && c->bs->read_only_given) {
            /*
             * Its own read-only stays, as QEMU joins a child's explicit
             * options back in (a read-write reopen of a qcow2 whose file was
             * added read-only then fails: "Block node is read-only").
             */
            child_ro = c->bs->read_only;
        }
        if (sub && json_object_get(sub, "read-only")) {
            /* read, not taken: the child's own option, seen as given */
            json_t *ro = json_incref(json_object_get(sub, "read-only"));
            opts_take_bool(sub, "read-only", &child_ro, NULL);
            json_object_set_new(sub, "read-only", ro);
        }
        if (!sub && (c->role & CHILD_ROLE_COW)) {
            /* A backing file named as it is stays as it is. */
            continue;
        }
        q = reopen_queue_add_opts(q, c->bs, sub, child_ro, child_keep);
    }
    json_decref(inherit);
    json_t *flat = opts_flatten(options);
    if (keep_old_opts && bs->drv->reopen_join_options) {
        bs->drv->reopen_join_options(flat, rs->options);
    }
    const char *k;
    json_t *v;
    json_object_foreach(flat, k, v) {
        json_object_set(rs->options, k, v);
    }
    json_decref(flat);
    json_decref(options);
    return q;
}

ReopenQueue *reopen_queue_add(ReopenQueue *q, BlockNode *bs, json_t *options,
                              bool read_only)
{
    return reopen_queue_add_opts(q, bs, options, read_only, true);
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
    g_hash_table_destroy(q->ref_prefixes);
    g_free(q);
}

/*
 * Generic options: what changes is checked here, the driver sees the rest.
 * node-name, driver and force-share cannot change; they are only checked
 * for their type here and compared with the leftovers at the end, as QEMU
 * does (so a bad backing reference is reported before them).
 */
static bool reopen_generic(ReopenState *rs, GError **errp)
{
    BlockNode *bs = rs->bs;
    /* Left out of a whole new option set, the cache mode is writeback. */
    bool direct = rs->keep_old && (bs->open_flags & NODE_O_NOCACHE);
    bool no_flush = rs->keep_old && (bs->open_flags & NODE_O_NO_FLUSH);
    char *name = NULL, *driver = NULL;
    bool force_share;
    /* Checked for its type, then left as given for the comparison. */
    json_t *force_share_opt = json_incref(json_object_get(rs->options,
                                                          "force-share"));

    if (!opts_take_bool(rs->options, "cache.direct", &direct, errp) ||
        !opts_take_bool(rs->options, "cache.no-flush", &no_flush, errp) ||
        !opts_take_bool(rs->options, "force-share", &force_share, errp) ||
        !opts_take_str(rs->options, "node-name", &name, errp) ||
        !opts_take_str(rs->options, "driver", &driver, errp)) {
        g_free(name);
        json_decref(force_share_opt);
        return false;
    }
    if (force_share_opt) {
        json_object_set_new(rs->options, "force-share", force_share_opt);
    }
    if (name) {
        json_object_set_new(rs->options, "node-name", json_string(name));
    }
    if (driver) {
        json_object_set_new(rs->options, "driver", json_string(driver));
    }
    g_free(name);
    g_free(driver);

    /* QEMU's reopen words these two differently from its open. */
    char *discard = NULL, *dz = NULL;
    bool unmap = rs->keep_old && bs->discard_unmap;
    int detect_zeroes = rs->keep_old ? bs->detect_zeroes : DETECT_ZEROES_OFF;
    bool ok = opts_take_str(rs->options, "discard", &discard, errp) &&
              opts_take_str(rs->options, "detect-zeroes", &dz, errp);
    if (ok && discard) {
        if (!strcmp(discard, "on") || !strcmp(discard, "unmap")) {
            unmap = true;
        } else if (!strcmp(discard, "off") || !strcmp(discard, "ignore")) {
            unmap = false;
        } else {
            error_setg(errp, "Invalid discard option");
            ok = false;
        }
    }
    if (ok && dz) {
        static const char *const dz_names[] = { "off", "on", "unmap" };
        detect_zeroes = -1;
        for (int i = 0; i < (int)G_N_ELEMENTS(dz_names); i++) {
            if (!strcmp(dz, dz_names[i])) {
                detect_zeroes = i;
            }
        }
        if (detect_zeroes < 0) {
            error_setg(errp, "invalid parameter value: %s", dz);
            ok = false;
        }
    }
    g_free(discard);
    g_free(dz);
    if (ok && detect_zeroes == DETECT_ZEROES_UNMAP && !unmap) {
        error_setg(errp, "setting detect-zeroes to unmap is not allowed "
                         "without setting discard operation to unmap");
        ok = false;
    }
    rs->detect_zeroes = detect_zeroes;
    rs->discard_unmap = unmap;
    /*
     * The value is checked as QEMU does; it only matters when a node is
     * opened (a read-write open falling back to read-only), not here.
     */
    bool auto_ro = false;
    if (ok && !opts_take_bool(rs->options, "auto-read-only", &auto_ro,
                              errp)) {
        ok = false;
    }
    json_object_del(rs->options, "auto-read-only");
    rs->flags = (bs->open_flags & ~(NODE_O_RDWR | NODE_O_NOCACHE | NODE_O_NO_FLUSH)) |
                (rs->read_only ? 0 : NODE_O_RDWR) |
                (direct ? NODE_O_NOCACHE : 0) | (no_flush ? NODE_O_NO_FLUSH : 0);
    return ok;
}

/* Is key the child name or below it ("file", "file.filename")? */
static bool key_is_child(BlockNode *bs, const char *key)
{
    static const char *const always[] = { "file", "backing" };
    for (size_t i = 0; i < G_N_ELEMENTS(always); i++) {
        size_t n = strlen(always[i]);
        if (!strncmp(key, always[i], n) && (!key[n] || key[n] == '.')) {
            return true;
        }
    }
    for (GList *l = bs->children; l; l = l->next) {
        const char *name = ((BlockChild *)l->data)->name;
        size_t n = strlen(name);
        if (!strncmp(key, name, n) && (!key[n] || key[n] == '.')) {
            return true;
        }
    }
    return false;
}

static bool str_in_list(const char *s, const char *const *list)
{
    for (; list && *list; list++) {
        if (!strcmp(s, *list)) {
            return true;
        }
    }
    return false;
}

/*
 * A whole new option set leaves an option out to reset it; the driver must
 * be able to change it (its mutable_opts), except for the options every
 * node has, which reopen handles itself.  Of several, the one QEMU would
 * find first is named.
 */
static bool reopen_check_reset(ReopenState *rs, GError **errp)
{
    static const char *const common[] = {
        "node-name", "discard", "cache.direct", "cache.no-flush",
        "read-only", "auto-read-only", "detect-zeroes", NULL
    };
    BlockNode *bs = rs->bs;
    if (rs->keep_old) {
        return true;
    }
    json_t *old_flat = opts_flatten(bs->options);
    const char *bad = NULL;
    const char *k;
    json_t *v;
    json_object_foreach(old_flat, k, v) {
        if (json_object_get(rs->requested, k) || key_is_child(bs, k) ||
            str_in_list(k, common) || str_in_list(k, bs->drv->mutable_opts)) {
            continue;
        }
        if (!bad || json_qdict_bucket(k) < json_qdict_bucket(bad)) {
            bad = k;
        }
    }
    if (bad) {
        error_setg(errp, "Option '%s' cannot be reset to its default value",
                   bad);
    }
    json_decref(old_flat);
    return !bad;
}

/* Does leftover option k (value v) keep the node as it is? */
static bool leftover_unchanged(ReopenState *rs, GPtrArray *refused,
                               json_t *old_flat, const char *k, json_t *v)
{
    BlockNode *bs = rs->bs;
    for (guint i = 0; refused && i < refused->len; i++) {
        if (g_str_has_prefix(k, g_ptr_array_index(refused, i))) {
            return false;
        }
    }
    /*
     * Options for a child that is not reopened with us: the backing file
     * is gone (a stream dropped it) or a job's filter stands in its place.
     * QEMU keeps no child's options with the parent, so they always
     * differ from the old ones.
     */
    const char *dot = strchr(k, '.');
    if (dot) {
        char *child = g_strndup(k, (gsize)(dot - k));
        bool is_child = !strcmp(child, "backing") ||
                        node_find_child(bs, child) != NULL;
        g_free(child);
        if (is_child) {
            return false;
        }
    }
    if (!strcmp(k, "node-name")) {
        return !strcmp(json_string_value(v), bs->node_name);
    }
    if (!strcmp(k, "driver")) {
        return !strcmp(json_string_value(v), bs->drv->format_name);
    }
    if (!strcmp(k, "force-share")) {
        /*
         * QEMU's reopen turns the new value into text ("on" for true) and
         * compares it with the stored one, which is equal only when that
         * was given as the same text (the tools' -U): a bool from QMP
         * never is, so blockdev-reopen refuses any force-share.
         */
        json_t *old = json_object_get(old_flat, k);
        const char *text = json_is_string(v) ? json_string_value(v)
                           : json_is_true(v) ? "on" : "off";
        return old && json_is_string(old) &&
               !strcmp(json_string_value(old), text);
    }
    BlockChild *c = node_find_child(bs, k);
    if (c && json_is_string(v)) {
        return !strcmp(json_string_value(v), c->bs->node_name);
    }
    json_t *old = json_object_get(old_flat, k);
    char *a = old ? opts_get_str(old_flat, k) : NULL;
    char *b = opts_get_str(rs->options, k);
    bool same = old && !g_strcmp0(a, b);
    g_free(a);
    g_free(b);
    return same;
}

/*
 * Any option left that differs from the node's current value cannot change.
 * A child named by its current node ("image=x" for blkdebug) is unchanged;
 * inline options of a child named by reference are refused outright.  Of
 * several, the one QEMU would find first is named.
 */
static bool reopen_check_leftovers(ReopenQueue *q, ReopenState *rs,
                                   GError **errp)
{
    const char *k;
    json_t *v;
    json_t *old_flat = opts_flatten(rs->bs->options);
    GPtrArray *refused = g_hash_table_lookup(q->ref_prefixes, rs);
    const char *bad = NULL;
    json_object_foreach(rs->options, k, v) {
        if (!leftover_unchanged(rs, refused, old_flat, k, v) &&
            (!bad || json_qdict_bucket(k) < json_qdict_bucket(bad))) {
            bad = k;
        }
    }
    if (bad) {
        error_setg(errp, "Cannot change the option '%s'", bad);
    }
    json_decref(old_flat);
    return !bad;
}

/* ---- file and backing given by reference ---- */

enum { CHANGED_BACKING = 1, CHANGED_FILE = 2 };

/* What the child edges changed by one reopen_multiple() call. */
typedef struct {
    Txn *txn;
    /*
     * New edges are attached in a transaction of their own, finished after
     * the main one: aborting an attach frees the edge, and the main
     * transaction's clean-up still touches the edges the permission walk
     * gave final permissions.
     */
    Txn *attach_txn;
    GSList *dropped;     /* nodes an edge left: refreshed, one ref held */
    GHashTable *changed; /* node -> CHANGED_* of the edges that moved */
} ChildChanges;

/* Is bs the node root or below it? */
static bool node_is_below(BlockNode *root, BlockNode *bs)
{
    if (root == bs) {
        return true;
    }
    for (GList *l = root->children; l; l = l->next) {
        if (node_is_below(((BlockChild *)l->data)->bs, bs)) {
            return true;
        }
    }
    return false;
}

/*
 * Was child opened, directly or through nodes that were, by parent?  Such a
 * node follows parent's reopens once it is parent's child (QEMU moves its
 * inherits_from to the new parent).
 */
static bool inherits_from(BlockNode *child, BlockNode *parent)
{
    BlockNode *cur = child;
    while (cur && cur != parent) {
        BlockNode *up = NULL;
        for (GList *l = cur->parents; l; l = l->next) {
            BlockChild *p = l->data;
            if (p->inherits && cur->opened_by_parent &&
                p->klass->parent_is_node) {
                up = p->opaque;
                break;
            }
        }
        cur = up;
    }
    return cur != NULL;
}

typedef struct {
    BlockChild *c;
    bool inherits;
} InheritsUndo;

static void inherits_abort(void *opaque)
{
    InheritsUndo *u = opaque;
    u->c->inherits = u->inherits;
}

static const TxnActionDrv inherits_drv = {
    .abort = inherits_abort,
    .clean = g_free,
};

static void child_set_inherits(BlockChild *c, bool inherits, Txn *txn)
{
    InheritsUndo *u = g_new(InheritsUndo, 1);
    u->c = c;
    u->inherits = c->inherits;
    c->inherits = inherits;
    txn_add(txn, &inherits_drv, u);
}

/*
 * Apply the "backing" or "file" option of rs: a node name moves the edge
 * to that node, null (backing only) removes it; the same node as now
 * changes nothing.  The checks and messages are QEMU 7.2's, in its order.
 */
static bool reopen_parse_child(ReopenState *rs, bool is_backing,
                               ChildChanges *cc, GError **errp)
{
    BlockNode *bs = rs->bs;
    const char *name = is_backing ? "backing" : "file";
    json_t *v = json_object_get(rs->options, name);
    BlockChild *c = is_backing ? bs->backing : bs->file;
    BlockNode *old_bs = c ? c->bs : NULL;
    BlockNode *new_bs = NULL;

    if (!v) {
        return true;
    }
    if (json_is_string(v)) {
        const char *ref = json_string_value(v);
        new_bs = node_find(ref);
        if (!new_bs) {
            error_setg(errp, "Cannot find device='' nor node-name='%s'", ref);
            return false;
        }
        if (node_is_below(new_bs, bs)) {
            error_setg(errp, "Making '%s' a %s child of '%s' would create a "
                       "cycle", ref, name, bs->node_name);
            return false;
        }
    } else if (!json_is_null(v) || !is_backing) {
        error_setg(errp, "Invalid parameter type for '%s', expected: %s",
                   name, is_backing ? "BlockdevRefOrNull" : "BlockdevRef");
        return false;
    }
    /* Handled here: neither compared as a leftover nor kept as an option. */
    json_object_del(rs->options, name);
    json_object_del(rs->requested, name);
    if (old_bs == new_bs) {
        return true;
    }
    if (old_bs) {
        /* The node a job's implicit filter stands for is already there. */
        if (node_skip_implicit_filters(old_bs) == new_bs) {
            return true;
        }
        if (old_bs->implicit) {
            error_setg(errp, "Cannot replace implicit %s child of %s", name,
                       bs->node_name);
            return false;
        }
    }
    if (bs->drv->is_filter && !old_bs) {
        /* A filter has its one child already: this one is the wrong kind. */
        error_setg(errp, "'%s' is a %s filter node that does not support a "
                   "%s child", bs->node_name, bs->drv->format_name, name);
        return false;
    }
    if (c && child_frozen_count(c) > 0) {
        /* QEMU 7.2's words here (iotest 245), not child_check_not_frozen's. */
        error_setg(errp, "Cannot change frozen '%s' link from '%s' to '%s'",
                   c->name, bs->node_name, old_bs->node_name);
        return false;
    }
    if (is_backing && !bs->drv->is_filter && !bs->drv->supports_backing) {
        error_setg(errp, "Driver '%s' of node '%s' does not support backing "
                   "files", bs->drv->format_name, bs->node_name);
        return false;
    }
    if (!is_backing && !c) {
        /* A new file child's role could not be known: only retargeting. */
        error_setg(errp, "Cannot set file child to format node without file "
                   "child");
        return false;
    }

    if (new_bs && !node_join_loop(bs, new_bs, errp)) {
        return false;
    }
    bool inherits = new_bs && inherits_from(new_bs, bs);
    if (!c) {
        c = child_new_noperm(new_bs, "backing", &child_of_node, CHILD_ROLE_COW,
                             0, BLK_PERM_ALL, bs, cc->attach_txn);
        c->inherits = inherits;
        bs->backing = c; /* the abort of the attach clears it again */
    } else if (new_bs) {
        child_set_inherits(c, inherits, cc->txn);
        child_set_node_noperm(c, new_bs, cc->txn);
        /*
         * The old node's permissions mean nothing for the new one: the
         * transition takes only what the parent needs from the new node.
         */
        child_set_perm_noperm(c, 0, BLK_PERM_ALL, cc->txn);
    } else {
        child_remove_noperm(c, cc->txn);
    }
    if (old_bs) {
        node_ref(old_bs);
        cc->dropped = g_slist_prepend(cc->dropped, old_bs);
    }
    int mask = GPOINTER_TO_INT(g_hash_table_lookup(cc->changed, bs));
    mask |= is_backing ? CHANGED_BACKING : CHANGED_FILE;
    g_hash_table_insert(cc->changed, bs, GINT_TO_POINTER(mask));
    return true;
}

/* After commit: what the node stored about its old child no longer holds. */
static void reopen_commit_children(ReopenState *rs, ChildChanges *cc)
{
    BlockNode *bs = rs->bs;
    int mask = GPOINTER_TO_INT(g_hash_table_lookup(cc->changed, bs));
    if (!mask) {
        return;
    }
    /* The old child's open options describe a node that is not there. */
    if (mask & CHANGED_BACKING) {
        json_object_del(bs->options, "backing");
    }
    if (mask & CHANGED_FILE) {
        json_object_del(bs->options, "file");
    }
    node_invalidate_length(bs);
}

static void remember_options(ReopenState *rs)
{
    BlockNode *bs = rs->bs;
    json_t *flat = opts_flatten(bs->options);
    const char *k;
    json_t *v;
    void *tmp;
    if (!rs->keep_old) {
        /* The new set replaced the node's own options, not its children's. */
        json_object_foreach_safe(flat, tmp, k, v) {
            if (!key_is_child(bs, k)) {
                json_object_del(flat, k);
            }
        }
    }
    json_object_foreach(rs->requested, k, v) {
        json_object_set(flat, k, v);
    }
    json_object_set_new(flat, "read-only", json_boolean(rs->read_only));
    json_object_set_new(flat, "cache.direct",
                        json_boolean(rs->flags & NODE_O_NOCACHE));
    json_object_set_new(flat, "cache.no-flush",
                        json_boolean(rs->flags & NODE_O_NO_FLUSH));
    json_decref(bs->options);
    bs->options = json_object();
    json_object_foreach(flat, k, v) {
        opts_set_dotted(bs->options, k, json_incref(v), NULL);
    }
    json_decref(flat);
}

bool reopen_multiple(ReopenQueue *q, GError **errp)
{
    if (!q) {
        return true;
    }
    bool ok = true;
    GList *prepared = NULL;
    GSList *nodes = NULL;
    ChildChanges cc = {
        .txn = txn_new(),
        .attach_txn = txn_new(),
        .changed = g_hash_table_new(NULL, NULL),
    };

    /*
     * The queued nodes drained (each with what is above and below it), not
     * every node: QEMU 7.2's bdrv_reopen() drains the node's subtree, and
     * jobs on other nodes go on without a paused/running (standby/ready)
     * pair of events, as there.
     */
    for (GList *l = q->states; l; l = l->next) {
        node_drain_begin(((ReopenState *)l->data)->bs);
    }
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
        if (!bs->drv->reopen_prepare) {
            /* As in QEMU: such a driver cannot be reopened at all. */
            error_setg(errp, "Block format '%s' used by node '%s' does not "
                       "support reopening files", bs->drv->format_name,
                       bs->node_name);
            ok = false;
            break;
        }
        if (!reopen_check_reset(rs, errp)) {
            ok = false;
            break;
        }
        if (bs->drv->reopen_prepare(rs, errp) < 0) {
            ok = false;
            break;
        }
        prepared = g_list_prepend(prepared, rs);
        /* A node with a backing file must say what becomes of it. */
        if (bs->drv->supports_backing && rs->backing_missing &&
            (bs->backing || bs->backing_file[0])) {
            error_setg(errp, "backing is missing for '%s'", bs->node_name);
            ok = false;
            break;
        }
        if (!reopen_parse_child(rs, true, &cc, errp) ||
            !reopen_parse_child(rs, false, &cc, errp) ||
            !reopen_check_leftovers(q, rs, errp)) {
            ok = false;
            break;
        }
    }

    if (ok) {
        /* The nodes edges left lose a user: their permissions shrink. */
        GSList *refresh = g_slist_copy(nodes);
        for (GSList *l = cc.dropped; l; l = l->next) {
            refresh = g_slist_prepend(refresh, l->data);
        }
        ok = perm_refresh_nodes(refresh, cc.txn, false, errp);
        g_slist_free(refresh);
    }

    if (!ok) {
        txn_abort(cc.txn);
        txn_abort(cc.attach_txn);
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
        txn_commit(cc.txn);
        txn_commit(cc.attach_txn);
        for (GList *l = q->states; l; l = l->next) {
            ReopenState *rs = l->data;
            BlockNode *bs = rs->bs;
            if (bs->drv->reopen_commit &&
                g_list_find(prepared, rs)) {
                bs->drv->reopen_commit(rs);
            }
            bs->read_only = rs->read_only;
            bs->read_only_given = rs->read_only_given ||
                                  (rs->keep_old && bs->read_only_given);
            bs->open_flags = rs->flags;
            bs->detect_zeroes = rs->detect_zeroes;
            bs->discard_unmap = rs->discard_unmap;
            reopen_commit_children(rs, &cc);
            /* Remember the options now in force for the next reopen. */
            remember_options(rs);
            node_set_reopen_state(bs, NULL);
        }
        /* Final permissions: only relaxing, so protocol errors are ignored. */
        Txn *relax = txn_new();
        perm_refresh_nodes(nodes, relax, true, NULL);
        txn_commit(relax);
        for (GList *l = q->states; l; l = l->next) {
            node_refresh_limits(((ReopenState *)l->data)->bs);
        }
        /* Drivers that write once the new permissions are in force. */
        for (GList *l = q->states; l; l = l->next) {
            ReopenState *rs = l->data;
            if (rs->bs->drv->reopen_commit_post &&
                g_list_find(prepared, rs)) {
                rs->bs->drv->reopen_commit_post(rs);
            }
        }
    }
    for (GList *l = g_list_last(q->states); l; l = l->prev) {
        node_drain_end(((ReopenState *)l->data)->bs);
    }
    /* A node no edge uses any more closes here, outside the drain. */
    g_slist_free_full(cc.dropped, (GDestroyNotify)node_unref);
    g_hash_table_destroy(cc.changed);
    g_list_free(prepared);
    g_slist_free(nodes);
    reopen_queue_free(q);
    return ok;
}

bool node_reopen(BlockNode *bs, json_t *options, bool read_only, GError **errp)
{
    return reopen_multiple(reopen_queue_add(NULL, bs, options, read_only), errp);
}
