/*
 * The qcow2 format driver: opening, the data path and image information.
 * See qcow2.h for how the files of block/qcow2/ divide the work.
 */
#include <errno.h>
#include <inttypes.h>
#include <limits.h>
#include <string.h>

#include "strata/loop.h"
#include "strata/units.h"

#include "qcow2.h"
#include "qcow2-bitmap.h"
#include "qcow2-compress.h"
#include "qcow2-create.h"

#define DEFAULT_L2_CACHE_MAX (32ull * 1024 * 1024)
#define MIN_L2_CACHE_TABLES 2
#define DEFAULT_REFCOUNT_CACHE_TABLES 4

static int qcow2_probe(const uint8_t *buf, int buf_size, const char *filename)
{
    (void)filename;
    if (buf_size >= 8 && be32toh(*(const uint32_t *)buf) == QCOW2_MAGIC &&
        be32toh(*(const uint32_t *)(buf + 4)) >= 2) {
        return 100;
    }
    return 0;
}

/* ---- Options ---- */

/* The runtime options as given, checked for their type only. */
typedef struct {
    bool has_combined, has_l2, has_rc, has_entry;
    uint64_t combined, l2, rc, entry;
    uint64_t clean_interval;
    bool lazy;
    char *overlap, *overlap_template;
    int overlap_bool[QCOW2_OL_COUNT];   /* -1: not given */
} RuntimeOpts;

/*
 * Take every runtime option, refusing values of the wrong type, before any
 * of them is interpreted (QEMU absorbs its option list first too).
 */
static bool take_runtime_options(Qcow2State *s, json_t *options,
                                 RuntimeOpts *o, GError **errp)
{
    o->has_combined = json_object_get(options, "cache-size") != NULL;
    o->has_l2 = json_object_get(options, "l2-cache-size") != NULL;
    o->has_rc = json_object_get(options, "refcount-cache-size") != NULL;
    o->has_entry = json_object_get(options, "l2-cache-entry-size") != NULL;
    o->combined = 0;
    o->l2 = DEFAULT_L2_CACHE_MAX;
    o->rc = 0;
    o->entry = s->cluster_size;
    o->clean_interval = 600;
    o->lazy = s->compatible_features & QCOW2_COMPAT_LAZY_REFCOUNTS;

    if (!opts_take_size(options, "cache-size", &o->combined, errp) ||
        !opts_take_size(options, "l2-cache-size", &o->l2, errp) ||
        !opts_take_size(options, "refcount-cache-size", &o->rc, errp) ||
        !opts_take_size(options, "l2-cache-entry-size", &o->entry, errp) ||
        !opts_take_bool(options, "lazy-refcounts", &o->lazy, errp) ||
        !opts_take_bool(options, "pass-discard-request",
                        &s->discard_passthrough_request, errp) ||
        !opts_take_bool(options, "pass-discard-snapshot",
                        &s->discard_passthrough_snapshot, errp) ||
        !opts_take_bool(options, "pass-discard-other",
                        &s->discard_passthrough_other, errp) ||
        !opts_take_number(options, "cache-clean-interval", &o->clean_interval,
                          errp)) {
        return false;
    }

    /*
     * "overlap-check" is a mode, "overlap-check.*" a template and switches;
     * either may come nested: flatten them so that messages name the full
     * key, and leave unknown switches for the caller's leftover check.
     */
    json_t *ov = json_object_get(options, "overlap-check");
    if (ov && !json_is_object(ov) &&
        !opts_take_str(options, "overlap-check", &o->overlap, errp)) {
        return false;
    }
    json_t *sub = opts_take_subtree(options, "overlap-check");
    if (sub) {
        json_t *flat = opts_flatten(sub);
        const char *k;
        json_t *v;
        json_object_foreach(flat, k, v) {
            char *full = g_strconcat("overlap-check.", k, NULL);
            json_object_set(options, full, v);
            g_free(full);
        }
        json_decref(flat);
        json_decref(sub);
    }
    if (!opts_take_str(options, "overlap-check.template",
                       &o->overlap_template, errp)) {
        return false;
    }
    for (int i = 0; i < QCOW2_OL_COUNT; i++) {
        char *key = g_strconcat("overlap-check.", qcow2_overlap_option[i],
                                NULL);
        bool b = false;
        bool given = json_object_get(options, key) != NULL;
        bool ok = opts_take_bool(options, key, &b, errp);
        g_free(key);
        if (!ok) {
            return false;
        }
        o->overlap_bool[i] = given ? b : -1;
    }
    return true;
}

/*
 * Cache sizes as QEMU 7.2 chooses them: enough L2 cache to map the whole
 * disk, up to 32 MiB (never more than the disk needs); cache-size splits
 * between the two caches; a cache that does not map the whole disk
 * defaults to 4 KiB entries.  The table counts QEMU would allocate must fit
 * an int.
 */
static bool choose_cache_sizes(Qcow2State *s, RuntimeOpts *o, GError **errp)
{
    uint64_t max_l2_entries = DIV_ROUND_UP(s->size, s->cluster_size);
    uint64_t max_l2 = ROUND_UP(max_l2_entries * s->l2_entry_size,
                               s->cluster_size);
    uint64_t min_rc = DEFAULT_REFCOUNT_CACHE_TABLES * s->cluster_size;
    uint64_t l2 = MIN(max_l2, o->l2);
    uint64_t rc = o->rc;
    uint64_t entry = o->entry;

    if (o->has_combined) {
        if (o->has_l2 && o->has_rc) {
            error_setg(errp, "cache-size, l2-cache-size and "
                       "refcount-cache-size may not be set at the same time");
            return false;
        } else if (o->has_l2 && o->l2 > o->combined) {
            error_setg(errp, "l2-cache-size may not exceed cache-size");
            return false;
        } else if (rc > o->combined) {
            error_setg(errp, "refcount-cache-size may not exceed cache-size");
            return false;
        }
        if (o->has_l2) {
            rc = o->combined - l2;
        } else if (o->has_rc) {
            l2 = o->combined - rc;
        } else if (o->combined >= max_l2 + min_rc) {
            l2 = max_l2;
            rc = o->combined - l2;
        } else {
            rc = MIN(o->combined, min_rc);
            l2 = o->combined - rc;
        }
    }
    if (l2 < max_l2 && !o->has_entry) {
        entry = MIN(s->cluster_size, 4096);
    }
    if (entry < 512 || entry > s->cluster_size || (entry & (entry - 1))) {
        error_setg(errp, "L2 cache entry size must be a power of two between "
                   "512 and the cluster size (%" PRIu64 ")", s->cluster_size);
        return false;
    }
    s->l2_slice_size = entry / s->l2_entry_size;
    uint64_t l2_tables = MAX(l2 / entry, MIN_L2_CACHE_TABLES);
    if (l2_tables > INT_MAX) {
        error_setg(errp, "L2 cache size too big");
        return false;
    }
    uint64_t rc_tables = MAX(rc / s->cluster_size,
                             DEFAULT_REFCOUNT_CACHE_TABLES);
    if (rc_tables > INT_MAX) {
        error_setg(errp, "Refcount cache size too big");
        return false;
    }
    /* Our tables are whole clusters: keep the memory QEMU would use. */
    s->l2_cache_bytes = MAX(l2_tables * entry,
                            MIN_L2_CACHE_TABLES * s->cluster_size);
    s->refcount_cache_bytes = rc_tables * s->cluster_size;
    return true;
}

