/*
 * Node filenames: the name a node reports (a plain name, or "json:" and
 * its options), the names given to open ("json:{...}", a "proto:" prefix)
 * and backing file names resolved against the image naming them.  Opening
 * itself is in node.c.
 */
#include <string.h>
#include "block-int.h"
#include "filename.h"
#include "strata/json-out.h"

/* ---- Filenames (QEMU's bdrv_refresh_filename) ---- */

/*
 * A node's filename is a plain name ("img", "blkdebug:c:img",
 * "null-co://") when opening that name would rebuild the node as it is;
 * otherwise it is "json:" and the node's full open options: its "driver",
 * its "filename" if it has one, the options that change what the image
 * reads as (QEMU's strong runtime options) and, under the edge names,
 * those of its children (the backing child only when it is not the one the
 * image header names).  QEMU prints that dictionary in its QDict hash
 * order, which we reproduce.
 */

/* QEMU's strong runtime options, "x." meaning every key under x. */
static const char *const *strong_options(const BlockDriver *drv)
{
    static const char *const raw[] = { "offset", "size", NULL };
    static const char *const null[] = { "size", "read-zeroes", NULL };
    static const char *const blkdebug[] = {
        "config", "inject-error.", "set-state.", "align", "max-transfer",
        "opt-write-zero", "max-write-zero", "opt-discard", "max-discard",
        NULL,
    };
    static const char *const luks[] = { "key-secret", NULL };
    static const char *const qcow2[] = { "encrypt.key-secret", NULL };
    static const char *const quorum[] = {
        "vote-threshold", "blkverify", "rewrite-corrupted", "read-pattern",
        NULL,
    };
    static const char *const throttle[] = { "throttle-group", NULL };
    static const char *const none[] = { NULL };
    const char *name = drv->format_name;

    if (!strcmp(name, "throttle")) {
        return throttle;
    }
    if (!strcmp(name, "luks")) {
        return luks;
    }
    if (!strcmp(name, "qcow2")) {
        return qcow2;
    }
    if (!strcmp(name, "raw")) {
        return raw;
    }
    if (!strcmp(name, "quorum")) {
        return quorum;
    }
    if (!strcmp(name, "null-co") || !strcmp(name, "null-aio")) {
        return null;
    }
    return !strcmp(name, "blkdebug") ? blkdebug : none;
}

/*
 * The backing child is not the one the image header names (or the header
 * names one and there is none).  As QEMU, the comparison is by name, not
 * by file: the backing node's filename against the name expected for it
 * (bs->auto_backing_file), so a backing given by reference while the
 * header names the same file by a relative path counts as overridden; a
 * backing opened from that relative name does not, as its name is then
 * what was opened.  A tool that opened without backing files on purpose
 * (qemu-img's info) does not count as overriding it.
 */
static bool backing_overridden(BlockNode *bs, int flags)
{
    if (bs->backing) {
        return strcmp(bs->auto_backing_file,
                      child_node(bs->backing)->filename) != 0;
    }
    return bs->auto_backing_file[0] && !(flags & NODE_O_NO_BACKING);
}

bool node_backing_overridden(BlockNode *bs)
{
    return backing_overridden(bs, bs->open_flags);
}

void node_backing_opened_from_header(BlockNode *bs)
{
    g_strlcpy(bs->auto_backing_file, child_node(bs->backing)->filename,
              sizeof(bs->auto_backing_file));
}

/*
 * The order QEMU's list-like options (blkdebug's inject-error.N.*) come out
 * in, where several share a hash bucket: as measured against QEMU 7.2, the
 * order of their full dotted names from the top of the options (path) in
 * QEMU's hash table, and among equal hashes the order they were given in.
 */
typedef struct {
    const char *key;
    json_t *value;
    unsigned full_bucket;
    size_t index;
} PrefixedOpt;

static int prefixed_opt_cmp(const void *a, const void *b)
{
    const PrefixedOpt *x = a, *y = b;

    if (x->full_bucket != y->full_bucket) {
        return x->full_bucket < y->full_bucket ? -1 : 1;
    }
    return x->index < y->index ? -1 : (x->index > y->index ? 1 : 0);
}

/*
 * bs's full open options (path: where bs's options sit in the options the
 * graph was opened with, "file." for the storage of a format); *strong
 * says whether options other than driver and filename were among them.
 */
