/*
 * quorum: several children that should hold the same data, voted on.
 *
 * Writes go to every child and succeed when at least vote-threshold of
 * them do.  Reads in the default "quorum" pattern read every child and
 * return the content at least vote-threshold successful reads agree on
 * (the most common one; with rewrite-corrupted=on it is written back to
 * the children that disagreed); with "fifo" they read the first child and
 * try the next one only when a read fails.  blkverify=on (two children,
 * threshold 2) makes any difference between them fatal: the program says
 * where and exits, which is the whole point of that mode.
 *
 * QEMU 7.2's "quorum" driver, with its options, checks and messages.
 * Children are edges named "children.N"; their options are given as an
 * array ("children": [...], each a node definition or a node name) or
 * flattened ("children.0.file.filename=x").
 */
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "strata/block-driver.h"
#include "strata/coroutine.h"
#include "strata/iov.h"

enum { READ_PATTERN_QUORUM, READ_PATTERN_FIFO };

static const char *const read_pattern_names[] = { "quorum", "fifo", NULL };

typedef struct {
    GPtrArray *children;        /* BlockChild *, in index order */
    int threshold;
    bool blkverify;
    bool rewrite_corrupted;
    int read_pattern;
} QuorumState;

/* ---- Options ---- */

/*
 * Flatten v into out under prefix the way QEMU's qdict_flatten does: an
 * empty object or array stays one entry, anything else becomes its leaves.
 */
static void flatten_children(json_t *out, const char *prefix, json_t *v)
{
    if (json_is_object(v) && json_object_size(v)) {
        const char *k;
        json_t *e;
        json_object_foreach(v, k, e) {
            char *key = g_strconcat(prefix, ".", k, NULL);
            flatten_children(out, key, e);
            g_free(key);
        }
    } else if (json_is_array(v) && json_array_size(v)) {
        size_t i;
        json_t *e;
        json_array_foreach(v, i, e) {
            char *key = g_strdup_printf("%s.%zu", prefix, i);
            flatten_children(out, key, e);
            g_free(key);
        }
    } else {
        json_object_set(out, prefix, v);
    }
}

/*
 * Move everything under "children" out of options into a flat object
 * (keys "children.N" for a node name, "children.N.x.y" for options).  A
 * "children" that is not an object or array stays in options, where it
 * is left over.
 */
static json_t *take_children(json_t *options)
{
    json_t *flat = json_object();
    const char *k;
    json_t *v;
    void *tmp;

    json_object_foreach_safe(options, tmp, k, v) {
        bool whole = !strcmp(k, "children") &&
                     ((json_is_object(v) && json_object_size(v)) ||
                      (json_is_array(v) && json_array_size(v)));
        if (whole || g_str_has_prefix(k, "children.")) {
            flatten_children(flat, k, v);
            json_object_del(options, k);
        }
    }
    return flat;
}

/*
 * The number of children (QEMU's qdict_array_entries): entries 0, 1, ...
 * up to the first index that has none; each index is either a node name
 * or options, not both; anything else under "children." makes it no
 * array at all (-EINVAL).
 */
static int count_children(json_t *flat)
{
    size_t handled = 0;
    int n;

    for (n = 0; n < INT32_MAX; n++) {
        char *name = g_strdup_printf("children.%d", n);
        size_t len = strlen(name);
        size_t sub = 0;
        const char *k;
        json_t *v;

        json_object_foreach(flat, k, v) {
            sub += !strncmp(k, name, len) && k[len] == '.';
        }
        bool whole = json_object_get(flat, name) != NULL;
        g_free(name);
        if (whole && sub) {
            return -EINVAL;
        }
        if (!whole && !sub) {
            break;
        }
        handled += whole ? 1 : sub;
    }
    return handled == json_object_size(flat) ? n : -EINVAL;
}

