/*
 * blkdebug: a filter that injects I/O errors and suspends requests, driven
 * by debug events that the drivers above it signal (debug-event.h).
 *
 * Compatible with QEMU 7.2's blkdebug: the same options, the same rule file
 * format, the same rule semantics and the same error messages, so QEMU's
 * iotests and rule files work unchanged.
 *
 * How a rule fires:
 *
 *   parent driver                      blkdebug node
 *   -------------                      -------------
 *   child_debug_event(file, E) ------> blkdebug_debug_event(E)
 *                                        for each rule on E whose state
 *                                        matches (0 = any state):
 *                                          inject-error: arm it (the first
 *                                            one armed by E disarms all
 *                                            rules armed by earlier events)
 *                                          set-state:    remember new state
 *                                          suspend:      park the request
 *   child_co_preadv(file, ...) ------> blkdebug_co_preadv()
 *                                        rule_check(): the oldest armed rule
 *                                        covering the request (sector -1 =
 *                                        any) and its I/O type fails it
 *
 * Invariants:
 *   - rules[e] lists every live rule for event e, newest first; an armed
 *     rule is also on `armed`, oldest first.  A `once` rule leaves both
 *     lists when it fails a request; a suspend rule is one-shot too.
 *   - `state` changes only at the end of processing one event, so all rules
 *     of that event see the state the event started in.
 *   - A request parked by a breakpoint stays in debug_event until every
 *     Suspended entry naming its coroutine has been resumed.
 *
 * Reading rules from a file and from options is in blkdebug-rules.c.
 *
 * Everything runs in the node's thread; coroutines only interleave at
 * co_yield(), and no list is walked across a yield.
 */
#include <errno.h>
#include <inttypes.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "strata/block-driver.h"
#include "strata/debug-event.h"
#include "strata/error.h"
#include "strata/opts.h"

#include "blkdebug-rules.h"

typedef struct Suspended {
    Coroutine *co;
    char *tag;
} Suspended;

typedef struct BlkdebugState {
    uint64_t align, max_transfer;
    uint64_t opt_write_zero, max_write_zero;
    uint64_t opt_discard, max_discard;
    uint64_t take_child_perms, unshare_child_perms;
    char *config_file;
    bool plain;                /* expressible as blkdebug:CONFIG:IMAGE */

    int state;
    GList *rules[BLKDBG__MAX]; /* Rule*, newest first */
    GList *armed;              /* Rule*, oldest first */
    GList *suspended;          /* Suspended*, newest first */
} BlkdebugState;

static void remove_rule(BlkdebugState *s, Rule *r)
{
    s->rules[r->event] = g_list_remove(s->rules[r->event], r);
    s->armed = g_list_remove(s->armed, r);
    blkdebug_rule_free(r);
}

/* ------------------------------------------------------------------------ */
/* Opening                                                                  */

/* Valid blkdebug filenames look like blkdebug:[CONFIG]:IMAGE. */
static bool blkdebug_parse_filename(const char *filename, json_t *options,
                                    GError **errp)
{
    const char *rest, *colon;

    if (!g_str_has_prefix(filename, "blkdebug:")) {
        /* Everything else must already be in the options. */
        json_object_set_new(options, "x-image", json_string_nocheck(filename));
        return true;
    }
    rest = filename + strlen("blkdebug:");
    colon = strchr(rest, ':');
    if (!colon) {
        error_setg(errp, "blkdebug requires both config file and image path");
        return false;
    }
    if (colon != rest) {
        json_object_set_new(options, "config",
                            json_stringn(rest, colon - rest));
    }
    json_object_set_new(options, "x-image", json_string_nocheck(colon + 1));
    return true;
}

/*
 * Options for an image given by filename (x-image): a json: filename, a
 * "protocol:..." filename, or a plain path for the file driver.  The image
 * is a protocol node, as in QEMU: no format is probed below blkdebug.
 */