static const char *const overlap_modes[] = { "none", "constant", "cached",
                                             "all", NULL };

/* The runtime options, with QEMU's checks in QEMU's order. */
static bool read_runtime_options(Qcow2State *s, json_t *options, int flags,
                                 GError **errp)
{
    RuntimeOpts o = { 0 };
    bool ok = false;

    s->discard_passthrough_request = true;
    s->discard_passthrough_snapshot = true;
    s->discard_passthrough_other = false;
    (void)flags;

    if (!take_runtime_options(s, options, &o, errp) ||
        !choose_cache_sizes(s, &o, errp)) {
        goto out;
    }
    if (o.clean_interval > UINT_MAX) {
        error_setg(errp, "Cache clean interval too big");
        goto out;
    }
    s->cache_clean_interval = (unsigned)o.clean_interval;
    if (o.lazy && s->version < 3) {
        error_setg(errp, "Lazy refcounts require a qcow2 image with at least "
                   "qemu 1.1 compatibility level");
        goto out;
    }
    s->lazy_refcounts = o.lazy;

    if (o.overlap && o.overlap_template &&
        strcmp(o.overlap, o.overlap_template)) {
        error_setg(errp, "Conflicting values for qcow2 options "
                   "'overlap-check' ('%s') and 'overlap-check.template' "
                   "('%s')", o.overlap, o.overlap_template);
        goto out;
    }
    const char *mode = o.overlap ? o.overlap
                                 : o.overlap_template ? o.overlap_template
                                                      : "cached";
    static const int templates[] = {
        0, QCOW2_OL_CONSTANT, QCOW2_OL_CACHED, QCOW2_OL_ALL,
    };
    int overlap = -1;
    for (int i = 0; overlap_modes[i]; i++) {
        if (!strcmp(mode, overlap_modes[i])) {
            overlap = templates[i];
        }
    }
    if (overlap < 0) {
        error_setg(errp, "Unsupported value '%s' for qcow2 option "
                   "'overlap-check'. Allowed are any of the following: "
                   "none, constant, cached, all", mode);
        goto out;
    }
    for (int i = 0; i < QCOW2_OL_COUNT; i++) {
        if (o.overlap_bool[i] >= 0) {
            overlap = o.overlap_bool[i] ? overlap | (1 << i)
                                        : overlap & ~(1 << i);
        }
    }
    s->overlap_check = overlap;
    ok = true;
out:
    g_free(o.overlap);
    g_free(o.overlap_template);
    return ok;
}

/*
 * Options a reopen keeps from before, as QEMU's qcow2_join_options: a new
 * overlap mode or template replaces every old overlap option; a new
 * cache-size replaces the old split, and an old cache-size is dropped
 * whenever no new one is given.
 */
static void qcow2_reopen_join_options(json_t *new_opts, json_t *old_opts)
{
    const char *k;
    json_t *v;
    void *tmp;
    bool new_overlap = json_object_get(new_opts, "overlap-check") ||
                       json_object_get(new_opts, "overlap-check.template");
    bool new_total = json_object_get(new_opts, "cache-size") != NULL;

    json_object_foreach_safe(old_opts, tmp, k, v) {
        if ((new_overlap && (!strcmp(k, "overlap-check") ||
                             g_str_has_prefix(k, "overlap-check."))) ||
            (new_total && (!strcmp(k, "l2-cache-size") ||
                           !strcmp(k, "refcount-cache-size"))) ||
            (!new_total && !strcmp(k, "cache-size"))) {
            json_object_del(old_opts, k);
        }
    }
}

/* ---- Open and close ---- */

static int coroutine_fn load_tables(BlockNode *bs, GError **errp)
{
    Qcow2State *s = bs->opaque;
    int ret;

    s->l1_alloc = MAX(s->l1_size, 1);
    s->l1_table = g_try_new0(uint64_t, s->l1_alloc);
    if (!s->l1_table) {
        error_setg(errp, "Could not allocate L1 table");
        return -ENOMEM;
    }
    if (s->l1_size) {
        ret = child_co_pread(bs->file, (int64_t)s->l1_table_offset,
                             (int64_t)s->l1_size * 8, s->l1_table, 0);
        if (ret < 0) {
            error_setg_errno(errp, -ret, "Could not read L1 table");
            return ret;
        }
        for (uint32_t i = 0; i < s->l1_size; i++) {
            s->l1_table[i] = be64toh(s->l1_table[i]);
        }
    }

    s->refcount_table = g_try_new0(uint64_t, s->refcount_table_size);
    if (!s->refcount_table) {
        error_setg(errp, "Could not initialize refcount handling");
        return -ENOMEM;
    }
    child_debug_event(bs->file, BLKDBG_REFTABLE_LOAD);
    ret = child_co_pread(bs->file, (int64_t)s->refcount_table_offset,
                         (int64_t)s->refcount_table_size * 8,
                         s->refcount_table, 0);
    if (ret < 0) {
        error_setg_errno(errp, -ret, "Could not initialize refcount handling");
        return ret;
    }
    for (uint32_t i = 0; i < s->refcount_table_size; i++) {
        s->refcount_table[i] = be64toh(s->refcount_table[i]);
        if (s->refcount_table[i]) {
            s->max_refcount_index = i;
        }
    }

    s->l2_cache = qcow2_cache_new(bs, true,
                                  (int)(s->l2_cache_bytes / s->cluster_size),
                                  (unsigned)s->cluster_size);
    s->refcount_cache = qcow2_cache_new(
        bs, false, (int)(s->refcount_cache_bytes / s->cluster_size),
        (unsigned)s->cluster_size);
    if (!s->l2_cache || !s->refcount_cache) {
        error_setg(errp, "Could not allocate metadata caches");
        return -ENOMEM;
    }
    qcow2_cache_set_dependency(s->l2_cache, s->refcount_cache);
    return 0;
}

