/*
 * Nodes: opening (option resolution, probing, child inheritance), naming,
 * reference counting and closing.
 *
 * Opening a node resolves, in order: a "json:{...}" filename, the generic
 * options every node has (node-name, read-only, cache.*, force-share,
 * detect-zeroes, discard), the driver (given, from a "proto:" prefix, or
 * probed), then the driver's own open, and finally refuses any option
 * nobody took, naming it.  The filename code (json: names, protocol
 * prefixes, backing paths) is in filename.c.
 */
#include <errno.h>
#include <string.h>
#include <sys/stat.h>
#include "block-int.h"
#include "filename.h"
#include "strata/dirty-bitmap.h"
#include "strata/trace.h"

static GList *all_nodes;       /* every open node, in creation order */
static unsigned next_auto_name;

/* ---- Registry and names ---- */

bool node_name_valid(const char *name)
{
    size_t n = strlen(name);
    if (n == 0 || !g_ascii_isalpha(name[0])) {
        return false;
    }
    for (size_t i = 0; i < n; i++) {
        char ch = name[i];
        if (!g_ascii_isalnum(ch) && ch != '-' && ch != '.' && ch != '_') {
            return false;
        }
    }
    return true;
}

BlockNode *node_find(const char *node_name)
{
    for (GList *l = all_nodes; l; l = l->next) {
        BlockNode *bs = l->data;
        if (!strcmp(bs->node_name, node_name)) {
            return bs;
        }
    }
    return NULL;
}

BlockNode *node_next(BlockNode *bs)
{
    GList *l = bs ? g_list_find(all_nodes, bs) : NULL;
    l = bs ? (l ? l->next : NULL) : all_nodes;
    return l ? l->data : NULL;
}

BlockNode *node_new(const BlockDriver *drv)
{
    BlockNode *bs = g_new0(BlockNode, 1);
    bs->drv = drv;
    bs->opaque = drv->instance_size ? g_malloc0(drv->instance_size) : NULL;
    bs->refcnt = 1;
    bs->total_bytes = -1;
    bs->cum_shared = BLK_PERM_ALL;
    bs->bl.request_alignment = 1;
    co_queue_init(&bs->serialise_wait);
    return bs;
}

void node_register(BlockNode *bs)
{
    all_nodes = g_list_append(all_nodes, bs);
}

void node_ref(BlockNode *bs)
{
    bs->refcnt++;
}

static void close_flush_co(void *opaque)
{
    node_co_flush(opaque);
}

static void node_close(BlockNode *bs)
{
    node_drain_begin(bs);
    /*
     * As QEMU: what was written reaches the disk before the node goes,
     * errors ignored (nobody is left to tell).  The flush skips read-only
     * and clean nodes.
     */
    if (in_coroutine()) {
        node_co_flush(bs);
    } else {
        co_run_sync(close_flush_co, bs);
    }
    if (bs->drv->close) {
        bs->drv->close(bs);
    }
    /* The driver stored the persistent ones; nothing else outlives it. */
    node_release_dirty_bitmaps(bs);
    /* Closing drops the children however frozen: nobody can use them now. */
    while (bs->children) {
        BlockChild *c = bs->children->data;
        if (c->freezers) {
            g_ptr_array_set_size(c->freezers, 0);
        }
        child_detach(c, NULL);
    }
    node_drain_end(bs);
}

void node_unref(BlockNode *bs)
{
    if (!bs) {
        return;
    }
    g_assert(bs->refcnt > 0);
    if (--bs->refcnt > 0) {
        return;
    }
    g_assert(bs->parents == NULL);
    /*
     * Out of the node list before closing, as QEMU's bdrv_delete: the
     * close's drain runs the loop, and what runs there (a QMP command, a
     * job finishing) must neither find the dying node by name nor take it
     * for a root to drain (drain_all_begin references every root and lets
     * go only after this close is done).
     */
    all_nodes = g_list_remove(all_nodes, bs);
    /* Closing drains, which takes references: hold one meanwhile. */
    bs->refcnt = 1;
    node_close(bs);
    g_assert(bs->refcnt == 1);
    json_decref(bs->options);
    g_free(bs->opaque);
    g_free(bs);
}

/* ---- Accessors ---- */

const char *node_get_name(const BlockNode *bs) { return bs->node_name; }
const char *node_get_filename(const BlockNode *bs) { return bs->filename; }
const char *node_get_format_name(const BlockNode *bs) { return bs->drv->format_name; }
const BlockDriver *node_get_driver(const BlockNode *bs) { return bs->drv; }
bool node_is_read_only(const BlockNode *bs) { return bs->read_only; }
int node_get_flags(const BlockNode *bs) { return bs->open_flags; }