static json_t *image_options_from_filename(const char *fn, GError **errp)
{
    const BlockDriver *drv;
    const char *proto = "file";
    char *name = NULL;
    json_t *opts;
    size_t n;

    if (g_str_has_prefix(fn, "json:")) {
        GError *err = NULL;
        opts = opts_parse_json(fn + strlen("json:"), &err);
        if (!opts) {
            error_setg(errp, "Could not parse the JSON options: %s",
                       err->message);
            g_error_free(err);
            return NULL;
        }
        if (!json_is_object(opts)) {
            json_decref(opts);
            error_setg(errp, "Invalid JSON object given");
            return NULL;
        }
        return opts;
    }

    n = strcspn(fn, ":/");
    if (fn[n] == ':') {
        name = g_strndup(fn, n);
        drv = driver_find(name);
        if (!drv || !drv->protocol_name || strcmp(drv->protocol_name, name)) {
            error_setg(errp, "Unknown protocol '%s'", name);
            g_free(name);
            return NULL;
        }
        proto = name;
    } else {
        drv = driver_find(proto);
    }

    opts = json_object();
    json_object_set_new(opts, "driver", json_string(proto));
    if (drv && drv->parse_filename) {
        if (!drv->parse_filename(fn, opts, errp)) {
            json_decref(opts);
            opts = NULL;
        }
    } else {
        json_object_set_new(opts, "filename", json_string_nocheck(fn));
    }
    g_free(name);
    return opts;
}

/*
 * "blkdebug:conf:path" together with image.* options: as in QEMU, the image
 * is opened from both, the filename naming the storage (of the format, when
 * image.driver is one) and the options saying how.  Options given
 * explicitly win, but naming the storage twice is refused with QEMU's
 * words.  A json: filename only adds the options it has that are missing.
 */
static bool merge_image_filename(json_t *sub, json_t *from_name, bool is_json,
                                 GError **errp)
{
    const char *drvname = json_string_value(json_object_get(sub, "driver"));
    const BlockDriver *drv = drvname ? driver_find(drvname) : NULL;
    const char *prefix = !is_json && drv && drv->is_format ? "file." : "";
    json_t *have = opts_flatten(sub);
    json_t *add = opts_flatten(from_name);
    const char *k;
    json_t *v;
    bool ok = true;

    json_object_foreach(add, k, v) {
        char *key = g_strconcat(prefix, k, NULL);
        if (!json_object_get(have, key)) {
            opts_set_dotted(sub, key, json_incref(v), NULL);
        } else if (!is_json && !strcmp(k, "filename")) {
            error_setg(errp, "Can't specify 'file' and 'filename' options at "
                       "the same time");
            ok = false;
        }
        g_free(key);
        if (!ok) {
            break;
        }
    }
    json_decref(have);
    json_decref(add);
    return ok;
}

static void free_rules(BlkdebugState *s)
{
    for (int i = 0; i < BLKDBG__MAX; i++) {
        g_list_free_full(s->rules[i], (GDestroyNotify)blkdebug_rule_free);
        s->rules[i] = NULL;
    }
    g_list_free(s->armed);
    s->armed = NULL;
}

static void blkdebug_debug_event(BlockNode *bs, int event);

typedef struct LimitOpt {
    const char *name;
    size_t off;
} LimitOpt;

static const LimitOpt limit_opts[] = {
    { "align", offsetof(BlkdebugState, align) },
    { "max-transfer", offsetof(BlkdebugState, max_transfer) },
    { "opt-write-zero", offsetof(BlkdebugState, opt_write_zero) },
    { "max-write-zero", offsetof(BlkdebugState, max_write_zero) },
    { "opt-discard", offsetof(BlkdebugState, opt_discard) },
    { "max-discard", offsetof(BlkdebugState, max_discard) },
};

static bool aligned(uint64_t v, uint64_t a)
{
    return a == 0 || v % a == 0;
}

static bool check_limit(uint64_t v, uint64_t a, const char *name,
                        GError **errp)
{
    if (v && (v >= INT_MAX || !aligned(v, a))) {
        error_setg(errp, "Cannot meet constraints with %s %" PRIu64, name, v);
        return false;
    }
    return true;
}