/* Options in QEMU's order of checks; children are opened afterwards. */
static int quorum_parse_options(QuorumState *s, json_t *options, int count,
                                GError **errp)
{
    uint64_t threshold = 0;
    char *pattern = NULL;
    bool blkverify = false, rewrite = false;

    /*
     * QEMU reads all four before checking any, so a malformed value is
     * reported whatever the others are; blkverify and rewrite-corrupted
     * are then ignored in fifo mode.
     */
    if (!opts_take_number(options, "vote-threshold", &threshold, errp) ||
        !opts_take_bool(options, "blkverify", &blkverify, errp) ||
        !opts_take_bool(options, "rewrite-corrupted", &rewrite, errp) ||
        !opts_take_str(options, "read-pattern", &pattern, errp)) {
        g_free(pattern);
        return -EINVAL;
    }
    /* QEMU keeps the number in an int: 2^32 + 1 is 1. */
    s->threshold = (int)threshold;
    if (s->threshold < 1) {
        g_free(pattern);
        error_setg(errp, "Parameter 'vote-threshold' expects a value >= 1");
        return -ERANGE;
    }
    if (s->threshold > count) {
        g_free(pattern);
        error_setg(errp, "threshold may not exceed children count");
        return -ERANGE;
    }
    s->read_pattern = READ_PATTERN_QUORUM;
    if (pattern) {
        int i;
        for (i = 0; read_pattern_names[i]; i++) {
            if (!strcmp(pattern, read_pattern_names[i])) {
                break;
            }
        }
        g_free(pattern);
        if (!read_pattern_names[i]) {
            error_setg(errp, "Please set read-pattern as fifo or quorum");
            return -EINVAL;
        }
        s->read_pattern = i;
    }
    if (s->read_pattern == READ_PATTERN_QUORUM) {
        s->blkverify = blkverify;
        if (blkverify && (count != 2 || s->threshold != 2)) {
            error_setg(errp, "blkverify=on can only be set if there are "
                       "exactly two files and vote-threshold is 2");
            return -EINVAL;
        }
        s->rewrite_corrupted = rewrite;
        if (rewrite && blkverify) {
            error_setg(errp,
                       "rewrite-corrupted=on cannot be used with blkverify=on");
            return -EINVAL;
        }
    }
    return 0;
}

static void quorum_refresh_flags(BlockNode *bs)
{
    QuorumState *s = bs->opaque;
    int zero = REQ_FUA | REQ_MAY_UNMAP | REQ_NO_FALLBACK;

    for (guint i = 0; i < s->children->len; i++) {
        BlockNode *c = ((BlockChild *)s->children->pdata[i])->bs;
        zero &= c->supported_zero_flags | c->drv->supported_zero_flags;
    }
    /* FUA on data writes is a flush of every child (io.c emulates it). */
    bs->supported_write_flags = REQ_WRITE_UNCHANGED;
    bs->supported_zero_flags = zero | REQ_WRITE_UNCHANGED;
}

static int quorum_open(BlockNode *bs, json_t *options, int flags,
                       GError **errp)
{
    QuorumState *s = bs->opaque;
    json_t *children = take_children(options);
    int count = count_children(children);
    int ret;

    if (count < 0) {
        error_setg(errp, "Option children is not a valid array");
        ret = -EINVAL;
        goto out;
    }
    if (count < 1) {
        error_setg(errp, "Number of provided children must be 1 or more");
        ret = -EINVAL;
        goto out;
    }
    ret = quorum_parse_options(s, options, count, errp);
    if (ret < 0) {
        goto out;
    }
    s->children = g_ptr_array_new();
    for (int i = 0; i < count; i++) {
        char *name = g_strdup_printf("children.%d", i);
        BlockChild *c = node_open_child(bs, children, name, CHILD_ROLE_DATA,
                                        false, errp);
        g_free(name);
        if (!c) {
            /* The core detaches the children opened so far. */
            g_ptr_array_free(s->children, TRUE);
            s->children = NULL;
            ret = -EINVAL;
            goto out;
        }
        g_ptr_array_add(s->children, c);
    }
    quorum_refresh_flags(bs);
    ret = 0;
out:
    json_decref(children);
    return ret;
}