/* The external data file, from the option or the name the image records. */
static int open_data_file(BlockNode *bs, json_t *options, int flags,
                          GError **errp)
{
    Qcow2State *s = bs->opaque;
    bool given = json_object_get(options, "data-file") != NULL;
    char *prefix = NULL;

    if (!given) {
        const char *k;
        json_t *v;
        json_object_foreach(options, k, v) {
            if (g_str_has_prefix(k, "data-file.")) {
                given = true;
            }
        }
    }
    if (flags & NODE_O_NO_IO) {
        /*
         * As QEMU (since its fix for CVE-2024-4467): an image opened only
         * to be described does not open its data file, so that describing
         * an untrusted image touches no file it names.
         */
        json_object_del(options, "data-file");
        json_decref(opts_take_subtree(options, "data-file"));
        s->data_file = qcow2_has_data_file(s) ? NULL : bs->file;
        return 0;
    }
    if (!qcow2_has_data_file(s)) {
        if (given) {
            error_setg(errp, "'data-file' can only be set for images with an "
                       "external data file");
            return -EINVAL;
        }
        s->data_file = bs->file;
        return 0;
    }
    if (!given) {
        if (!s->data_file_name) {
            error_setg(errp, "'data-file' is required for this image");
            return -EINVAL;
        }
        /*
         * QEMU 7.2 opens the recorded name as it is: a relative name is
         * relative to the working directory, not to the image.
         */
        json_t *sub = json_object();
        json_object_set_new(sub, "driver", json_string("file"));
        json_object_set_new(sub, "filename", json_string(s->data_file_name));
        json_object_set_new(options, "data-file", sub);
    }
    s->data_file = node_open_child(bs, options, "data-file",
                                   CHILD_ROLE_DATA, false, errp);
    g_free(prefix);
    return s->data_file ? 0 : -EINVAL;
}

/*
 * cache-clean-interval.  QEMU 7.2 arms this timer on its virtual clock,
 * which only runs while a guest does, so in qemu-img, qemu-io and
 * qemu-storage-daemon the option is accepted and never fires; strata runs
 * it on the loop's real-time clock, as the option's documentation promises.
 * It needs no lock: it only drops tables nobody holds, and never yields.
 * It runs in the node's loop and counts as a request there, so that a
 * drain from the main thread (which may then use the caches itself) waits
 * for it, and it skips a round while the node is drained.
 */
static gboolean cache_clean_cb(gpointer opaque)
{
    BlockNode *bs = opaque;
    Qcow2State *s = bs->opaque;

    node_inc_in_flight(bs);
    if (!node_is_quiesced(bs)) {
        qcow2_cache_clean_unused(s->l2_cache);
        qcow2_cache_clean_unused(s->refcount_cache);
    }
    node_dec_in_flight(bs);
    return G_SOURCE_CONTINUE;
}

static void cache_clean_timer_del(Qcow2State *s)
{
    if (s->cache_clean_timer) {
        g_source_destroy(s->cache_clean_timer);
        g_source_unref(s->cache_clean_timer);
        s->cache_clean_timer = NULL;
    }
}

static void coroutine_fn cache_clean_timer_del_co(void *opaque)
{
    cache_clean_timer_del(opaque);
}

/*
 * Destroy the timer in the thread that dispatches it, before its node is
 * freed or moved: a dispatch there that has begun but not yet counted
 * itself in flight is invisible to a drain, and g_source_destroy() from
 * another thread does not wait for it.  In the owning thread no dispatch
 * can be under way (the callback never yields) and none starts after it.
 */
static void cache_clean_timer_del_at_home(Qcow2State *s)
{
    if (s->cache_clean_timer) {
        co_call_in(s->cache_clean_loop, cache_clean_timer_del_co, s);
    }
}

static void cache_clean_timer_init(BlockNode *bs)
{
    Qcow2State *s = bs->opaque;
    cache_clean_timer_del_at_home(s);
    if (s->cache_clean_interval == 0 || !s->l2_cache) {
        return;
    }
    /*
     * g_timeout_source_new_seconds() aligns its ticks to a per-process
     * second boundary, so the first one can come almost a second late:
     * with a one-second interval that is a whole interval.  Milliseconds
     * where they fit; intervals past ~49 days do not care.
     */
    if (s->cache_clean_interval <= G_MAXUINT / 1000) {
        s->cache_clean_timer = g_timeout_source_new(s->cache_clean_interval * 1000u);
    } else {
        s->cache_clean_timer = g_timeout_source_new_seconds(s->cache_clean_interval);
    }
    g_source_set_callback(s->cache_clean_timer, cache_clean_cb, bs, NULL);
    s->cache_clean_loop = node_loop(bs);
    g_source_attach(s->cache_clean_timer, loop_context(s->cache_clean_loop));
}

static void qcow2_free_state(Qcow2State *s)
{
    cache_clean_timer_del(s);
    qcow2_cache_free(s->l2_cache);
    qcow2_cache_free(s->refcount_cache);
    s->l2_cache = s->refcount_cache = NULL;
    g_free(s->l1_table);
    g_free(s->refcount_table);
    qcow2_discard_queue_free(s);
    g_free(s->backing_file);
    g_free(s->backing_format);
    g_free(s->data_file_name);
    g_free(s->bitmaps_damaged);
    g_free(s->feature_table);
    qcow2_free_snapshots(s);
    qcow2_crypto_close(s);
    if (s->unknown_exts) {
        g_ptr_array_unref(s->unknown_exts);
    }
    memset(s, 0, sizeof(*s));
}

typedef struct OpenCo {
    BlockNode *bs;
    json_t *options;
    int flags;
    GError *err;
    int ret;
} OpenCo;