static int blkdebug_open(BlockNode *bs, json_t *options, int flags,
                         GError **errp)
{
    BlkdebugState *s = bs->opaque;
    char *x_image = NULL;
    BlockNode *file;
    uint64_t align;
    int ret = -EINVAL;

    if (!opts_take_str(options, "config", &s->config_file, errp) ||
        !opts_take_str(options, "x-image", &x_image, errp)) {
        goto fail;
    }
    /*
     * As QEMU: any rule or limit given, even a zero one, makes the node
     * inexpressible as blkdebug:CONFIG:IMAGE; the child permission lists
     * do not count (they are not among QEMU's strong options).
     */
    s->plain = !blkdebug_options_have(options, "inject-error") &&
               !blkdebug_options_have(options, "set-state");
    for (size_t i = 0; i < G_N_ELEMENTS(limit_opts); i++) {
        uint64_t *field = (uint64_t *)((char *)s + limit_opts[i].off);
        s->plain = s->plain &&
                   !blkdebug_options_have(options, limit_opts[i].name);
        if (!opts_take_size(options, limit_opts[i].name, field, errp)) {
            goto fail;
        }
    }

    if (!blkdebug_rules_read(s->config_file, options, s->rules, errp)) {
        goto fail;
    }
    s->state = 1;

    if (!blkdebug_parse_perm_list(options, "take-child-perms", &s->take_child_perms,
                         errp) ||
        !blkdebug_parse_perm_list(options, "unshare-child-perms",
                         &s->unshare_child_perms, errp)) {
        goto fail;
    }

    if (x_image) {
        json_t *img = image_options_from_filename(x_image, errp);
        json_t *sub = opts_take_subtree(options, "image");
        bool ok = img && (!sub || merge_image_filename(sub, img,
                              g_str_has_prefix(x_image, "json:"), errp));
        if (sub) {
            json_decref(img);
            img = sub;
        }
        if (!ok) {
            json_decref(img);
            goto fail;
        }
        json_object_set_new(options, "image", img);
    } else if (!blkdebug_options_have(options, "image")) {
        error_setg(errp, "A block device must be specified for \"image\"");
        goto fail;
    }
    bs->file = node_open_child(bs, options, "image",
                               CHILD_ROLE_FILTERED | CHILD_ROLE_PRIMARY,
                               false, errp);
    if (!bs->file) {
        goto fail;
    }
    file = bs->file->bs;

    /* A node's flags are its driver's plus those it found at open. */
    bs->supported_write_flags =
        REQ_WRITE_UNCHANGED |
        (REQ_FUA & (file->supported_write_flags |
                    file->drv->supported_write_flags));
    bs->supported_zero_flags =
        REQ_WRITE_UNCHANGED |
        ((REQ_FUA | REQ_MAY_UNMAP | REQ_NO_FALLBACK) &
         (file->supported_zero_flags | file->drv->supported_zero_flags));

    if (s->align && (s->align >= INT_MAX || (s->align & (s->align - 1)))) {
        error_setg(errp, "Cannot meet constraints with align %" PRIu64,
                   s->align);
        goto fail;
    }
    align = MAX(s->align, (uint64_t)file->bl.request_alignment);
    if (!check_limit(s->max_transfer, align, "max-transfer", errp) ||
        !check_limit(s->opt_write_zero, align, "opt-write-zero", errp) ||
        !check_limit(s->max_write_zero, MAX(s->opt_write_zero, align),
                     "max-write-zero", errp) ||
        !check_limit(s->opt_discard, align, "opt-discard", errp) ||
        !check_limit(s->max_discard, MAX(s->opt_discard, align),
                     "max-discard", errp)) {
        goto fail;
    }

    /* Rules on the "none" event are armed from the start. */
    blkdebug_debug_event(bs, BLKDBG_NONE);
    g_free(x_image);
    return 0;

fail:
    /* The image child, if attached, is the core's to drop. */
    free_rules(s);
    g_free(s->config_file);
    s->config_file = NULL;
    g_free(x_image);
    return ret;
}

static void blkdebug_close(BlockNode *bs)
{
    BlkdebugState *s = bs->opaque;

    free_rules(s);
    /* Parked requests can never be resumed once the node is gone. */
    for (GList *l = s->suspended; l; l = l->next) {
        Suspended *r = l->data;
        g_free(r->tag);
        g_free(r);
    }
    g_list_free(s->suspended);
    s->suspended = NULL;
    g_free(s->config_file);
    s->config_file = NULL;
}

static void blkdebug_refresh_limits(BlockNode *bs)
{
    BlkdebugState *s = bs->opaque;

    if (s->align) {
        bs->bl.request_alignment = s->align;
    }
    if (s->max_transfer) {
        bs->bl.max_transfer = s->max_transfer;
    }
    if (s->opt_write_zero) {
        bs->bl.pwrite_zeroes_alignment = s->opt_write_zero;
    }
    if (s->max_write_zero) {
        bs->bl.max_pwrite_zeroes = s->max_write_zero;
    }
    if (s->opt_discard) {
        bs->bl.pdiscard_alignment = s->opt_discard;
    }
    if (s->max_discard) {
        bs->bl.max_pdiscard = s->max_discard;
    }
}