static void quorum_close(BlockNode *bs)
{
    QuorumState *s = bs->opaque;

    if (s->children) {
        g_ptr_array_free(s->children, TRUE);
        s->children = NULL;
    }
}

/* QEMU's reopen needs a driver hook quorum does not have. */
static int quorum_reopen_prepare(ReopenState *rs, GError **errp)
{
    error_setg(errp, "Block format 'quorum' used by node '%s' does not "
               "support reopening files", rs->bs->node_name);
    return -ENOTSUP;
}

/* The children's limits combined, as QEMU's generic rule for data children. */
static void quorum_refresh_limits(BlockNode *bs)
{
    QuorumState *s = bs->opaque;
    BlockLimits *bl = &bs->bl;

    bl->request_alignment = 1;
    for (guint i = 0; i < s->children->len; i++) {
        const BlockLimits *c = &((BlockChild *)s->children->pdata[i])->bs->bl;
        bl->opt_transfer = MAX(bl->opt_transfer, c->opt_transfer);
        if (c->max_transfer &&
            (!bl->max_transfer || c->max_transfer < bl->max_transfer)) {
            bl->max_transfer = c->max_transfer;
        }
        bl->min_mem_alignment = MAX(bl->min_mem_alignment,
                                    c->min_mem_alignment);
        bl->opt_mem_alignment = MAX(bl->opt_mem_alignment,
                                    c->opt_mem_alignment);
    }
}

static void quorum_child_perm(BlockNode *bs, BlockChild *c, unsigned role,
                              const ReopenState *rs, uint64_t perm,
                              uint64_t shared, uint64_t *nperm,
                              uint64_t *nshared)
{
    QuorumState *s = bs->opaque;

    *nperm = perm & BLK_PERM_ALL;
    if (s->rewrite_corrupted) {
        /* Repairs write whether or not the parents do. */
        *nperm |= BLK_PERM_WRITE;
    }
    /* Anyone else writing or resizing one child would make them differ. */
    *nshared = shared & (BLK_PERM_CONSISTENT_READ | BLK_PERM_WRITE_UNCHANGED);
}

/* All children must have one length; otherwise the quorum has none. */
static int64_t quorum_getlength(BlockNode *bs)
{
    QuorumState *s = bs->opaque;
    int64_t len = -EIO;

    for (guint i = 0; i < s->children->len; i++) {
        int64_t l = node_getlength(((BlockChild *)s->children->pdata[i])->bs);
        if (l < 0) {
            return l;
        }
        if (i > 0 && l != len) {
            return -EIO;
        }
        len = l;
    }
    return len;
}

/* ---- Requests on several children at once ---- */

typedef enum { OP_READ, OP_WRITE, OP_ZERO } QuorumOp;

typedef struct {
    BlockNode *bs;
    QuorumOp op;
    int64_t offset, bytes;
    int flags;
    IOVec *qiov;                /* writes: the caller's data */
    size_t qiov_offset;
    uint8_t **bufs;             /* reads: one buffer per child */
    int *ret;                   /* per child */
    int pending;
    CoQueue done;
} FanOut;

typedef struct {
    FanOut *f;
    guint idx;
} FanOutCo;

static void coroutine_fn fan_out_entry(void *opaque)
{
    FanOutCo *fc = opaque;
    FanOut *f = fc->f;
    guint i = fc->idx;
    QuorumState *s = f->bs->opaque;
    BlockChild *c = s->children->pdata[i];

    switch (f->op) {
    case OP_READ: {
        IOVec v;
        iovec_init_buf(&v, f->bufs[i], (size_t)f->bytes);
        f->ret[i] = child_co_preadv(c, f->offset, f->bytes, &v, 0, 0);
        iovec_destroy(&v);
        break;
    }
    case OP_WRITE:
        if (f->bufs) {
            /* A repair: the winning content, over what the child holds. */
            IOVec v;
            iovec_init_buf(&v, f->bufs[0], (size_t)f->bytes);
            f->ret[i] = child_co_pwritev(c, f->offset, f->bytes, &v, 0,
                                         f->flags);
            iovec_destroy(&v);
        } else {
            f->ret[i] = child_co_pwritev(c, f->offset, f->bytes, f->qiov,
                                         f->qiov_offset, f->flags);
        }
        break;
    case OP_ZERO:
        f->ret[i] = child_co_pwrite_zeroes(c, f->offset, f->bytes, f->flags);
        break;
    }
    if (--f->pending == 0) {
        co_queue_next(&f->done);
    }
}

