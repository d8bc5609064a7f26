/*
 * object-add, object-del, query-iothreads and x-blockdev-set-iothread.
 *
 * Objects live in one table, which is also the child table QEMU's
 * /objects container has: qom-list and query-iothreads walk children in
 * that table's order, so it is a glib hash table that sees the same
 * inserts and removes as QEMU's (an object whose creation fails after it
 * was named is inserted and removed again, as QEMU adds the child before
 * completing the object).
 */
#include <string.h>

#include "strata/backend.h"
#include "strata/block.h"
#include "strata/error.h"
#include "strata/secret.h"
#include "strata/id.h"
#include "qapi-commands.h"
#include "objects.h"

static GHashTable *objects; /* id -> UserObject, in QEMU's iteration order */

static bool root_exists;

void user_objects_root_touch(void)
{
    root_exists = true;
}

bool user_objects_root_exists(void)
{
    return root_exists;
}

static GHashTable *table(void)
{
    if (!objects) {
        objects = g_hash_table_new(g_str_hash, g_str_equal);
    }
    return objects;
}

UserObject *user_object_find(const char *id)
{
    return objects ? g_hash_table_lookup(objects, id) : NULL;
}

GPtrArray *user_objects_in_qom_order(void)
{
    GPtrArray *a = g_ptr_array_new();
    GHashTableIter it;
    gpointer k, v;

    if (objects) {
        g_hash_table_iter_init(&it, objects);
        while (g_hash_table_iter_next(&it, &k, &v)) {
            g_ptr_array_add(a, v);
        }
    }
    return a;
}

static void user_object_free(UserObject *o)
{
    if (o->type == OBJECT_TYPE_SECRET) {
        secret_object_del(o->id);
        qapi_free_SecretProperties_members(&o->secret);
    }
    iothread_free(o->iothread);
    memory_backend_free(o->memory);
    if (o->throttle) {
        throttle_group_destroy(o->throttle);
    }
    g_free(o->id);
    g_free(o);
}

static void iothread_params_from(const IothreadProperties *p,
                                 IOThreadParams *out)
{
    iothread_params_default(out);
    if (p->has_poll_max_ns) {
        out->poll_max_ns = p->poll_max_ns;
    }
    if (p->has_poll_grow) {
        out->poll_grow = p->poll_grow;
    }
    if (p->has_poll_shrink) {
        out->poll_shrink = p->poll_shrink;
    }
    if (p->has_aio_max_batch) {
        out->aio_max_batch = p->aio_max_batch;
    }
    if (p->has_thread_pool_min) {
        out->thread_pool_min = p->thread_pool_min;
    }
    if (p->has_thread_pool_max) {
        out->thread_pool_max = p->thread_pool_max;
    }
}

/* The checks QEMU's property setters make, before the object is named. */
static bool iothread_setters_check(const IothreadProperties *p,
                                   GError **errp)
{
    const struct { bool has; int64_t v; const char *name; } props[] = {
        { p->has_aio_max_batch, p->aio_max_batch, "aio-max-batch" },
        { p->has_thread_pool_min, p->thread_pool_min, "thread-pool-min" },
        { p->has_thread_pool_max, p->thread_pool_max, "thread-pool-max" },
        { p->has_poll_max_ns, p->poll_max_ns, "poll-max-ns" },
        { p->has_poll_grow, p->poll_grow, "poll-grow" },
        { p->has_poll_shrink, p->poll_shrink, "poll-shrink" },
    };
    for (size_t i = 0; i < G_N_ELEMENTS(props); i++) {
        if (props[i].has && props[i].v < 0) {
            error_setg(errp, "%s value must be in range [0, %" G_GINT64_FORMAT
                       "]", props[i].name, (gint64)INT64_MAX);
            return false;
        }
    }
    return true;
}