int64_t node_getlength(BlockNode *bs)
{
    /*
     * Cached: the request path checks ranges on every request.  Queries
     * read it from the main thread while the node's own thread writes it,
     * hence atomics; relaxed, since the number publishes nothing else.
     */
    int64_t cached = __atomic_load_n(&bs->total_bytes, __ATOMIC_RELAXED);
    if (cached >= 0 && !bs->drv->has_variable_length) {
        return cached;
    }
    int64_t len;
    if (bs->drv->getlength) {
        len = bs->drv->getlength(bs);
    } else {
        BlockNode *child = node_primary_child(bs);
        len = child ? node_getlength(child) : -ENOMEDIUM;
    }
    if (len >= 0) {
        /*
         * Lengths are whole 512-byte sectors, as in QEMU: a 1000-byte raw
         * image is 1 KiB long and reads zeroes past the end of its file.
         */
        len = ROUND_UP(len, 512);
        /*
         * Only the home thread fills the cache: a length computed elsewhere
         * may predate a truncate there, whose invalidation it would undo.
         */
        if (loop_get() == node_loop(bs)) {
            __atomic_store_n(&bs->total_bytes, len, __ATOMIC_RELAXED);
        }
    }
    return len;
}

void node_invalidate_length(BlockNode *bs)
{
    __atomic_store_n(&bs->total_bytes, -1, __ATOMIC_RELAXED);
    for (GList *l = bs->parents; l; l = l->next) {
        BlockChild *c = l->data;
        if (c->klass->parent_is_node) {
            node_invalidate_length(c->opaque);
        }
    }
}

int64_t node_get_allocated_file_size(BlockNode *bs)
{
    if (bs->drv->get_allocated_file_size) {
        return bs->drv->get_allocated_file_size(bs);
    }
    /*
     * QEMU's defaults: a protocol driver's data need not live in its
     * children, so it cannot tell (blkdebug); a filter occupies what its
     * child does; a format what its data and metadata children do.
     */
    if (bs->drv->protocol_name) {
        return -ENOTSUP;
    }
    if (bs->drv->is_filter) {
        BlockNode *child = node_filtered_child(bs);
        return child ? node_get_allocated_file_size(child) : -ENOMEDIUM;
    }
    int64_t total = 0;
    for (GList *l = bs->children; l; l = l->next) {
        BlockChild *c = l->data;
        if (c->role & (CHILD_ROLE_DATA | CHILD_ROLE_METADATA |
                       CHILD_ROLE_FILTERED)) {
            int64_t n = node_get_allocated_file_size(c->bs);
            if (n < 0) {
                return n;
            }
            total += n;
        }
    }
    return total;
}

BlockNode *node_primary_child(BlockNode *bs)
{
    for (GList *l = bs->children; l; l = l->next) {
        BlockChild *c = l->data;
        if (c->role & CHILD_ROLE_PRIMARY) {
            return c->bs;
        }
    }
    return bs->file ? bs->file->bs : NULL;
}

BlockNode *node_filtered_child(BlockNode *bs)
{
    if (!bs->drv->is_filter) {
        return NULL;
    }
    for (GList *l = bs->children; l; l = l->next) {
        BlockChild *c = l->data;
        if (c->role & CHILD_ROLE_FILTERED) {
            return c->bs;
        }
    }
    return NULL;
}

BlockNode *node_skip_filters(BlockNode *bs)
{
    while (bs && node_filtered_child(bs)) {
        bs = node_filtered_child(bs);
    }
    return bs;
}

void node_cancel_in_flight(BlockNode *bs)
{
    if (bs && bs->drv && bs->drv->cancel_in_flight) {
        bs->drv->cancel_in_flight(bs);
    }
}

void node_set_implicit(BlockNode *bs)
{
    bs->implicit = true;
}

BlockNode *node_skip_implicit_filters(BlockNode *bs)
{
    while (bs && bs->implicit && node_filtered_child(bs)) {
        bs = node_filtered_child(bs);
    }
    return bs;
}

ReopenState *node_reopen_state(const BlockNode *bs)
{
    return bs->reopen_state;
}

void node_set_reopen_state(BlockNode *bs, ReopenState *rs)
{
    bs->reopen_state = rs;
}

bool node_writable_after_reopen(const BlockNode *bs)
{
    return bs->reopen_state ? !bs->reopen_state->read_only : !bs->read_only;
}

/* ---- Limits ---- */

void node_refresh_limits(BlockNode *bs)
{
    BlockLimits bl = { .request_alignment = 1 };
    /* Inherit from the primary child: a format reads through its file. */
    BlockNode *child = node_primary_child(bs);
    if (child) {
        bl.min_mem_alignment = child->bl.min_mem_alignment;
        bl.opt_mem_alignment = child->bl.opt_mem_alignment;
        bl.max_transfer = child->bl.max_transfer;
        bl.opt_transfer = child->bl.opt_transfer;
        if (bs->drv->is_filter) {
            bl = child->bl;
        }
    }
    bs->bl = bl;
    if (bs->drv->refresh_limits) {
        bs->drv->refresh_limits(bs);
    }
    if (bs->bl.request_alignment == 0) {
        bs->bl.request_alignment = 1;
    }
    if (bs->bl.min_mem_alignment == 0) {
        bs->bl.min_mem_alignment = 1;
    }
    if (bs->bl.opt_mem_alignment < bs->bl.min_mem_alignment) {
        bs->bl.opt_mem_alignment = bs->bl.min_mem_alignment;
    }
}

/* ---- Opening ---- */