static void coroutine_fn open_co(void *opaque)
{
    OpenCo *o = opaque;
    BlockNode *bs = o->bs;
    Qcow2State *s = bs->opaque;
    int ret;

    ret = qcow2_read_header(bs, o->options, o->flags, &o->err);
    if (ret < 0) {
        goto out;
    }
    if (!read_runtime_options(s, o->options, o->flags, &o->err)) {
        ret = -EINVAL;
        goto out;
    }
    ret = qcow2_crypto_open(bs, o->options, o->flags, &o->err);
    if (ret < 0) {
        goto out;
    }
    ret = load_tables(bs, &o->err);
    if (ret < 0) {
        goto out;
    }
    if (o->flags & NODE_O_CHECK) {
        /* Left to the check, which copes with a damaged table. */
        s->nb_snapshots = 0;
        s->snapshots_offset = 0;
    } else {
        ret = qcow2_read_snapshot_table(bs, &o->err);
        if (ret < 0) {
            goto out;
        }
    }
    /*
     * Autoclear bits tell readers that a feature's data is still valid: a
     * writer drops the ones it does not know, and a bitmaps extension
     * whose bit another program dropped goes with the header rewrite
     * (its clusters leak), as QEMU does.  The bitmaps bit is ours: the
     * bitmaps are loaded and, when writable, marked in use.
     */
    bool update = s->bitmaps_ext_stale ||
                  (s->autoclear_features & ~(uint64_t)QCOW2_AUTOCLEAR_MASK);
    bool header_updated = false;
    update = update && (o->flags & NODE_O_RDWR);
    if (update) {
        s->autoclear_features &= QCOW2_AUTOCLEAR_MASK;
    }
    ret = qcow2_load_dirty_bitmaps(bs, o->flags, &header_updated, &o->err);
    if (ret < 0) {
        goto out;
    }
    if (update && !header_updated) {
        ret = qcow2_update_header(bs);
        if (ret < 0) {
            error_setg_errno(&o->err, -ret, "Could not update qcow2 header");
            goto out;
        }
    }
    ret = open_data_file(bs, o->options, o->flags, &o->err);
    if (ret < 0) {
        goto out;
    }
    if (s->backing_file) {
        g_strlcpy(bs->backing_file, s->backing_file, sizeof(bs->backing_file));
    }
    if (s->backing_format) {
        g_strlcpy(bs->backing_format, s->backing_format,
                  sizeof(bs->backing_format));
    }
    if ((o->flags & NODE_O_RDWR) && !(o->flags & NODE_O_CHECK) &&
        (s->incompatible_features & QCOW2_INCOMPAT_DIRTY)) {
        /*
         * Refcounts may be stale (lazy refcounts and a crash): rebuild
         * them from the metadata before anything is allocated, then mark
         * the image clean, as QEMU does.
         */
        BlockCheckResult res;
        co_mutex_lock(&s->lock);
        ret = qcow2_co_check_locked(bs, &res,
                                    CHECK_FIX_LEAKS | CHECK_FIX_ERRORS,
                                    NULL, NULL);
        co_mutex_unlock(&s->lock);
        if (ret >= 0) {
            ret = qcow2_clear_incompat_bit(bs, QCOW2_INCOMPAT_DIRTY);
        }
        if (ret < 0) {
            error_setg_errno(&o->err, -ret, "Could not repair dirty image");
            goto out;
        }
    }
    ret = 0;
out:
    o->ret = ret;
}

static int qcow2_open(BlockNode *bs, json_t *options, int flags, GError **errp)
{
    Qcow2State *s = bs->opaque;
    OpenCo o = { .bs = bs, .options = options, .flags = flags };

    s->unknown_exts = g_ptr_array_new_with_free_func(g_free);
    co_mutex_init(&s->lock);

    bs->file = node_open_child(bs, options, "file",
                               CHILD_ROLE_IMAGE | CHILD_ROLE_PRIMARY, false,
                               errp);
    if (!bs->file) {
        qcow2_free_state(s);
        return -EINVAL;
    }
    if (in_coroutine()) {
        open_co(&o);
    } else {
        co_run_sync(open_co, &o);
    }
    if (o.ret < 0) {
        g_propagate_error(errp, o.err);
        qcow2_free_state(s);
        return o.ret;
    }
    bs->supported_zero_flags = REQ_MAY_UNMAP | REQ_NO_FALLBACK;
    cache_clean_timer_init(bs);
    return 0;
}

typedef struct FlushCo {
    BlockNode *bs;
    int ret;
} FlushCo;

static void coroutine_fn close_co(void *opaque)
{
    FlushCo *f = opaque;
    BlockNode *bs = f->bs;
    Qcow2State *s = bs->opaque;

    const char *prog = g_get_prgname() ? g_get_prgname() : "strata";
    GError *err = NULL;

    /*
     * Changed persistent bitmaps go back to the image.  Tried on a
     * read-only node too, as QEMU does: a persistent bitmap added there is
     * lost, and said so.  Not when they could not be loaded.
     */
    if (!s->corrupt && !s->bitmaps_damaged &&
        !qcow2_store_persistent_dirty_bitmaps(bs, true, &err)) {
        warn_print("%s: Lost persistent bitmaps during inactivation of node "
                   "'%s': %s", prog, node_get_name(bs), err->message);
        g_error_free(err);
    }
    /* A corrupt image gets no more metadata writes. */
    if (!bs->read_only && !s->corrupt) {
        /* Both caches are tried and each failure named, as QEMU does. */
        int l2 = qcow2_cache_flush(s->l2_cache);
        int rc = qcow2_cache_flush(s->refcount_cache);

        if (l2 < 0) {
            warn_print("%s: Failed to flush the L2 table cache: %s", prog,
                       g_strerror(-l2));
        }
        if (rc < 0) {
            warn_print("%s: Failed to flush the refcount block cache: %s",
                       prog, g_strerror(-rc));
        }
        f->ret = l2 < 0 ? l2 : rc;
        if (f->ret >= 0 && s->dirty_set_by_us) {
            f->ret = qcow2_mark_clean(bs);
        }
    }
}

static void qcow2_close(BlockNode *bs)
{
    Qcow2State *s = bs->opaque;
    FlushCo f = { .bs = bs };

    cache_clean_timer_del_at_home(s);

    if (s->l2_cache) {
        if (in_coroutine()) {
            close_co(&f);
        } else {
            co_run_sync(close_co, &f);
        }
    }
    qcow2_free_state(s);
}

/* ---- Reopen ---- */

typedef struct ReopenCo {
    BlockNode *bs;
    int ret;
    GError *err;
} ReopenCo;

static void coroutine_fn reopen_flush_co(void *opaque)
{
    ReopenCo *r = opaque;
    Qcow2State *s = r->bs->opaque;

    co_mutex_lock(&s->lock);
    /* Going read-only: a dirty bit we set goes too (QEMU inactivates). */
    r->ret = s->dirty_set_by_us ? qcow2_mark_clean(r->bs)
                                : qcow2_cache_flush(s->l2_cache);
    if (r->ret >= 0) {
        r->ret = qcow2_cache_flush(s->refcount_cache);
    }
    co_mutex_unlock(&s->lock);
}

/* Going read-only: the bitmaps are stored first and become read-only. */
static void coroutine_fn reopen_bitmaps_ro_co(void *opaque)
{
    ReopenCo *r = opaque;
    r->ret = qcow2_reopen_bitmaps_ro(r->bs, &r->err);
}

/* Going read-write: the bitmaps are marked in use and can record again. */
static void coroutine_fn reopen_bitmaps_rw_co(void *opaque)
{
    ReopenCo *r = opaque;
    r->ret = qcow2_reopen_bitmaps_rw(r->bs, &r->err);
}