void qmp_object_add(ObjectOptions *arg, GError **errp)
{
    if (!id_wellformed(arg->id)) {
        error_setg(errp, "Parameter 'id' expects an identifier");
        return;
    }
    /* property setters first, as QEMU sets them on the new object */
    if (arg->qom_type == OBJECT_TYPE_IOTHREAD &&
        !iothread_setters_check(&arg->u.iothread, errp)) {
        return;
    }
    ThrottleConfig tcfg;
    if (arg->qom_type == OBJECT_TYPE_THROTTLE_GROUP &&
        !throttle_object_config(&arg->u.throttle_group, &tcfg, errp)) {
        return;
    }
    bool memory = arg->qom_type == OBJECT_TYPE_MEMORY_BACKEND_FILE ||
                  arg->qom_type == OBJECT_TYPE_MEMORY_BACKEND_MEMFD;
    if (memory && !memory_backend_setters_check(arg, errp)) {
        return;
    }
    if (arg->qom_type == OBJECT_TYPE_SECRET && arg->u.secret.has_loaded) {
        error_setg(errp, "Property 'secret.loaded' is not writable");
        return;
    }
    user_objects_root_touch();
    if (user_object_find(arg->id)) {
        error_setg(errp, "attempt to add duplicate property '%s' to object "
                   "(type 'container')", arg->id);
        return;
    }

    UserObject *o = g_new0(UserObject, 1);
    o->id = g_strdup(arg->id);
    o->type = arg->qom_type;
    g_hash_table_insert(table(), o->id, o);

    bool ok;
    if (o->type == OBJECT_TYPE_IOTHREAD) {
        IOThreadParams p;
        iothread_params_from(&arg->u.iothread, &p);
        o->iothread = iothread_new(o->id, &p, errp);
        ok = o->iothread != NULL;
    } else if (o->type == OBJECT_TYPE_THROTTLE_GROUP) {
        /* the group takes the object's id as its name */
        o->throttle = throttle_group_create(o->id, &tcfg, errp);
        ok = o->throttle != NULL;
    } else if (memory) {
        o->memory = memory_backend_new(o->id, arg, errp);
        ok = o->memory != NULL;
    } else {
        SecretProperties *s = &arg->u.secret;
        SecretSpec spec = {
            .data = s->data, .file = s->file, .keyid = s->keyid, .iv = s->iv,
            .base64 = s->has_format && s->format == QCRYPTO_SECRET_FORMAT_BASE64,
        };
        ok = secret_object_add(o->id, &spec, errp);
        if (ok) {
            /* the properties stay readable (qom-get), as QEMU keeps them */
            o->secret = *s;
            memset(s, 0, sizeof(*s));
        }
    }
    if (!ok) {
        g_hash_table_remove(objects, o->id);
        o->type = OBJECT_TYPE__MAX;  /* nothing of a secret registered */
        user_object_free(o);
    }
}

void qmp_object_del(const char *id, GError **errp)
{
    UserObject *o = user_object_find(id);

    user_objects_root_touch();
    if (!o) {
        error_setg(errp, "object '%s' not found", id);
        return;
    }
    /* QEMU's can_be_deleted: no throttle node may use the group */
    if (o->throttle && throttle_group_in_use(o->throttle)) {
        error_setg(errp, "object '%s' is in use, can not be deleted", id);
        return;
    }
    if (o->memory && !memory_backend_can_delete(o->memory, id, errp)) {
        return;
    }
    /*
     * QEMU 7.2 lets an iothread in use go (and then fails an assertion):
     * refuse while a node runs in it.  A secret is read when an image is
     * opened and may go afterwards, as in QEMU.
     */
    if (o->iothread) {
        StrataLoop *loop = iothread_loop(o->iothread);
        for (BlockNode *bs = node_next(NULL); bs; bs = node_next(bs)) {
            if (node_loop(bs) == loop) {
                error_setg(errp, "Cannot delete iothread '%s': node '%s' "
                           "runs in it (move it with x-blockdev-set-iothread "
                           "first)", id, node_get_name(bs));
                return;
            }
        }
    }
    g_hash_table_remove(objects, id);
    user_object_free(o);
}