static const char *const detect_zeroes_names[] = { "off", "on", "unmap", NULL };
static const char *const discard_names[] = { "ignore", "unmap", "off", "on", NULL };

typedef struct {
    BlockNode *bs;
    uint8_t *buf;
    int len;
    int ret;
} ProbeRead;

static void probe_read_co(void *opaque)
{
    ProbeRead *p = opaque;
    IOVec qiov;
    iovec_init_buf(&qiov, p->buf, p->len);
    p->ret = node_co_preadv_node(p->bs, 0, p->len, &qiov, 0, 0);
    iovec_destroy(&qiov);
}

/* Guess the format of the image in protocol node file. */
static const BlockDriver *probe_format(BlockNode *file, GError **errp)
{
    int64_t len = node_getlength(file);
    if (len < 0) {
        error_setg_errno(errp, -len, "Could not determine image size");
        return NULL;
    }
    enum { PROBE_BUF = 2048 };
    uint32_t align = MAX(file->bl.request_alignment, 512);
    int want = (int)MIN((int64_t)PROBE_BUF, len);
    int rlen = want ? (int)ROUND_UP(want, align) : 0;
    uint8_t *buf = aligned_alloc_buf(MAX(file->bl.min_mem_alignment, 512),
                                     MAX(rlen, 512));
    memset(buf, 0, MAX(rlen, 512));
    if (rlen) {
        ProbeRead p = { file, buf, rlen, 0 };
        if (in_coroutine()) {
            probe_read_co(&p);
        } else {
            co_run_sync(probe_read_co, &p);
        }
        if (p.ret < 0) {
            error_setg_errno(errp, -p.ret, "Could not read image for determining its format");
            aligned_free(buf);
            return NULL;
        }
    }
    const BlockDriver *best = NULL;
    int best_score = 0;
    const char **names = driver_list();
    for (const char **n = names; *n; n++) {
        const BlockDriver *drv = driver_find(*n);
        if (drv->probe) {
            int score = drv->probe(buf, want, file->filename);
            if (score > best_score) {
                best_score = score;
                best = drv;
            }
        }
    }
    g_free(names);
    aligned_free(buf);
    if (!best) {
        error_setg(errp, "Could not determine image format: No compatible driver found");
    }
    return best;
}

/* An enumerated generic option, with QEMU's block-layer message. */
static bool take_mode(json_t *options, const char *key,
                      const char *const *names, int *out, const char *msg,
                      GError **errp)
{
    char *v = NULL;
    if (!opts_take_str(options, key, &v, errp)) {
        return false;
    }
    if (!v) {
        return true;
    }
    for (int i = 0; names[i]; i++) {
        if (!strcmp(names[i], v)) {
            *out = i;
            g_free(v);
            return true;
        }
    }
    error_setg(errp, msg, v);
    g_free(v);
    return false;
}

static bool take_generic_options(BlockNode *bs, json_t *options, int *flags,
                                 GError **errp)
{
    char *name = NULL;
    bool read_only = !(*flags & NODE_O_RDWR);
    bool auto_ro = false;
    bool direct = *flags & NODE_O_NOCACHE, no_flush = *flags & NODE_O_NO_FLUSH;
    int dz = DETECT_ZEROES_OFF, discard = 0;

    /* cache.* may come nested; flatten it so errors name "cache.direct". */
    json_t *cache = json_object_get(options, "cache");
    if (cache && json_is_object(cache)) {
        const char *k;
        json_t *v;
        json_object_foreach(cache, k, v) {
            char *full = g_strconcat("cache.", k, NULL);
            json_object_set(options, full, v);
            g_free(full);
        }
        json_object_del(options, "cache");
    }
    bs->read_only_given = json_object_get(options, "read-only") != NULL;
    if (!opts_take_str(options, "node-name", &name, errp) ||
        !opts_take_bool(options, "read-only", &read_only, errp) ||
        !opts_take_bool(options, "auto-read-only", &auto_ro, errp) ||
        !opts_take_bool(options, "force-share", &bs->force_share, errp) ||
        !opts_take_bool(options, "cache.direct", &direct, errp) ||
        !opts_take_bool(options, "cache.no-flush", &no_flush, errp) ||
        !take_mode(options, "detect-zeroes", detect_zeroes_names, &dz,
                   "invalid parameter value: %s", errp) ||
        !take_mode(options, "discard", discard_names, &discard,
                   "Invalid discard option", errp)) {
        g_free(name);
        return false;
    }
    if (name) {
        if (strlen(name) > 31) {
            error_setg(errp, "Node name too long");
            g_free(name);
            return false;
        }
        if (!node_name_valid(name)) {
            error_setg(errp, "Invalid node-name: '%s'", name);
            g_free(name);
            return false;
        }
        if (node_find(name)) {
            error_setg(errp, "Duplicate nodes with node-name='%s'", name);
            g_free(name);
            return false;
        }
        g_strlcpy(bs->node_name, name, sizeof(bs->node_name));
        g_free(name);
    } else {
        g_snprintf(bs->node_name, sizeof(bs->node_name), "#block%03u",
                   next_auto_name++);
        bs->auto_named = true;
    }
    if (bs->force_share && !read_only) {
        error_setg(errp, "force-share=on can only be used with read-only images");
        return false;
    }
    if (dz == DETECT_ZEROES_UNMAP && !(discard == 1 || discard == 3)) {
        error_setg(errp, "setting detect-zeroes to unmap is not allowed "
                         "without setting discard operation to unmap");
        return false;
    }
    bs->detect_zeroes = dz;
    bs->discard_unmap = (discard == 1 || discard == 3);
    *flags &= ~(NODE_O_RDWR | NODE_O_NOCACHE | NODE_O_NO_FLUSH);
    *flags |= (read_only ? 0 : NODE_O_RDWR) | (direct ? NODE_O_NOCACHE : 0) |
              (no_flush ? NODE_O_NO_FLUSH : 0);
    bs->read_only = read_only;
    bs->auto_read_only = auto_ro;
    return true;
}