/* Run f's operation on the children flagged in which[], all at once. */
static void coroutine_fn fan_out(FanOut *f, const bool *which)
{
    QuorumState *s = f->bs->opaque;
    guint n = s->children->len;
    FanOutCo *fc = g_new(FanOutCo, n);

    co_queue_init(&f->done);
    f->pending = 1;     /* ours, so that no child finishes the round early */
    for (guint i = 0; i < n; i++) {
        if (which && !which[i]) {
            continue;
        }
        fc[i] = (FanOutCo){ f, i };
        f->pending++;
        co_enter(co_create(fan_out_entry, &fc[i]));
    }
    if (--f->pending) {
        while (f->pending) {
            co_queue_wait(&f->done);
        }
    }
    g_free(fc);
}

/*
 * Too few children succeeded: the error most of them had (among equally
 * common ones, the one whose first child comes last, as QEMU's vote
 * list, newest first, picks it).
 */
static int vote_error(const int *ret, guint n)
{
    int best = 0, best_count = 0;

    for (guint i = 0; i < n; i++) {
        if (!ret[i]) {
            continue;
        }
        bool seen = false;
        for (guint j = 0; j < i; j++) {
            seen |= ret[j] == ret[i];
        }
        if (seen) {
            continue;
        }
        int count = 0;
        for (guint j = i; j < n; j++) {
            count += ret[j] == ret[i];
        }
        if (count >= best_count) {
            best = ret[i];
            best_count = count;
        }
    }
    return best;
}

static int success_count(const int *ret, guint n)
{
    int ok = 0;

    for (guint i = 0; i < n; i++) {
        ok += ret[i] == 0;
    }
    return ok;
}

/* ---- Reads ---- */

/* blkverify: any difference is fatal, reported at its first byte. */
static void blkverify_compare(int64_t offset, int64_t bytes,
                              const uint8_t *a, const uint8_t *b)
{
    for (int64_t i = 0; i < bytes; i++) {
        if (a[i] != b[i]) {
            fprintf(stderr, "quorum: offset=%" PRId64 " bytes=%" PRId64
                    " contents mismatch at offset %" PRId64 "\n",
                    offset, bytes, offset + i);
            /*
             * The program ends in the middle of a request, with what it
             * printed so far: nothing is closed or freed (no exit
             * handlers, so a leak checker does not count the request).
             */
            fflush(NULL);
            _exit(1);
        }
    }
}

/*
 * The vote on what the children read: the version read by the most
 * children wins if they are at least the threshold (among versions read
 * equally often, the one first read by the latest child, QEMU's pick);
 * *winner is the first child that read it.  Returns 0 or -EIO.
 */
static int vote_content(FanOut *f, int threshold, guint *winner,
                        int *version)
{
    QuorumState *s = f->bs->opaque;
    guint n = s->children->len;
    int best = -1, best_count = 0;

    for (guint i = 0; i < n; i++) {
        version[i] = -1;
        if (f->ret[i]) {
            continue;
        }
        for (guint j = 0; j < i; j++) {
            if (version[j] >= 0 &&
                !memcmp(f->bufs[j], f->bufs[i], (size_t)f->bytes)) {
                version[i] = version[j];
                break;
            }
        }
        if (version[i] < 0) {
            version[i] = (int)i;
        }
    }
    for (guint i = 0; i < n; i++) {
        if (version[i] != (int)i) {
            continue;
        }
        int count = 0;
        for (guint j = i; j < n; j++) {
            count += version[j] == (int)i;
        }
        if (count >= best_count) {
            best = (int)i;
            best_count = count;
        }
    }
    if (best < 0 || best_count < threshold) {
        return -EIO;
    }
    *winner = (guint)best;
    return 0;
}