static void blkdebug_refresh_filename(BlockNode *bs)
{
    BlkdebugState *s = bs->opaque;
    const char *child;
    int n;

    if (!s->plain || !bs->file || !bs->file->bs) {
        return;
    }
    child = node_get_filename(bs->file->bs);
    if (!child || !child[0] || g_str_has_prefix(child, "json:")) {
        return;
    }
    n = snprintf(bs->filename, sizeof(bs->filename), "blkdebug:%s:%s",
                 s->config_file ? s->config_file : "", child);
    if (n < 0 || (size_t)n >= sizeof(bs->filename)) {
        /* A truncated filename would name something else. */
        bs->filename[0] = '\0';
    }
}

/*
 * A reopen that keeps the node's options starts from them as they were
 * given; QEMU keeps them flat, so its rules ("inject-error.0.event") compare
 * key by key with the node's and an unchanged list is no change.  Lists
 * given as JSON arrays are flattened here the same way.
 */
static void blkdebug_reopen_join_options(json_t *new_opts, json_t *old_opts)
{
    static const char *const lists[] = {
        "inject-error", "set-state", "take-child-perms", "unshare-child-perms",
    };

    (void)new_opts;
    for (size_t i = 0; i < G_N_ELEMENTS(lists); i++) {
        json_t *v = json_object_get(old_opts, lists[i]);
        if (!v || !json_is_array(v)) {
            continue;
        }
        json_t *one = json_object();
        json_object_set(one, lists[i], v);
        json_t *flat = opts_flatten(one);
        json_decref(one);
        json_object_del(old_opts, lists[i]);
        json_object_update(old_opts, flat);
        json_decref(flat);
    }
}

static int blkdebug_reopen_prepare(ReopenState *rs, GError **errp)
{
    /* Options stay in rs->options: the core refuses to change them. */
    return 0;
}

static void blkdebug_child_perm(BlockNode *bs, BlockChild *c, unsigned role,
                                const ReopenState *rs, uint64_t perm,
                                uint64_t shared, uint64_t *nperm,
                                uint64_t *nshared)
{
    BlkdebugState *s = bs->opaque;

    node_filter_perms(bs, c, role, rs, perm, shared, nperm, nshared);
    *nperm |= s->take_child_perms;
    *nshared &= ~s->unshare_child_perms;
}

/* ------------------------------------------------------------------------ */
/* Events, breakpoints and the data path                                    */

static bool co_is_parked(BlkdebugState *s, Coroutine *co)
{
    for (GList *l = s->suspended; l; l = l->next) {
        if (((Suspended *)l->data)->co == co) {
            return true;
        }
    }
    return false;
}

static void blkdebug_debug_event(BlockNode *bs, int event)
{
    BlkdebugState *s = bs->opaque;
    int new_state = s->state;
    int injects = 0;
    bool parked = false;
    GList *l, *next;

    if (event < 0 || event >= BLKDBG__MAX) {
        return;
    }
    for (l = s->rules[event]; l; l = next) {
        Rule *r = l->data;
        next = l->next;

        if (r->state && r->state != s->state) {
            continue;
        }
        switch (r->action) {
        case ACTION_INJECT_ERROR:
            if (injects++ == 0) {
                g_list_free(s->armed);
                s->armed = NULL;
            }
            /* Rules are newest first: prepending keeps `armed` oldest first. */
            s->armed = g_list_prepend(s->armed, r);
            break;
        case ACTION_SET_STATE:
            new_state = r->new_state;
            break;
        case ACTION_SUSPEND:
            /* Only a request (a coroutine) can be parked. */
            if (in_coroutine()) {
                Suspended *sr = g_new0(Suspended, 1);
                sr->co = co_self();
                sr->tag = g_strdup(r->tag);
                s->suspended = g_list_prepend(s->suspended, sr);
                blkdbg_notice("blkdebug: Suspended request '%s'", sr->tag);
                remove_rule(s, r);
                parked = true;
            }
            break;
        }
    }
    s->state = new_state;

    if (parked) {
        Coroutine *self = co_self();
        /* Wake-ups may be merged or spurious: wait until no entry is left. */
        while (co_is_parked(s, self)) {
            co_yield();
        }
    }
}

static int blkdebug_debug_breakpoint(BlockNode *bs, const char *event,
                                     const char *tag)
{
    BlkdebugState *s = bs->opaque;
    int e = blkdbg_event_from_name(event);
    Rule *r;

    if (e < 0 || !tag) {
        return -ENOENT;
    }
    r = g_new0(Rule, 1);
    r->event = e;
    r->action = ACTION_SUSPEND;
    r->tag = g_strdup(tag);
    s->rules[e] = g_list_prepend(s->rules[e], r);
    return 0;
}