/* Lazy refcounts turned off: the image must not stay dirty (as QEMU). */
static void coroutine_fn reopen_clean_co(void *opaque)
{
    ReopenCo *r = opaque;
    Qcow2State *s = r->bs->opaque;

    co_mutex_lock(&s->lock);
    r->ret = qcow2_mark_clean(r->bs);
    co_mutex_unlock(&s->lock);
}

/*
 * The runtime options may change (the same ones and checks as at open);
 * going read-only first writes every dirty table, since nothing may be
 * written afterwards.
 */
static int qcow2_reopen_prepare(ReopenState *rs, GError **errp)
{
    Qcow2State *s = rs->bs->opaque;
    Qcow2State *n = g_new(Qcow2State, 1);

    *n = *s;
    n->compatible_features = s->compatible_features;
    if (!read_runtime_options(n, rs->options, rs->flags, errp) ||
        qcow2_crypto_reopen_options(rs->bs, rs->options, errp) < 0) {
        g_free(n);
        return -EINVAL;
    }
    /* New caches are made here, so that a size that cannot be had fails
     * the reopen as in QEMU; commit swaps them in. */
    n->l2_cache = n->refcount_cache = NULL;
    if (n->l2_cache_bytes != s->l2_cache_bytes ||
        n->refcount_cache_bytes != s->refcount_cache_bytes) {
        n->l2_cache = qcow2_cache_new(rs->bs, true,
                                      (int)(n->l2_cache_bytes /
                                            s->cluster_size),
                                      (unsigned)s->cluster_size);
        n->refcount_cache = qcow2_cache_new(rs->bs, false,
                                            (int)(n->refcount_cache_bytes /
                                                  s->cluster_size),
                                            (unsigned)s->cluster_size);
        if (!n->l2_cache || !n->refcount_cache) {
            qcow2_cache_free(n->l2_cache);
            qcow2_cache_free(n->refcount_cache);
            g_free(n);
            error_setg(errp, "Could not allocate metadata caches");
            return -ENOMEM;
        }
    }
    if (!rs->read_only && rs->bs->read_only && s->bitmaps_damaged) {
        /* The bitmaps on disk would miss the writes and still look valid. */
        error_setg(errp, "Cannot make the image writable: its bitmaps "
                   "could not be loaded: %s", s->bitmaps_damaged);
        qcow2_cache_free(n->l2_cache);
        qcow2_cache_free(n->refcount_cache);
        g_free(n);
        return -EINVAL;
    }
    if (rs->read_only && !rs->bs->read_only && !s->corrupt) {
        ReopenCo r = { .bs = rs->bs };
        if (in_coroutine()) {
            reopen_bitmaps_ro_co(&r);
        } else {
            co_run_sync(reopen_bitmaps_ro_co, &r);
        }
        if (r.ret < 0) {
            g_propagate_error(errp, r.err);
            qcow2_cache_free(n->l2_cache);
            qcow2_cache_free(n->refcount_cache);
            g_free(n);
            return r.ret;
        }
        if (in_coroutine()) {
            reopen_flush_co(&r);
        } else {
            co_run_sync(reopen_flush_co, &r);
        }
        if (r.ret < 0) {
            error_setg_errno(errp, -r.ret, "Could not flush the metadata "
                             "caches");
            qcow2_cache_free(n->l2_cache);
            qcow2_cache_free(n->refcount_cache);
            g_free(n);
            return r.ret;
        }
    }
    if (!n->lazy_refcounts && s->dirty_set_by_us && !s->corrupt) {
        ReopenCo r = { .bs = rs->bs };
        if (in_coroutine()) {
            reopen_clean_co(&r);
        } else {
            co_run_sync(reopen_clean_co, &r);
        }
        if (r.ret < 0) {
            error_setg_errno(errp, -r.ret, "Could not mark the image clean");
            g_free(n);
            return r.ret;
        }
    }
    rs->opaque = n;
    return 0;
}

static void qcow2_reopen_commit(ReopenState *rs)
{
    Qcow2State *s = rs->bs->opaque;
    Qcow2State *n = rs->opaque;


    s->lazy_refcounts = n->lazy_refcounts;
    s->discard_passthrough_request = n->discard_passthrough_request;
    s->discard_passthrough_snapshot = n->discard_passthrough_snapshot;
    s->discard_passthrough_other = n->discard_passthrough_other;
    s->overlap_check = n->overlap_check;
    s->l2_slice_size = n->l2_slice_size;
    s->cache_clean_interval = n->cache_clean_interval;
    if (n->l2_cache) {
        /* New caches: the old ones were written at prepare or hold
         * nothing dirty unless the image stays writable. */
        ReopenCo r = { .bs = rs->bs };
        if (in_coroutine()) {
            reopen_flush_co(&r);
        } else {
            co_run_sync(reopen_flush_co, &r);
        }
        if (r.ret >= 0) {
            qcow2_cache_free(s->l2_cache);
            qcow2_cache_free(s->refcount_cache);
            s->l2_cache = n->l2_cache;
            s->refcount_cache = n->refcount_cache;
            qcow2_cache_set_dependency(s->l2_cache, s->refcount_cache);
            s->l2_cache_bytes = n->l2_cache_bytes;
            s->refcount_cache_bytes = n->refcount_cache_bytes;
        } else {
            /* Keep the caches that still hold what could not be written. */
            qcow2_cache_free(n->l2_cache);
            qcow2_cache_free(n->refcount_cache);
        }
    }
    /* The interval or the caches may have changed: start it again. */
    cache_clean_timer_init(rs->bs);
    g_free(n);
    rs->opaque = NULL;
}

/*
 * Writable again: the bitmaps are marked in use in the image and may
 * record.  Not fatal, as in QEMU: on failure they stay read-only and
 * writes fail until they are removed.
 */
static void qcow2_reopen_commit_post(ReopenState *rs)
{
    ReopenCo r = { .bs = rs->bs };

    if (rs->read_only) {
        return;
    }
    if (in_coroutine()) {
        reopen_bitmaps_rw_co(&r);
    } else {
        co_run_sync(reopen_bitmaps_rw_co, &r);
    }
    if (r.ret < 0) {
        warn_print("%s: %s: Failed to make dirty bitmaps writable: %s",
                   g_get_prgname() ? g_get_prgname() : "strata",
                   node_get_name(rs->bs), r.err->message);
        g_error_free(r.err);
    }
}

static void qcow2_reopen_abort(ReopenState *rs)
{
    Qcow2State *n = rs->opaque;
    if (n) {
        qcow2_cache_free(n->l2_cache);
        qcow2_cache_free(n->refcount_cache);
    }
    g_free(rs->opaque);
    rs->opaque = NULL;
}