static BlockNode *node_open_common(const char *filename, json_t *options,
                                   int flags, GError **errp);
static bool open_backing(BlockNode *bs, json_t *options, int flags,
                         GError **errp);

/* Merge src's (flattened) keys into dst where dst has none. */
static void opts_merge_missing(json_t *dst, json_t *src)
{
    json_t *flat_src = opts_flatten(src);
    json_t *flat_dst = opts_flatten(dst);
    const char *k;
    json_t *v;
    json_object_foreach(flat_src, k, v) {
        if (!json_object_get(flat_dst, k)) {
            opts_set_dotted(dst, k, json_incref(v), NULL);
        }
    }
    json_decref(flat_src);
    json_decref(flat_dst);
}

BlockNode *node_open(const char *filename, json_t *options, int flags,
                     GError **errp)
{
    if (!options) {
        options = json_object();
    }
    if (filename && g_str_has_prefix(filename, "json:")) {
        json_t *j = filename_parse_json(filename + 5, errp);
        if (!j) {
            json_decref(options);
            return NULL;
        }
        opts_merge_missing(options, j);
        json_decref(j);
        filename = NULL;
    }
    return node_open_common(filename, options, flags, errp);
}

/*
 * The nodes whose backing files are being opened, innermost first.  Each
 * opens its backing file from inside its own open, so a chain that comes
 * back to the file of one of them (an image naming itself, a -> b -> a)
 * would recurse until memory runs out.  Files are compared by identity, not
 * by name: "a", "./a" and a symbolic link to it are the same image.
 */
static GSList *backing_opens;

static bool seen_in_chain(BlockNode *bs, uint64_t dev, uint64_t ino);
static void set_loop_error(GError **errp, const char *name);

/*
 * Formats and the filters that are no protocol (copy-on-read, throttle,
 * preallocate, ...) open their "file" child with the filename they were
 * given, as QEMU's non-protocol drivers do.
 */
static bool passes_filename_down(const BlockDriver *drv)
{
    return drv->is_format || (drv->is_filter && !drv->protocol_name);
}

/*
 * A filename given to such a node names the storage at the bottom of its
 * "file" chain: a "file" child that is itself one of them (file.driver=qcow2
 * under copy-on-read) hands it on to its own "file", so
 * "driver=copy-on-read,file.driver=qcow2 x.qcow2" means
 * file.file.filename=x.qcow2, as in QEMU.  A protocol child that parses
 * names (blkdebug) parses it as if it had been given the name itself.
 */
static bool set_storage_filename(json_t *options, const char *filename,
                                 GError **errp)
{
    for (;;) {
        json_t *file_opts = json_object_get(options, "file");
        if (!file_opts) {
            file_opts = json_object();
            json_object_set_new(options, "file", file_opts);
        }
        if (!json_is_object(file_opts)) {
            error_setg(errp, "Cannot reference an existing block device with "
                       "additional options or a new filename");
            return false;
        }
        json_t *d = json_object_get(file_opts, "driver");
        const BlockDriver *child = d && json_is_string(d)
                                   ? driver_find(json_string_value(d)) : NULL;
        if (child && passes_filename_down(child)) {
            options = file_opts;
            continue;
        }
        if (json_object_get(file_opts, "filename")) {
            error_setg(errp, "Can't specify 'file' and 'filename' options at "
                       "the same time");
            return false;
        }
        if (child && child->parse_filename) {
            /* As a name given to it: blkdebug takes it as its image's. */
            return child->parse_filename(filename, file_opts, errp);
        }
        json_object_set_new(file_opts, "filename", json_string_nocheck(filename));
        return true;
    }
}