static json_t *full_open_options(BlockNode *bs, const char *path, int flags,
                                 bool *strong)
{
    /* An implicit filter is its child, to its parents' names too. */
    if (bs->implicit && node_filtered_child(bs)) {
        return full_open_options(node_filtered_child(bs), path, 0, strong);
    }
    json_t *opts = json_object();
    json_t *flat = opts_flatten(bs->options);
    const char *const *strong_opts = strong_options(bs->drv);
    bool overridden = backing_overridden(bs, flags);
    json_t *drv_v = json_object_get(flat, "driver");
    size_t nflat = json_object_size(flat), n = 0, index = 0;
    PrefixedOpt *prefixed = g_new(PrefixedOpt, nflat ? nflat : 1);
    const char *k;
    json_t *v;

    *strong = false;
    json_object_set_new(opts, "driver", drv_v ? json_incref(drv_v)
                        : json_string(bs->drv->format_name));
    if ((v = json_object_get(flat, "filename"))) {
        json_object_set(opts, "filename", v);
    }
    for (const char *const *o = strong_opts; *o; o++) {
        if ((*o)[strlen(*o) - 1] != '.' && (v = json_object_get(flat, *o))) {
            json_object_set(opts, *o, v);
            *strong = true;
        }
    }
    json_object_foreach(flat, k, v) {
        for (const char *const *o = strong_opts; *o; o++) {
            size_t len = strlen(*o);
            if ((*o)[len - 1] == '.' && !strncmp(k, *o, len)) {
                char *full = g_strconcat(path, k, NULL);
                prefixed[n++] = (PrefixedOpt){ k, v, json_qdict_bucket(full),
                                               index };
                g_free(full);
                break;
            }
        }
        index++;
    }
    qsort(prefixed, n, sizeof(*prefixed), prefixed_opt_cmp);
    /* Inserted last first: one bucket lists its newest entry first. */
    for (size_t i = n; i-- > 0;) {
        json_object_set(opts, prefixed[i].key, prefixed[i].value);
        *strong = true;
    }
    g_free(prefixed);
    json_decref(flat);
    /* QEMU lists children newest first. */
    for (GList *l = g_list_last(bs->children); l; l = l->prev) {
        BlockChild *c = l->data;
        bool child_strong;
        char *child_path;
        if (c == bs->backing && !overridden) {
            continue;
        }
        child_path = g_strconcat(path, c->name, ".", NULL);
        json_t *copts = full_open_options(c->bs, child_path, 0,
                                          &child_strong);
        g_free(child_path);
        /*
         * Edges named "list.N" (quorum's children) are given as a list,
         * in their order, as QEMU's quorum gathers them.
         */
        const char *dot = strrchr(c->name, '.');
        if (dot && dot[1] && !dot[1 + strspn(dot + 1, "0123456789")]) {
            char *list = g_strndup(c->name, (gsize)(dot - c->name));
            json_t *arr = json_object_get(opts, list);
            if (!arr) {
                arr = json_array();
                json_object_set_new(opts, list, arr);
            }
            json_array_insert_new(arr, 0, copts);
            g_free(list);
        } else {
            json_object_set_new(opts, c->name, copts);
        }
    }
    if (overridden && !bs->backing) {
        json_object_set_new(opts, "backing", json_null());
    }
    *strong |= overridden;
    return opts;
}

static bool filename_is_plain(const char *name)
{
    return name[0] && !g_str_has_prefix(name, "json:");
}

/* Set bs->filename once bs and its children are open. */
void filename_refresh(BlockNode *bs, int flags)
{
    BlockNode *child = node_primary_child(bs);
    bool strong;

    if (bs->implicit && node_filtered_child(bs)) {
        g_strlcpy(bs->filename, node_filtered_child(bs)->filename,
                  sizeof(bs->filename));
        return;
    }
    json_t *opts = full_open_options(bs, "", flags, &strong);

    if (bs->drv->refresh_filename) {
        /* The driver writes its plain form, or leaves it empty. */
        bs->filename[0] = '\0';
        bs->drv->refresh_filename(bs);
    } else if (child) {
        /* A format over a protocol node that opening its name recreates. */
        bs->filename[0] = '\0';
        if (filename_is_plain(child->filename) && child->drv->protocol_name &&
            !bs->drv->is_filter && !strong) {
            g_strlcpy(bs->filename, child->filename, sizeof(bs->filename));
        }
    } else if (strong) {
        /* Storage whose options change what it reads as (null-co's size). */
        bs->filename[0] = '\0';
    }
    if (!bs->filename[0]) {
        GString *json = g_string_new("json:");
        json_out_compact(json, opts);
        if (json->len >= sizeof(bs->filename)) {
            /* Truncated, with a hint that it is, as QEMU does. */
            g_string_truncate(json, sizeof(bs->filename) - 4);
            g_string_append(json, "...");
        }
        g_strlcpy(bs->filename, json->str, sizeof(bs->filename));
        g_string_free(json, TRUE);
    }
    json_decref(opts);
}