static void qcow2_refresh_limits(BlockNode *bs)
{
    Qcow2State *s = bs->opaque;

    /* Encrypted data is read and written in whole sectors. */
    bs->bl.request_alignment = qcow2_crypto_sector_size(s);
    /* Unaligned zero writes come to us whole: see qcow2_co_pwrite_zeroes. */
    bs->bl.pdiscard_alignment = (uint32_t)s->cluster_size;
}

/* ---- Reads ---- */

static int coroutine_fn read_backing(BlockNode *bs, uint64_t offset,
                                     uint64_t bytes, IOVec *qiov, size_t qoff)
{
    int64_t blen;
    uint64_t n = 0;

    if (!bs->backing) {
        iov_memset(qiov->iov, qiov->niov, qoff, 0, bytes);
        return 0;
    }
    /* A shorter backing file reads as zeroes past its end. */
    blen = node_getlength(bs->backing->bs);
    if (blen < 0) {
        return (int)blen;
    }
    if ((int64_t)offset < blen) {
        n = MIN(bytes, (uint64_t)blen - offset);
        child_debug_event(bs->file, BLKDBG_READ_BACKING_AIO);
        int ret = child_co_preadv(bs->backing, (int64_t)offset, (int64_t)n,
                                  qiov, qoff, 0);
        if (ret < 0) {
            return ret;
        }
    }
    if (n < bytes) {
        iov_memset(qiov->iov, qiov->niov, qoff + n, 0, bytes - n);
    }
    return 0;
}

static int coroutine_fn read_compressed(BlockNode *bs, uint64_t offset,
                                        uint64_t bytes, uint64_t descriptor,
                                        IOVec *qiov, size_t qoff)
{
    Qcow2State *s = bs->opaque;
    uint64_t coffset = descriptor & s->cluster_offset_mask;
    uint64_t nb_sectors = ((descriptor >> s->csize_shift) & s->csize_mask) + 1;
    uint64_t csize = nb_sectors * QCOW2_COMPRESSED_SECTOR_SIZE -
                     (coffset & (QCOW2_COMPRESSED_SECTOR_SIZE - 1));
    uint8_t *in = g_try_malloc(csize);
    uint8_t *out = g_try_malloc(s->cluster_size);
    int ret;

    if (!in || !out) {
        ret = -ENOMEM;
        goto out;
    }
    child_debug_event(bs->file, BLKDBG_READ_COMPRESSED);
    ret = child_co_pread(bs->file, (int64_t)coffset, (int64_t)csize, in, 0);
    if (ret < 0) {
        goto out;
    }
    ret = qcow2_co_decompress(s->compression_type, out, s->cluster_size, in,
                              csize);
    if (ret < 0) {
        goto out;
    }
    iov_from_buf(qiov->iov, qiov->niov, qoff,
                 out + qcow2_offset_into_cluster(s, offset), bytes);
    ret = 0;
out:
    g_free(in);
    g_free(out);
    return ret;
}

/*
 * have_lock: the caller holds s->lock (an allocating write reading what it
 * must copy); otherwise the lock is taken for each lookup only, so data
 * reads run in parallel.
 */
static int coroutine_fn do_read(BlockNode *bs, int64_t offset, int64_t bytes,
                                IOVec *qiov, size_t qiov_offset,
                                bool have_lock)
{
    Qcow2State *s = bs->opaque;

    while (bytes > 0) {
        uint64_t n = (uint64_t)bytes, host;
        Qcow2SubclusterType type;
        int ret;

        if (!have_lock) {
            co_mutex_lock(&s->lock);
        }
        ret = qcow2_get_host_offset(bs, (uint64_t)offset, &n, &host, &type);
        if (!have_lock) {
            co_mutex_unlock(&s->lock);
        }
        if (ret < 0) {
            return ret;
        }

        switch (type) {
        case QCOW2_SC_UNALLOC_PLAIN:
        case QCOW2_SC_UNALLOC_ALLOC:
            ret = read_backing(bs, (uint64_t)offset, n, qiov, qiov_offset);
            break;
        case QCOW2_SC_ZERO_PLAIN:
        case QCOW2_SC_ZERO_ALLOC:
            iov_memset(qiov->iov, qiov->niov, qiov_offset, 0, n);
            break;
        case QCOW2_SC_COMPRESSED:
            ret = read_compressed(bs, (uint64_t)offset, n, host, qiov,
                                  qiov_offset);
            break;
        case QCOW2_SC_NORMAL:
            child_debug_event(bs->file, BLKDBG_READ_AIO);
            ret = qcow2_data_preadv(bs, host, (uint64_t)offset, n, qiov,
                                    qiov_offset);
            break;
        default:
            ret = -EIO;
        }
        if (ret < 0) {
            return ret;
        }
        offset += (int64_t)n;
        qiov_offset += n;
        bytes -= (int64_t)n;
    }
    return 0;
}

int coroutine_fn qcow2_co_read_buf(BlockNode *bs, uint64_t offset,
                                   uint64_t bytes, void *buf, bool have_lock)
{
    IOVec q;
    int ret;

    iovec_init_buf(&q, buf, bytes);
    ret = do_read(bs, (int64_t)offset, (int64_t)bytes, &q, 0, have_lock);
    iovec_destroy(&q);
    return ret;
}

static int coroutine_fn qcow2_co_preadv(BlockNode *bs, int64_t offset,
                                        int64_t bytes, IOVec *qiov,
                                        size_t qiov_offset, int flags)
{
    Qcow2State *s = bs->opaque;

    /* After a fatal corruption the node is unusable, as in QEMU. */
    if (s->corrupt) {
        return -ENOMEDIUM;
    }
    (void)flags;
    return do_read(bs, offset, bytes, qiov, qiov_offset, false);
}

/*
 * The source side of a copy offload (QEMU's qcow2_co_copy_range_from):
 * each run of the range goes on to where its data is, our data file for
 * data clusters, the backing file for unallocated ones; the protocol node
 * there turns to the target side.  What has no file data to copy (zero
 * clusters, compressed or encrypted data, the part of a shorter backing
 * file's range past its end) answers -ENOTSUP, and the caller reads and
 * writes the whole range instead.
 */