static BlockNode *node_open_common(const char *filename, json_t *options,
                                   int flags, GError **errp)
{
    BlockNode *bs = NULL;
    BlockNode *probed_file = NULL;
    bool probed_here = false; /* the probed storage was opened for this node */
    char *drvname = NULL;
    bool opened = false;
    const BlockDriver *drv = NULL;

    if (!opts_take_str(options, "driver", &drvname, errp)) {
        goto fail;
    }
    if (drvname) {
        drv = driver_find(drvname);
        if (!drv) {
            error_setg(errp, "Unknown driver '%s'", drvname);
            goto fail;
        }
    } else if (flags & NODE_O_PROTOCOL) {
        if (filename) {
            drv = filename_find_protocol(filename);
            if (!drv && filename_unknown_protocol(filename, errp)) {
                goto fail;
            }
        }
        if (!drv) {
            /* Like QEMU: a path naming a device opens as host_device. */
            struct stat st;
            const char *path = filename;
            if (!path) {
                json_t *f = json_object_get(options, "filename");
                path = f && json_is_string(f) ? json_string_value(f) : NULL;
            }
            bool dev = path && stat(path, &st) == 0 &&
                       (S_ISBLK(st.st_mode) || S_ISCHR(st.st_mode));
            drv = driver_find(dev ? "host_device" : "file");
        }
    } else {
        if (!filename && !json_object_get(options, "file")) {
            error_setg(errp, "Must specify either driver or file");
            goto fail;
        }
        json_t *file_ref = json_object_get(options, "file");
        if (file_ref && json_is_string(file_ref)) {
            /*
             * The storage is an existing node, named (as "--image-opts
             * x.img" names one: "file" is the implied key); QEMU probes it.
             */
            const char *ref = json_string_value(file_ref);
            probed_file = node_find(ref);
            if (!probed_file) {
                error_setg(errp, "Cannot find device='%s' nor node-name='%s'",
                           ref, ref);
                goto fail;
            }
            node_ref(probed_file);
            drv = probe_format(probed_file, errp);
            if (!drv) {
                goto fail;
            }
            filename = NULL;
            goto probed;
        }
        /* Open the storage first, then ask every format whether it is theirs. */
        json_t *file_opts = opts_take_subtree(options, "file");
        if (!file_opts) {
            file_opts = json_object();
        }
        if (filename && !json_object_get(file_opts, "filename")) {
            json_object_set_new(file_opts, "filename", json_string_nocheck(filename));
        }
        /*
         * The storage is opened before this node's generic options are
         * taken: hand it the ones it inherits (cache mode, read-only,
         * force-share) unless it has its own.
         */
        static const char *const inherited[] = {
            "read-only", "cache.direct", "cache.no-flush", "force-share",
        };
        json_t *flat = opts_flatten(options);
        json_t *flat_file = opts_flatten(file_opts);
        bool ro_inherited = !json_object_get(flat_file, "read-only");
        for (size_t i = 0; i < G_N_ELEMENTS(inherited); i++) {
            json_t *v = json_object_get(flat, inherited[i]);
            if (v && !json_object_get(flat_file, inherited[i])) {
                opts_set_dotted(file_opts, inherited[i], json_incref(v), NULL);
            }
        }
        /*
         * Whatever format it turns out to be, the format decides which
         * discards it sends, so its storage passes them on (QEMU gives
         * every child discard=unmap by default, probed or not).
         */
        if (!json_object_get(flat_file, "discard")) {
            json_object_set_new(file_opts, "discard", json_string("unmap"));
        }
        json_decref(flat);
        json_decref(flat_file);
        /*
         * It becomes the storage of a format, which passes discards down
         * only when its own policy says so: the storage defaults to unmap,
         * as when the format is named (QEMU's inheritance does the same).
         */
        if (!json_object_get(file_opts, "discard")) {
            json_object_set_new(file_opts, "discard", json_string("unmap"));
        }
        int fflags = (flags | NODE_O_PROTOCOL) & ~NODE_O_RESIZE;
        char *fname = opts_get_str(file_opts, "filename");
        json_object_del(file_opts, "filename");
        probed_file = node_open_common(fname, file_opts, fflags, errp);
        g_free(fname);
        if (!probed_file) {
            goto fail;
        }
        if (ro_inherited) {
            probed_file->read_only_given = false;
        }
        probed_here = true;
        drv = probe_format(probed_file, errp);
        if (!drv) {
            goto fail;
        }
        filename = NULL;
    }

probed:
    bs = node_new(drv);
    bs->probed = probed_file != NULL;
    /* A filename that is not text is no filename (QEMU ignores it too). */
    json_t *fv = json_object_get(options, "filename");
    if (fv && !json_is_string(fv)) {
        json_object_del(options, "filename");
    }
    /*
     * force-share stays among the node's options as it was given (a bool
     * from QMP, "on" from the tools): blockdev-reopen compares it as QEMU
     * does, and children inherit it as given.  The driver never sees it.
     */
    bs->options = json_object();
    json_t *force_share_opt = json_object_get(options, "force-share");
    if (force_share_opt) {
        json_object_set(bs->options, "force-share", force_share_opt);
    }
    if (!take_generic_options(bs, options, &flags, errp)) {
        goto fail;
    }
    bs->open_flags = flags & ~(NODE_O_PROTOCOL | NODE_O_RESIZE | NODE_O_NO_BACKING);

    if (probed_file) {
        /* QEMU warns as soon as it has guessed, before the open proper. */
        if ((flags & NODE_O_RDWR) && !strcmp(drv->format_name, "raw")) {
            warn_print("WARNING: Image format was not specified for '%s' and "
                       "probing guessed raw.\n"
                       "         Automatically detecting the format is "
                       "dangerous for raw images, write operations on block 0 "
                       "will be restricted.\n"
                       "         Specify the 'raw' format explicitly to remove "
                       "the restrictions.", probed_file->filename);
        }
        json_object_set_new(options, "file",
                            json_string(probed_file->node_name));
        g_strlcpy(bs->filename, probed_file->filename, sizeof(bs->filename));
    } else if (filename) {
        if (passes_filename_down(drv)) {
            if (!set_storage_filename(options, filename, errp)) {
                goto fail;
            }
        } else if (drv->parse_filename) {
            if (!drv->parse_filename(filename, options, errp)) {
                goto fail;
            }
            /* "file:x.img" is shown as x.img, as QEMU does. */
            json_t *f = json_object_get(options, "filename");
            if (f && json_is_string(f) && !drv->is_filter) {
                filename = json_string_value(f);
            }
        } else {
            json_object_set_new(options, "filename", json_string_nocheck(filename));
        }
        g_strlcpy(bs->filename, filename, sizeof(bs->filename));
    }
    if (!bs->filename[0] && drv->protocol_name) {
        /* Opened from options alone: show the path like QEMU does. */
        char *f = opts_get_str(options, "filename");
        if (f) {
            g_strlcpy(bs->filename, f, sizeof(bs->filename));
            g_free(f);
        }
    }
    json_t *generic = bs->options;
    bs->options = json_deep_copy(options);
    json_object_update(bs->options, generic);
    json_decref(generic);
    node_register(bs);

    TRACE(bdrv_open_common, "bs %p filename \"%s\" flags 0x%x format_name "
          "\"%s\"", (void *)bs, filename ? filename : "", bs->open_flags,
          drv->format_name);
    if (drv->open && drv->open(bs, options, bs->open_flags, errp) < 0) {
        goto fail_registered;
    }
    opened = true;
    /*
     * The probed storage reaches the driver by reference, but it was opened
     * for this node, so it follows the node's reopens as in QEMU.
     */
    if (probed_here && bs->file && bs->file->bs == probed_file) {
        bs->file->inherits = true;
        probed_file->opened_by_parent = true;
    }
    /*
     * QEMU names a format's storage before the format node itself and its
     * backing file after it; node listings (query-named-block-nodes,
     * x-debug-query-block-graph) follow that order, so the node moves
     * behind the children its driver just opened.
     */
    all_nodes = g_list_remove(all_nodes, bs);
    all_nodes = g_list_append(all_nodes, bs);
    /*
     * Storage opened below a backing file that is being opened: the chain
     * loops if it is the file of an image the chain already holds.
     */
    uint64_t dev, ino;
    if (backing_opens && drv->get_file_id &&
        drv->get_file_id(bs, &dev, &ino) && seen_in_chain(NULL, dev, ino)) {
        set_loop_error(errp, bs->filename);
        goto fail_registered;
    }
    /* As QEMU: a node whose length cannot be read does not open. */
    int64_t len = node_getlength(bs);
    if (len < 0) {
        error_setg_errno(errp, -len, "Could not refresh total sector count");
        goto fail_registered;
    }
    if (drv->supports_backing && !open_backing(bs, options, flags, errp)) {
        goto fail_registered;
    }
    char *left = opts_first_key(options);
    if (left) {
        if (!drv->protocol_name) {
            error_setg(errp, "Block format '%s' does not support the option '%s'",
                       drv->format_name, left);
        } else {
            error_setg(errp, "Block protocol '%s' doesn't support the option '%s'",
                       drv->format_name, left);
        }
        g_free(left);
        goto fail_registered;
    }
    node_refresh_limits(bs);
    filename_refresh(bs, flags);
    node_unref(probed_file);
    json_decref(options);
    g_free(drvname);
    return bs;

fail_registered:
    /*
     * A failing open releases what it acquired itself; the children it had
     * attached already are detached here.  An open that succeeded but left
     * options unused is closed like any node, and as there leaves the node
     * list first (the close may run the loop; see node_unref).
     */
    all_nodes = g_list_remove(all_nodes, bs);
    if (opened && drv->close) {
        drv->close(bs);
    }
    node_release_dirty_bitmaps(bs);
    while (bs->children) {
        BlockChild *c = bs->children->data;
        if (c->freezers) {
            g_ptr_array_set_size(c->freezers, 0);
        }
        child_detach(c, NULL);
    }
    json_decref(bs->options);
    g_free(bs->opaque);
    g_free(bs);
    bs = NULL;
fail:
    if (bs) {
        json_decref(bs->options);
        g_free(bs->opaque);
        g_free(bs);
    }
    node_unref(probed_file);
    json_decref(options);
    g_free(drvname);
    return NULL;
}