static int coroutine_fn read_quorum(BlockNode *bs, int64_t offset,
                                    int64_t bytes, IOVec *qiov, size_t qoff)
{
    QuorumState *s = bs->opaque;
    guint n = s->children->len;
    size_t align = 1;
    int ret;

    for (guint i = 0; i < n; i++) {
        BlockNode *c = ((BlockChild *)s->children->pdata[i])->bs;
        align = MAX(align, c->bl.opt_mem_alignment);
    }
    FanOut f = {
        .bs = bs, .op = OP_READ, .offset = offset, .bytes = bytes,
        .bufs = g_new0(uint8_t *, n), .ret = g_new0(int, n),
    };
    for (guint i = 0; i < n; i++) {
        f.bufs[i] = aligned_alloc_buf(align, (size_t)bytes);
    }
    fan_out(&f, NULL);

    if (success_count(f.ret, n) < s->threshold) {
        ret = vote_error(f.ret, n);
        goto out;
    }
    if (s->blkverify) {
        /* Both children read (threshold 2): they must be identical. */
        blkverify_compare(offset, bytes, f.bufs[0], f.bufs[1]);
    }
    int *version = g_new(int, n);
    guint winner = 0;
    ret = vote_content(&f, s->threshold, &winner, version);
    if (ret == 0) {
        iov_from_buf(qiov->iov, qiov->niov, qoff, f.bufs[winner],
                     (size_t)bytes);
        bool *losers = g_new0(bool, n);
        bool any = false;
        for (guint i = 0; i < n; i++) {
            losers[i] = version[i] >= 0 && version[i] != (int)winner;
            any |= losers[i];
        }
        if (any && s->rewrite_corrupted) {
            /* Best effort: a failed repair leaves the child as it was. */
            FanOut w = {
                .bs = bs, .op = OP_WRITE, .offset = offset, .bytes = bytes,
                .bufs = &f.bufs[winner], .ret = g_new0(int, n),
            };
            fan_out(&w, losers);
            g_free(w.ret);
        }
        g_free(losers);
    }
    g_free(version);
out:
    for (guint i = 0; i < n; i++) {
        aligned_free(f.bufs[i]);
    }
    g_free(f.bufs);
    g_free(f.ret);
    return ret;
}

/* The first child that reads without error answers. */
static int coroutine_fn read_fifo(BlockNode *bs, int64_t offset,
                                  int64_t bytes, IOVec *qiov, size_t qoff)
{
    QuorumState *s = bs->opaque;
    int ret = -EIO;

    for (guint i = 0; i < s->children->len; i++) {
        ret = child_co_preadv(s->children->pdata[i], offset, bytes, qiov,
                              qoff, 0);
        if (ret >= 0) {
            break;
        }
    }
    return ret;
}

static int coroutine_fn quorum_co_preadv(BlockNode *bs, int64_t offset,
                                         int64_t bytes, IOVec *qiov,
                                         size_t qoff, int flags)
{
    QuorumState *s = bs->opaque;

    if (s->read_pattern == READ_PATTERN_FIFO) {
        return read_fifo(bs, offset, bytes, qiov, qoff);
    }
    return read_quorum(bs, offset, bytes, qiov, qoff);
}

/* ---- Writes ---- */

static int coroutine_fn quorum_write(BlockNode *bs, QuorumOp op,
                                     int64_t offset, int64_t bytes,
                                     IOVec *qiov, size_t qoff, int flags)
{
    QuorumState *s = bs->opaque;
    guint n = s->children->len;
    FanOut f = {
        .bs = bs, .op = op, .offset = offset, .bytes = bytes,
        .flags = flags, .qiov = qiov, .qiov_offset = qoff,
        .ret = g_new0(int, n),
    };
    int ret = 0;

    fan_out(&f, NULL);
    if (success_count(f.ret, n) < s->threshold) {
        ret = vote_error(f.ret, n);
    }
    g_free(f.ret);
    return ret;
}