static int coroutine_fn qcow2_co_copy_range_from(BlockNode *bs,
                                                 BlockChild *src,
                                                 int64_t src_off,
                                                 BlockChild *dst,
                                                 int64_t dst_off,
                                                 int64_t bytes,
                                                 int read_flags,
                                                 int write_flags)
{
    Qcow2State *s = bs->opaque;
    (void)src;

    if (s->corrupt) {
        return -ENOMEDIUM;
    }
    if (s->crypto) {
        return -ENOTSUP;
    }
    while (bytes > 0) {
        uint64_t n = (uint64_t)bytes, host;
        Qcow2SubclusterType type;
        int ret;

        co_mutex_lock(&s->lock);
        ret = qcow2_get_host_offset(bs, (uint64_t)src_off, &n, &host, &type);
        co_mutex_unlock(&s->lock);
        if (ret < 0) {
            return ret;
        }
        switch (type) {
        case QCOW2_SC_UNALLOC_PLAIN:
        case QCOW2_SC_UNALLOC_ALLOC: {
            int64_t blen = bs->backing ? node_getlength(bs->backing->bs) : 0;
            if (blen < 0) {
                return (int)blen;
            }
            if (src_off + (int64_t)n > blen) {
                return -ENOTSUP;
            }
            child_debug_event(bs->file, BLKDBG_READ_BACKING_AIO);
            ret = child_co_copy_range_from(bs->backing, src_off, dst, dst_off,
                                           (int64_t)n, read_flags,
                                           write_flags);
            break;
        }
        case QCOW2_SC_NORMAL:
            child_debug_event(bs->file, BLKDBG_READ_AIO);
            ret = child_co_copy_range_from(s->data_file, (int64_t)host, dst,
                                           dst_off, (int64_t)n, read_flags,
                                           write_flags);
            break;
        default:
            return -ENOTSUP;
        }
        if (ret < 0) {
            return ret;
        }
        src_off += (int64_t)n;
        dst_off += (int64_t)n;
        bytes -= (int64_t)n;
    }
    return 0;
}

/* ---- Block status ---- */

/*
 * Whether the image looks preallocated with preallocation=metadata: many
 * more clusters are referenced than the file really occupies (QEMU's
 * heuristic).  Only then is it worth asking the file where the holes are.
 * Called with s->lock held.
 */
static int coroutine_fn detect_metadata_prealloc(BlockNode *bs)
{
    Qcow2State *s = bs->opaque;
    int64_t file_len = node_getlength(bs->file->bs);
    int64_t real = node_get_allocated_file_size(bs->file->bs);
    int64_t real_clusters, threshold, end, count = 0;

    if (file_len < 0) {
        return (int)file_len;
    }
    if (real < 0) {
        return (int)real;
    }
    real_clusters = real / (int64_t)s->cluster_size;
    threshold = MAX(real_clusters * 10 / 9, real_clusters + 2);
    end = DIV_ROUND_UP(file_len, (int64_t)s->cluster_size);
    for (int64_t i = 0; i < end && count < threshold; i++) {
        uint64_t refcount;
        int ret = qcow2_get_refcount(bs, (uint64_t)i, &refcount);
        if (ret < 0) {
            return ret;
        }
        count += refcount != 0;
    }
    return count >= threshold;
}

static int coroutine_fn qcow2_co_block_status(BlockNode *bs, bool want_zero,
                                              int64_t offset, int64_t bytes,
                                              int64_t *pnum, int64_t *map,
                                              BlockNode **file)
{
    Qcow2State *s = bs->opaque;
    uint64_t n = (uint64_t)bytes, host;
    Qcow2SubclusterType type;
    int ret, status = 0;
    (void)want_zero;

    co_mutex_lock(&s->lock);
    if (!s->metadata_prealloc_checked) {
        s->metadata_prealloc = detect_metadata_prealloc(bs) == 1;
        s->metadata_prealloc_checked = true;
    }
    ret = qcow2_get_host_offset(bs, (uint64_t)offset, &n, &host, &type);
    co_mutex_unlock(&s->lock);
    if (ret < 0) {
        return ret;
    }
    *pnum = (int64_t)n;

    if ((type == QCOW2_SC_NORMAL || type == QCOW2_SC_ZERO_ALLOC ||
         type == QCOW2_SC_UNALLOC_ALLOC) && !s->crypt_method) {
        /* Where the data is, or would be (ALLOC types keep the cluster). */
        *map = (int64_t)host;
        *file = s->data_file->bs;
        status |= BLOCK_OFFSET_VALID;
    }
    if (type == QCOW2_SC_ZERO_PLAIN || type == QCOW2_SC_ZERO_ALLOC) {
        status |= BLOCK_ZERO;
    } else if (type == QCOW2_SC_NORMAL || type == QCOW2_SC_COMPRESSED) {
        status |= BLOCK_DATA;
    }
    if (s->metadata_prealloc && (status & BLOCK_DATA) &&
        (status & BLOCK_OFFSET_VALID)) {
        status |= BLOCK_RECURSE;
    }
    return status;
}

/* ---- Flush ---- */

static int coroutine_fn qcow2_co_flush_to_os(BlockNode *bs)
{
    Qcow2State *s = bs->opaque;
    int ret;

    if (bs->read_only) {
        return 0;
    }
    if (s->corrupt) {
        return -ENOMEDIUM;
    }
    co_mutex_lock(&s->lock);
    ret = qcow2_cache_write(s->l2_cache);
    /* A dirty image keeps its refcounts for close (lazy refcounts). */
    if (ret >= 0 && !(s->incompatible_features & QCOW2_INCOMPAT_DIRTY)) {
        /*
         * New refcount blocks get their table entries here at the latest
         * (a sync first: qcow2-refcount.c, "Hookups"), so that the file
         * holds the whole metadata after any flush (the online check
         * copies it from there).
         */
        ret = qcow2_refblock_hookups_pending(s)
              ? qcow2_cache_flush(s->refcount_cache)
              : qcow2_cache_write(s->refcount_cache);
    }
    co_mutex_unlock(&s->lock);
    return ret;
}

/* ---- Information ---- */

static int64_t qcow2_getlength(BlockNode *bs)
{
    Qcow2State *s = bs->opaque;
    return (int64_t)s->size;
}

static int64_t qcow2_get_allocated_file_size(BlockNode *bs)
{
    Qcow2State *s = bs->opaque;
    int64_t a = node_get_allocated_file_size(bs->file->bs);

    if (a >= 0 && s->data_file && s->data_file != bs->file) {
        int64_t d = node_get_allocated_file_size(s->data_file->bs);
        if (d >= 0) {
            a += d;
        }
    }
    return a;
}

static int qcow2_get_info(BlockNode *bs, BlockDriverInfo *bdi)
{
    Qcow2State *s = bs->opaque;

    bdi->cluster_size = (int64_t)s->cluster_size;
    bdi->vm_state_offset = qcow2_vm_state_offset(s);
    bdi->is_dirty = s->incompatible_features & QCOW2_INCOMPAT_DIRTY;
    return 0;
}