/* Whether obj has the dotted key (nested objects or flattened keys). */
static bool opts_has_key(json_t *obj, const char *key)
{
    json_t *flat = opts_flatten(obj);
    bool has = json_object_get(flat, key) != NULL;
    json_decref(flat);
    return has;
}

/*
 * default_filename: what to open when the sub-options name no storage (a
 * backing file named in the image header).
 */
static BlockChild *open_child(BlockNode *bs, json_t *options, const char *name,
                              const char *default_filename, unsigned role,
                              bool allow_none, GError **errp)
{
    json_t *ref = json_object_get(options, name);
    BlockNode *child_bs;
    bool by_reference = ref && json_is_string(ref);

    if (by_reference) {
        /* A reference to an existing node by name, and nothing more. */
        char *prefix = g_strconcat(name, ".", NULL);
        const char *k;
        json_t *v;
        bool extra = false;
        json_object_foreach(options, k, v) {
            extra |= g_str_has_prefix(k, prefix);
        }
        g_free(prefix);
        if (extra) {
            error_setg(errp, "Cannot reference an existing block device with "
                       "additional options or a new filename");
            return NULL;
        }
        child_bs = node_find(json_string_value(ref));
        if (!child_bs) {
            error_setg(errp, "Cannot find device='%s' nor node-name='%s'",
                       json_string_value(ref), json_string_value(ref));
            return NULL;
        }
        json_object_del(options, name);
        node_ref(child_bs);
    } else {
        json_t *sub = opts_take_subtree(options, name);
        if (!sub && default_filename) {
            sub = json_object();
        }
        if (!sub) {
            if (allow_none) {
                return NULL;
            }
            error_setg(errp, "A block device must be specified for \"%s\"", name);
            return NULL;
        }
        /*
         * Children inherit the parent's cache mode and read-only state unless
         * their options say otherwise; a backing file is always read-only,
         * and a format's storage is opened as a protocol (never probed).
         */
        int flags = bs->open_flags & (NODE_O_RDWR | NODE_O_NOCACHE | NODE_O_NO_FLUSH);
        if (role & CHILD_ROLE_COW) {
            flags &= ~NODE_O_RDWR;
        }
        /*
         * "No I/O" passes to backing files and through filters; a format's
         * storage (raw's too: QEMU opens it as an image child) does I/O.
         */
        if ((bs->open_flags & NODE_O_NO_IO) && !(role & CHILD_ROLE_METADATA) &&
            !(bs->drv->is_format && !(role & CHILD_ROLE_COW))) {
            flags |= NODE_O_NO_IO;
        }
        /*
         * Whether the child is probed follows QEMU's inheritance: a child
         * starts with the parent's protocol flag (a protocol driver such as
         * blkdebug passes it on to its image); pure data children of
         * non-formats are probed; children of formats other than backing
         * files, and metadata children, never are.
         */
        bool parent_is_format = bs->drv->is_format;
        /* Filters, like protocols, hand over storage, never probe it. */
        if (bs->drv->protocol_name || bs->drv->is_filter) {
            flags |= NODE_O_PROTOCOL;
        }
        if (!parent_is_format && (role & CHILD_ROLE_DATA) &&
            !(role & (CHILD_ROLE_METADATA | CHILD_ROLE_FILTERED))) {
            flags &= ~NODE_O_PROTOCOL;
        }
        if ((parent_is_format && !(role & CHILD_ROLE_COW)) ||
            (role & CHILD_ROLE_METADATA)) {
            flags |= NODE_O_PROTOCOL;
        }
        /*
         * A format sends discards only when its own policy allows, so its
         * storage may always pass them on (QEMU does the same); other
         * children follow the parent's policy.
         */
        bool unmap = bs->discard_unmap ||
                     (bs->drv->is_format && !(role & CHILD_ROLE_COW));
        if (unmap && !json_object_get(sub, "discard")) {
            json_object_set_new(sub, "discard", json_string("unmap"));
        }
        json_t *fs = json_object_get(bs->options, "force-share");
        if (bs->force_share && !json_object_get(sub, "force-share")) {
            json_object_set_new(sub, "force-share",
                                fs ? json_incref(fs) : json_true());
        }
        char *fname = opts_get_str(sub, "filename");
        bool from_header = false;
        if (fname && !json_object_get(sub, "driver") &&
            (flags & NODE_O_PROTOCOL)) {
            /*
             * Let the driver be found from the filename.  A child that
             * would be probed (backing files, quorum's children) needs a
             * driver or a file instead, as in QEMU.
             */
            json_object_del(sub, "filename");
        } else {
            g_free(fname);
            fname = NULL;
            if (default_filename && !json_object_get(sub, "filename") &&
                !opts_has_key(sub, "file.filename")) {
                fname = g_strdup(default_filename);
                from_header = true;
            }
        }
        /*
         * A name from the image header may be "json:{...}" (QEMU opens it
         * like a command-line filename); one from the options may not.
         */
        child_bs = from_header ? node_open(fname, sub, flags, errp)
                               : node_open_common(fname, sub, flags, errp);
        g_free(fname);
        if (!child_bs) {
            return NULL;
        }
    }
    BlockChild *c = node_attach_child(bs, child_bs, name, role, errp);
    if (c) {
        c->inherits = !by_reference;
        child_bs->opened_by_parent |= !by_reference;
    }
    node_unref(child_bs);
    return c;
}