static void resume_one(BlkdebugState *s, GList *l)
{
    Suspended *r = l->data;
    Coroutine *co = r->co;

    blkdbg_notice("blkdebug: Resuming request '%s'", r->tag);
    s->suspended = g_list_delete_link(s->suspended, l);
    g_free(r->tag);
    g_free(r);
    /*
     * From a command (outside any coroutine) the request runs on at once,
     * as in QEMU, so it is submitted before the command returns.
     */
    if (in_coroutine()) {
        co_wake(co);
    } else {
        co_enter(co);
    }
}

static GList *find_parked(BlkdebugState *s, const char *tag)
{
    for (GList *l = s->suspended; l; l = l->next) {
        if (strcmp(((Suspended *)l->data)->tag, tag) == 0) {
            return l;
        }
    }
    return NULL;
}

static int blkdebug_debug_resume(BlockNode *bs, const char *tag)
{
    BlkdebugState *s = bs->opaque;
    GList *l = tag ? find_parked(s, tag) : NULL;

    if (!l) {
        return -ENOENT;
    }
    resume_one(s, l);
    return 0;
}

/*
 * Drop every breakpoint with this tag and resume every request it parked.
 * As in QEMU 7.2, only dropping a breakpoint counts as success.
 */
static int blkdebug_debug_remove_breakpoint(BlockNode *bs, const char *tag)
{
    BlkdebugState *s = bs->opaque;
    int ret = -ENOENT;
    GList *l, *next;

    if (!tag) {
        return -ENOENT;
    }
    for (int i = 0; i < BLKDBG__MAX; i++) {
        for (l = s->rules[i]; l; l = next) {
            Rule *r = l->data;
            next = l->next;
            if (r->action == ACTION_SUSPEND && strcmp(r->tag, tag) == 0) {
                remove_rule(s, r);
                ret = 0;
            }
        }
    }
    while ((l = find_parked(s, tag))) {
        resume_one(s, l);
    }
    return ret;
}

static bool blkdebug_debug_is_suspended(BlockNode *bs, const char *tag)
{
    BlkdebugState *s = bs->opaque;

    return tag && find_parked(s, tag) != NULL;
}

/*
 * Fail the request if an armed rule covers it: returns 0 to go on, -errno
 * to fail, or 1 when the rule's errno is not positive (QEMU then reports
 * success without doing the I/O).  Without `immediately` the failure comes
 * back from the loop, not from inside the call.
 */
static int coroutine_fn rule_check(BlockNode *bs, uint64_t offset,
                                   uint64_t bytes, int iotype)
{
    BlkdebugState *s = bs->opaque;
    Rule *r = NULL;
    bool immediately;
    int error;

    for (GList *l = s->armed; l; l = l->next) {
        Rule *c = l->data;
        if ((c->offset == ANY_OFFSET ||
             (bytes && c->offset >= offset && c->offset - offset < bytes)) &&
            (c->iotype_mask & (1u << iotype))) {
            r = c;
            break;
        }
    }
    if (!r) {
        return 0;
    }
    error = r->error;
    immediately = r->immediately;
    if (r->once) {
        remove_rule(s, r);
    }
    if (!immediately && in_coroutine()) {
        co_wake(co_self());
        co_yield();
    }
    if (error == 0) {
        return 0;
    }
    return error > 0 ? -error : 1;
}

/* rule_check() for a read or write, after checking io.c kept its word. */
static int coroutine_fn rw_check(BlockNode *bs, int64_t offset, int64_t bytes,
                                 int iotype)
{
    /* blkdebug exists to test the request path: hold io.c to its word. */
    g_assert(offset % bs->bl.request_alignment == 0);
    g_assert(bytes % bs->bl.request_alignment == 0);
    g_assert(!bs->bl.max_transfer || (uint64_t)bytes <= bs->bl.max_transfer);
    return rule_check(bs, offset, bytes, iotype);
}

static int coroutine_fn blkdebug_co_preadv(BlockNode *bs, int64_t offset,
                                           int64_t bytes, IOVec *qiov,
                                           size_t qiov_offset, int flags)
{
    int ret = rw_check(bs, offset, bytes, IOTYPE_READ);

    if (ret) {
        return MIN(ret, 0);
    }
    return child_co_preadv(bs->file, offset, bytes, qiov, qiov_offset, flags);
}