static json_t *qcow2_get_specific_info(BlockNode *bs, GError **errp)
{
    Qcow2State *s = bs->opaque;
    json_t *o = json_object();
    static const char *const ctype[] = { "zlib", "zstd" };
    (void)errp;

    if (s->version == 2) {
        json_object_set_new(o, "compat", json_string("0.10"));
        json_object_set_new(o, "compression-type",
                            json_string(ctype[s->compression_type]));
        json_object_set_new(o, "refcount-bits",
                            json_integer(s->refcount_bits));
        return o;
    }
    json_object_set_new(o, "compat", json_string("1.1"));
    json_object_set_new(o, "compression-type",
                        json_string(ctype[s->compression_type]));
    json_object_set_new(o, "lazy-refcounts",
                        json_boolean(s->compatible_features &
                                     QCOW2_COMPAT_LAZY_REFCOUNTS));
    json_object_set_new(o, "refcount-bits", json_integer(s->refcount_bits));
    json_t *bitmaps = qcow2_bitmap_info(bs);
    if (bitmaps) {
        json_object_set_new(o, "bitmaps", bitmaps);
    }
    if (s->crypto) {
        json_object_set_new(o, "encrypt", qcow2_crypto_info(s));
    }
    if (qcow2_has_data_file(s) && s->data_file_name) {
        json_object_set_new(o, "data-file", json_string(s->data_file_name));
    }
    if (qcow2_has_data_file(s)) {
        json_object_set_new(o, "data-file-raw",
                            json_boolean(qcow2_data_file_is_raw(s)));
    }
    json_object_set_new(o, "corrupt",
                        json_boolean(s->incompatible_features &
                                     QCOW2_INCOMPAT_CORRUPT));
    json_object_set_new(o, "extended-l2", json_boolean(s->extended_l2));
    return o;
}

static void qcow2_child_perm(BlockNode *bs, BlockChild *c, unsigned role,
                             const ReopenState *rs, uint64_t perm,
                             uint64_t shared, uint64_t *nperm,
                             uint64_t *nshared)
{
    node_default_perms(bs, c, role, rs, perm, shared, nperm, nshared);
}

static int coroutine_fn qcow2_co_check(BlockNode *bs, BlockCheckResult *res,
                                       int fix, NodeCheckReport *report,
                                       void *opaque)
{
    Qcow2State *s = bs->opaque;
    int ret;

    co_mutex_lock(&s->lock);
    qcow2_wait_inflight(bs, 0, UINT64_MAX);
    ret = qcow2_co_check_locked(bs, res, fix, report, opaque);
    /* A fully repaired image is clean and consistent again. */
    if (ret >= 0 && fix && !res->corruptions && !res->check_errors &&
        s->version >= 3) {
        ret = qcow2_clear_incompat_bit(bs, QCOW2_INCOMPAT_DIRTY);
        if (ret >= 0) {
            s->dirty_set_by_us = false;
            qcow2_cache_set_dependency(s->l2_cache, s->refcount_cache);
            ret = qcow2_clear_incompat_bit(bs, QCOW2_INCOMPAT_CORRUPT);
        }
        if (ret >= 0) {
            s->corrupt = false;
        }
    }
    co_mutex_unlock(&s->lock);
    return ret;
}

static const char *const qcow2_mutable_opts[] = {
    "lazy-refcounts", "pass-discard-request", "pass-discard-snapshot",
    "pass-discard-other", "overlap-check", "overlap-check.template",
    "overlap-check.main-header", "overlap-check.active-l1",
    "overlap-check.active-l2", "overlap-check.refcount-table",
    "overlap-check.refcount-block", "overlap-check.snapshot-table",
    "overlap-check.inactive-l1", "overlap-check.inactive-l2",
    "overlap-check.bitmap-directory", "cache-size", "l2-cache-size",
    "l2-cache-entry-size", "refcount-cache-size", "cache-clean-interval",
    NULL,
};

/*
 * QEMU drops the driver of an image it has marked corrupt (or whose
 * tables it could no longer trust): from then on the node has no medium.
 */
static bool qcow2_is_inserted(BlockNode *bs)
{
    Qcow2State *s = bs->opaque;
    return !s->corrupt;
}

/* The node moved to another thread: its timer goes with it. */
static void qcow2_set_loop(BlockNode *bs)
{
    cache_clean_timer_init(bs);
}

const BlockDriver bdrv_qcow2 = {
    .format_name = "qcow2",
    .set_loop = qcow2_set_loop,
    .instance_size = sizeof(Qcow2State),
    .is_format = true,
    .supports_backing = true,
    .probe = qcow2_probe,
    .open = qcow2_open,
    .close = qcow2_close,
    .is_inserted = qcow2_is_inserted,
    .refresh_limits = qcow2_refresh_limits,
    .create = qcow2_co_create,
    .create_opts = qcow2_create_opts,
    .child_perm = qcow2_child_perm,
    .reopen_prepare = qcow2_reopen_prepare,
    .reopen_commit = qcow2_reopen_commit,
    .reopen_abort = qcow2_reopen_abort,
    .reopen_commit_post = qcow2_reopen_commit_post,
    .co_preadv = qcow2_co_preadv,
    .co_load_vmstate = qcow2_co_load_vmstate,
    .co_save_vmstate = qcow2_co_save_vmstate,
    .co_pwritev = qcow2_co_pwritev,
    .co_copy_range_from = qcow2_co_copy_range_from,
    .co_copy_range_to = qcow2_co_copy_range_to,
    .co_pwritev_compressed = qcow2_co_pwritev_compressed,
    .co_pwrite_zeroes = qcow2_co_pwrite_zeroes,
    .co_pdiscard = qcow2_co_pdiscard,
    .co_unallocate = qcow2_co_unallocate,
    .co_truncate = qcow2_co_truncate,
    .co_block_status = qcow2_co_block_status,
    .co_flush_to_os = qcow2_co_flush_to_os,
    .getlength = qcow2_getlength,
    .get_allocated_file_size = qcow2_get_allocated_file_size,
    .get_info = qcow2_get_info,
    .get_specific_info = qcow2_get_specific_info,
    .co_check = qcow2_co_check,
    .snapshot_create = qcow2_snapshot_create,
    .snapshot_goto = qcow2_snapshot_goto,
    .snapshot_delete = qcow2_snapshot_delete,
    .snapshot_list = qcow2_snapshot_list,
    .snapshot_load_tmp = qcow2_snapshot_load_tmp,
    .make_empty = qcow2_make_empty,
    .co_change_backing_file = qcow2_co_change_backing_file,
    .measure = qcow2_measure,
    .supports_persistent_dirty_bitmap = qcow2_supports_persistent_dirty_bitmap,
    .co_can_store_new_dirty_bitmap = qcow2_co_can_store_new_dirty_bitmap,
    .co_remove_persistent_dirty_bitmap =
        qcow2_co_remove_persistent_dirty_bitmap,
    .amend = qcow2_amend,
    .mutable_opts = qcow2_mutable_opts,
    .reopen_join_options = qcow2_reopen_join_options,
};