BlockChild *node_open_child(BlockNode *bs, json_t *options, const char *name,
                            unsigned role, bool allow_none, GError **errp)
{
    return open_child(bs, options, name, NULL, role, allow_none, errp);
}

G_DEFINE_QUARK(strata-backing-loop, backing_loop_error)

bool node_error_is_backing_loop(const GError *err)
{
    return err && err->domain == backing_loop_error_quark();
}

bool node_get_file_id(BlockNode *bs, uint64_t *dev, uint64_t *ino)
{
    while (bs && !bs->drv->get_file_id) {
        bs = bs->file ? child_node(bs->file) : NULL;
    }
    return bs && bs->drv->get_file_id(bs, dev, ino);
}

static bool seen_in_chain(BlockNode *bs, uint64_t dev, uint64_t ino)
{
    uint64_t odev, oino;

    for (GSList *l = backing_opens; l; l = l->next) {
        if (node_get_file_id(l->data, &odev, &oino) &&
            odev == dev && oino == ino) {
            return true;
        }
    }
    return bs && node_get_file_id(bs, &odev, &oino) &&
           odev == dev && oino == ino;
}

static void set_loop_error(GError **errp, const char *name)
{
    /* QEMU's words (qemu-img info --backing-chain). */
    g_set_error(errp, backing_loop_error_quark(), STRATA_ERROR_GENERIC,
                "Backing file '%s' creates an infinite loop.", name);
}