static int coroutine_fn quorum_co_pwritev(BlockNode *bs, int64_t offset,
                                          int64_t bytes, IOVec *qiov,
                                          size_t qoff, int flags)
{
    return quorum_write(bs, OP_WRITE, offset, bytes, qiov, qoff, flags);
}

static int coroutine_fn quorum_co_pwrite_zeroes(BlockNode *bs, int64_t offset,
                                                int64_t bytes, int flags)
{
    return quorum_write(bs, OP_ZERO, offset, bytes, NULL, 0, flags);
}

/* Every child, one after the other; the same vote as for writes. */
static int coroutine_fn quorum_co_flush(BlockNode *bs)
{
    QuorumState *s = bs->opaque;
    guint n = s->children->len;
    int *ret = g_new0(int, n);
    int result = 0;

    for (guint i = 0; i < n; i++) {
        ret[i] = node_co_flush(((BlockChild *)s->children->pdata[i])->bs);
    }
    if (success_count(ret, n) < s->threshold) {
        result = vote_error(ret, n);
    }
    g_free(ret);
    return result;
}

/*
 * Children may describe the same data differently, so only "zero" (every
 * child says so, for the shortest extent any of them gives) and "data"
 * (for the longest) are reported.
 */
static int coroutine_fn quorum_co_block_status(BlockNode *bs, bool want_zero,
                                               int64_t offset, int64_t bytes,
                                               int64_t *pnum, int64_t *map,
                                               BlockNode **file)
{
    QuorumState *s = bs->opaque;
    int64_t pnum_zero = bytes, pnum_data = 0;

    for (guint i = 0; i < s->children->len; i++) {
        BlockNode *c = ((BlockChild *)s->children->pdata[i])->bs;
        int64_t n = 0, m = 0;
        BlockNode *f = NULL;
        int ret = node_co_block_status_above(c, NULL, false, want_zero,
                                             offset, bytes, &n, &m, &f, NULL);
        if (ret < 0) {
            pnum_data = bytes;
            break;
        }
        if (ret & BLOCK_ZERO) {
            pnum_zero = MIN(pnum_zero, n);
        } else {
            pnum_data = MAX(pnum_data, n);
        }
    }
    if (pnum_data) {
        *pnum = pnum_data;
        return BLOCK_DATA;
    }
    *pnum = pnum_zero;
    return BLOCK_ZERO;
}

/*
 * A mirror of the quorum shows the quorum's data, so it may take the place
 * of one of its children: the quorum's data stays what it was.  Only a
 * direct child, and only one the quorum alone uses (any other parent could
 * see its data change); nothing further down, where the child's own
 * users might care.
 */
static bool quorum_recurse_can_replace(BlockNode *bs, BlockNode *to_replace)
{
    QuorumState *s = bs->opaque;

    for (guint i = 0; i < s->children->len; i++) {
        BlockChild *c = s->children->pdata[i];

        if (child_node(c) == to_replace) {
            return node_next_parent(to_replace, NULL) == c &&
                   node_next_parent(to_replace, c) == NULL;
        }
    }
    return false;
}

const BlockDriver bdrv_quorum = {
    .format_name = "quorum",
    .instance_size = sizeof(QuorumState),
    .open = quorum_open,
    .close = quorum_close,
    .reopen_prepare = quorum_reopen_prepare,
    .refresh_limits = quorum_refresh_limits,
    .child_perm = quorum_child_perm,
    .getlength = quorum_getlength,
    .co_preadv = quorum_co_preadv,
    .co_pwritev = quorum_co_pwritev,
    .co_pwrite_zeroes = quorum_co_pwrite_zeroes,
    .co_flush = quorum_co_flush,
    .co_block_status = quorum_co_block_status,
    .recurse_can_replace = quorum_recurse_can_replace,
};