static int coroutine_fn blkdebug_co_pwritev(BlockNode *bs, int64_t offset,
                                            int64_t bytes, IOVec *qiov,
                                            size_t qiov_offset, int flags)
{
    int ret = rw_check(bs, offset, bytes, IOTYPE_WRITE);

    if (ret) {
        return MIN(ret, 0);
    }
    return child_co_pwritev(bs->file, offset, bytes, qiov, qiov_offset, flags);
}

static int coroutine_fn blkdebug_co_flush(BlockNode *bs)
{
    int ret = rule_check(bs, 0, 0, IOTYPE_FLUSH);

    if (ret) {
        return MIN(ret, 0);
    }
    return node_co_flush(bs->file->bs);
}

static int coroutine_fn blkdebug_co_pwrite_zeroes(BlockNode *bs,
                                                  int64_t offset,
                                                  int64_t bytes, int flags)
{
    uint32_t align = MAX(bs->bl.request_alignment,
                         bs->bl.pwrite_zeroes_alignment);
    int ret;

    /*
     * Pieces smaller than the zero alignment go back to io.c, which must
     * then write them as data: that is the fallback this option tests.
     */
    if ((uint64_t)bytes < align) {
        return -ENOTSUP;
    }
    ret = rule_check(bs, offset, bytes, IOTYPE_WRITE_ZEROES);
    if (ret) {
        return MIN(ret, 0);
    }
    return child_co_pwrite_zeroes(bs->file, offset, bytes, flags);
}

static int coroutine_fn blkdebug_co_pdiscard(BlockNode *bs, int64_t offset,
                                             int64_t bytes)
{
    int ret;

    /* Discard is advisory: pieces below the alignment are just dropped. */
    if ((uint64_t)bytes < bs->bl.request_alignment) {
        return -ENOTSUP;
    }
    ret = rule_check(bs, offset, bytes, IOTYPE_DISCARD);
    if (ret) {
        return MIN(ret, 0);
    }
    return child_co_pdiscard(bs->file, offset, bytes);
}

static int coroutine_fn blkdebug_co_block_status(BlockNode *bs,
                                                 bool want_zero,
                                                 int64_t offset, int64_t bytes,
                                                 int64_t *pnum, int64_t *map,
                                                 BlockNode **file)
{
    int ret = rule_check(bs, offset, bytes, IOTYPE_BLOCK_STATUS);

    if (ret < 0) {
        return ret;
    }
    *pnum = bytes;
    *map = offset;
    *file = bs->file->bs;
    return BLOCK_RAW | BLOCK_OFFSET_VALID;
}

static int coroutine_fn blkdebug_co_truncate(BlockNode *bs, int64_t offset,
                                             bool exact, PreallocMode prealloc,
                                             GError **errp)
{
    return child_co_truncate(bs->file, offset, exact, prealloc, errp);
}

static int64_t blkdebug_getlength(BlockNode *bs)
{
    return node_getlength(bs->file->bs);
}

const BlockDriver bdrv_blkdebug = {
    .format_name = "blkdebug",
    .protocol_name = "blkdebug",
    .instance_size = sizeof(BlkdebugState),
    .is_filter = true,

    .parse_filename = blkdebug_parse_filename,
    .open = blkdebug_open,
    .close = blkdebug_close,
    .refresh_limits = blkdebug_refresh_limits,
    .refresh_filename = blkdebug_refresh_filename,
    .reopen_prepare = blkdebug_reopen_prepare,
    .reopen_join_options = blkdebug_reopen_join_options,
    .child_perm = blkdebug_child_perm,

    .co_preadv = blkdebug_co_preadv,
    .co_pwritev = blkdebug_co_pwritev,
    .co_pwrite_zeroes = blkdebug_co_pwrite_zeroes,
    .co_pdiscard = blkdebug_co_pdiscard,
    .co_flush_to_disk = blkdebug_co_flush,
    .co_truncate = blkdebug_co_truncate,
    .co_block_status = blkdebug_co_block_status,
    .getlength = blkdebug_getlength,

    .debug_event = blkdebug_debug_event,
    .debug_breakpoint = blkdebug_debug_breakpoint,
    .debug_remove_breakpoint = blkdebug_debug_remove_breakpoint,
    .debug_resume = blkdebug_debug_resume,
    .debug_is_suspended = blkdebug_debug_is_suspended,
};