/*
 * Whether bs's backing file `path` (from its header; NULL when options
 * name it) is a file the chain has open already.  It is looked at before
 * it is opened, so that the loop is reported by the name the image gives
 * it.  A backing file named otherwise (options, json: or protocol names)
 * is caught when its storage opens (node_open_common), still before it
 * takes image locks, which would fail against the chain's own first.
 */
static bool backing_loops(BlockNode *bs, const char *path, GError **errp)
{
    struct stat st;

    if (path && stat(path, &st) == 0 &&
        seen_in_chain(bs, st.st_dev, st.st_ino)) {
        set_loop_error(errp, path);
        return true;
    }
    return false;
}

/*
 * A format's backing file: from the "backing" option (null: none, a node
 * name, or options), else from the name and format the image records.
 */
static bool open_backing(BlockNode *bs, json_t *options, int flags,
                         GError **errp)
{
    json_t *ref = json_object_get(options, "backing");
    GError *err = NULL;
    char *path = NULL;
    bool implicit = false;

    g_strlcpy(bs->auto_backing_file, bs->backing_file,
              sizeof(bs->auto_backing_file));
    if (ref && json_is_string(ref) && !json_string_value(ref)[0]) {
        /* QEMU still takes "" for null, with its warn_report(). */
        const char *prog = g_get_prgname();
        warn_print("%s%swarning: Use of \"backing\": \"\" is deprecated; "
                   "use \"backing\": null instead",
                   prog ? prog : "", prog ? ": " : "");
        json_object_del(options, "backing");
        return true;
    }
    if (ref && json_is_null(ref)) {
        json_object_del(options, "backing");
        return true;
    }
    if (flags & NODE_O_NO_BACKING) {
        /*
         * As QEMU: options for a backing file that is not opened are left
         * over, and refused as unknown options of the format.
         */
        return true;
    }
    if (!ref || !json_is_string(ref)) {
        json_t *sub = opts_take_subtree(options, "backing");
        /*
         * As QEMU: the name in the header is used unless the options name
         * the storage (file.filename); other options (driver, node names,
         * cache modes) only shape how that file is opened.
         */
        bool named = sub && (opts_has_key(sub, "file.filename") ||
                             json_object_get(sub, "filename"));
        if (!named && !bs->backing_file[0] &&
            (!sub || json_object_size(sub) == 0)) {
            json_decref(sub);
            return true;
        }
        /*
         * As QEMU: only a backing opened from the header's name with no
         * options of its own is the one the header means.
         */
        implicit = !sub || json_object_size(sub) == 0;
        if (!sub) {
            sub = json_object();
        }
        if (!named && bs->backing_file[0]) {
            path = filename_backing_path(bs, bs->backing_file, errp);
            if (!path) {
                json_decref(sub);
                return false;
            }
        }
        if (bs->backing_format[0] && !json_object_get(sub, "driver")) {
            json_object_set_new(sub, "driver",
                                json_string(bs->backing_format));
        }
        json_object_set_new(options, "backing", sub);
        if (backing_loops(bs, path, errp)) {
            g_free(path);
            return false;
        }
    }
    backing_opens = g_slist_prepend(backing_opens, bs);
    BlockChild *c = open_child(bs, options, "backing", path,
                               CHILD_ROLE_COW, false, &err);
    backing_opens = g_slist_remove(backing_opens, bs);
    g_free(path);
    if (!c) {
        if (!node_error_is_backing_loop(err)) {
            error_prefix(&err, "Could not open backing file: ");
        }
        error_propagate(errp, err);
        return false;
    }
    if (implicit) {
        node_backing_opened_from_header(bs);
    }
    return true;
}

/* ---- In-flight accounting ---- */

void node_inc_in_flight(BlockNode *bs)
{
    g_atomic_int_inc(&bs->in_flight);
}

void node_dec_in_flight(BlockNode *bs)
{
    g_assert(g_atomic_int_get(&bs->in_flight) > 0);
    if (g_atomic_int_dec_and_test(&bs->in_flight)) {
        drain_kick();
    }
}