void user_objects_cleanup(void)
{
    if (!objects) {
        return;
    }
    GPtrArray *all = user_objects_in_qom_order();
    g_hash_table_destroy(objects);
    objects = NULL;
    for (guint i = 0; i < all->len; i++) {
        user_object_free(all->pdata[i]);
    }
    g_ptr_array_free(all, TRUE);
}

IOThreadInfoList *qmp_query_iothreads(GError **errp)
{
    GPtrArray *all = user_objects_in_qom_order();
    IOThreadInfoList *head = NULL, **tail = &head;

    for (guint i = 0; i < all->len; i++) {
        UserObject *o = all->pdata[i];
        if (o->type != OBJECT_TYPE_IOTHREAD) {
            continue;
        }
        const IOThreadParams *p = iothread_params(o->iothread);
        IOThreadInfo *info = g_new0(IOThreadInfo, 1);
        info->id = g_strdup(o->id);
        info->thread_id = iothread_thread_id(o->iothread);
        info->poll_max_ns = p->poll_max_ns;
        info->poll_grow = p->poll_grow;
        info->poll_shrink = p->poll_shrink;
        info->aio_max_batch = p->aio_max_batch;
        *tail = g_new0(IOThreadInfoList, 1);
        (*tail)->value = info;
        tail = &(*tail)->next;
    }
    g_ptr_array_free(all, TRUE);
    return head;
}

/*
 * QEMU finds the iothread by QOM path, partial or absolute, of type
 * iothread: "io0", "objects/io0" and "/objects/io0" all name /objects/io0
 * (empty components are skipped); "" is a partial path that every object
 * ends with, so it names the iothread when there is exactly one.
 */
UserObject *user_iothread_by_path(const char *path)
{
    if (!*path) {
        GPtrArray *all = user_objects_in_qom_order();
        UserObject *found = NULL;
        int count = 0;
        for (guint i = 0; i < all->len; i++) {
            UserObject *o = all->pdata[i];
            if (o->type == OBJECT_TYPE_IOTHREAD) {
                found = o;
                count++;
            }
        }
        g_ptr_array_free(all, TRUE);
        return count == 1 ? found : NULL;
    }

    char **parts = g_strsplit(path, "/", 0);
    const char *comp[3];
    int n = 0;
    UserObject *o = NULL;

    for (int i = 0; parts[i]; i++) {
        if (*parts[i]) {
            if (n == 2) {
                goto out;
            }
            comp[n++] = parts[i];
        }
    }
    if (n == 2 ? !strcmp(comp[0], "objects") : n == 1 && path[0] != '/') {
        o = user_object_find(comp[n - 1]);
    }
    if (o && o->type != OBJECT_TYPE_IOTHREAD) {
        o = NULL;
    }
out:
    g_strfreev(parts);
    return o;
}

/*
 * QEMU's checks, then node_set_loop(): the node moves with everything
 * connected to it, or the parent that cannot follow says why.
 */
void qmp_x_blockdev_set_iothread(const char *node_name, StrOrNull *iothread,
                                 bool has_force, bool force, GError **errp)
{
    BlockNode *bs = node_find(node_name);

    /* QEMU's checks before a node changes loops. */
    if (!bs) {
        error_setg(errp, "Failed to find node with node-name='%s'",
                   node_name);
        return;
    }
    if (!(has_force && force) && node_has_backend(bs)) {
        error_setg(errp, "Node %s is associated with a BlockBackend and "
                   "could be in use (use force=true to override this check)",
                   node_name);
        return;
    }
    StrataLoop *loop = NULL;
    if (iothread->type == QTYPE_QSTRING) {
        user_objects_root_touch();
        UserObject *o = user_iothread_by_path(iothread->u.s);
        if (!o) {
            error_setg(errp, "Cannot find iothread %s", iothread->u.s);
            return;
        }
        loop = iothread_loop(o->iothread);
    }
    node_set_loop(bs, loop, errp);
}