/* Children first, as QEMU's bdrv_refresh_filename. */
void node_refresh_filename_tree(BlockNode *bs)
{
    for (GList *l = bs->children; l; l = l->next) {
        node_refresh_filename_tree(((BlockChild *)l->data)->bs);
    }
    filename_refresh(bs, bs->open_flags);
}

void node_refresh_filename(BlockNode *bs)
{
    filename_refresh(bs, bs->open_flags);
    /* A parent's json: name holds its children's options. */
    for (GList *l = bs->parents; l; l = l->next) {
        BlockChild *c = l->data;
        if (c->klass->parent_is_node) {
            node_refresh_filename(c->opaque);
        }
    }
}

/* ---- Names given to open ---- */

/* Find a protocol driver from a "proto:rest" filename, NULL if none. */
const BlockDriver *filename_find_protocol(const char *filename)
{
    const char *colon = strchr(filename, ':');
    if (!colon) {
        return NULL;
    }
    /* A slash before the colon means a path, e.g. "./a:b". */
    const char *slash = strchr(filename, '/');
    if (slash && slash < colon) {
        return NULL;
    }
    char *proto = g_strndup(filename, colon - filename);
    const BlockDriver *found = driver_find_protocol(proto);
    g_free(proto);
    return found && found->parse_filename ? found : NULL;
}

/* A "proto:" prefix naming no driver (with no path separator before it). */
bool filename_unknown_protocol(const char *filename, GError **errp)
{
    const char *colon = strchr(filename, ':');
    const char *slash = strchr(filename, '/');
    if (!colon || (slash && slash < colon) || colon == filename) {
        return false;
    }
    for (const char *p = filename; p < colon; p++) {
        if (!g_ascii_isalnum(*p) && *p != '-' && *p != '_' && *p != '+') {
            return false;
        }
    }
    char *proto = g_strndup(filename, colon - filename);
    error_setg(errp, "Unknown protocol '%s'", proto);
    g_free(proto);
    return true;
}

/* "json:{...}" with QEMU's messages for what is wrong with it. */
json_t *filename_parse_json(const char *text, GError **errp)
{
    GError *err = NULL;
    json_t *j = opts_parse_json(text, &err);
    if (!j) {
        error_setg(errp, "Could not parse the JSON options: %s", err->message);
        g_error_free(err);
        return NULL;
    }
    if (!json_is_object(j)) {
        error_setg(errp, "Invalid JSON object given");
        json_decref(j);
        return NULL;
    }
    return j;
}

/* ---- Backing file names ---- */

/*
 * The backing file's name as a path: relative names are relative to bs.
 * NULL and an error when bs's storage has no directory.
 */
char *filename_backing_path(BlockNode *bs, const char *name, GError **errp)
{
    size_t n = strcspn(name, ":/");

    if (name[0] == '/' || g_str_has_prefix(name, "json:") || name[n] == ':') {
        return g_strdup(name);
    }
    /*
     * The directory of the file holding the image, as QEMU's
     * bdrv_dirname(): down the chain of storage children (a format over
     * blkdebug over a file), as a node opened from options alone has no
     * filename of its own yet when its backing file is opened.
     */
    const BlockNode *holder = bs;
    while (holder->file) {
        holder = child_node(holder->file);
    }
    const char *where = holder->filename;
    /*
     * Storage known only by its options (a quorum, null-co with
     * a size) has no one directory: QEMU's bdrv_dirname() refuses then.
     */
    if (!filename_is_plain(where)) {
        error_setg(errp, "Cannot generate a base directory for %s nodes",
                   holder->drv->format_name);
        return NULL;
    }
    /*
     * The name is appended to everything up to the last slash, as written
     * (QEMU's path_combine): "./top" gives "./base", which info shows as the
     * actual path of "base".  A protocol prefix ("proto:x") counts as
     * part of the directory.
     */
    const char *dir_end = where;
    size_t p = strcspn(where, ":/");
    if (where[p] == ':') {
        dir_end = where + p + 1;
    }
    const char *slash = strrchr(where, '/');
    if (slash && slash + 1 > dir_end) {
        dir_end = slash + 1;
    }
    return g_strdup_printf("%.*s%s", (int)(dir_end - where), where, name);
}

char *node_get_full_backing_filename(BlockNode *bs)
{
    return bs->backing_file[0] ? filename_backing_path(bs, bs->backing_file, NULL)
                               : NULL;
}
