/*
 * qom-list, qom-get, qom-set and qom-list-types over the objects the daemon
 * has, laid out as QEMU's QOM tree: the root container with /objects (the
 * user-creatable objects) and /chardevs.  Paths resolve as QEMU resolves
 * them (absolute, or partial when unambiguous); properties, their types and
 * their order are QEMU 7.2's for these types.
 */
#include <string.h>

#include "strata/chardev.h"
#include "strata/error.h"
#include "strata/iothread.h"
#include "qapi-commands.h"
#include "objects.h"

typedef enum { N_CONTAINER, N_IOTHREAD, N_SECRET, N_CHARDEV, N_THROTTLE,
               N_MEMORY }
    NodeKind;

typedef struct QomNode {
    char *name;
    char *path;
    NodeKind kind;
    UserObject *obj;            /* N_IOTHREAD, N_SECRET, N_THROTTLE */
    ChardevStatus *chr;         /* N_CHARDEV */
    GPtrArray *children;        /* QomNode, in QEMU's iteration order */
} QomNode;

typedef struct {
    const char *name, *type;
} Prop;

/* Each type's properties in QEMU's qom-list order. */
static const Prop container_props[] = { { "type", "string" }, { NULL } };
static const Prop iothread_props[] = {
    { "type", "string" }, { "thread-pool-min", "int" },
    { "aio-max-batch", "int" }, { "thread-pool-max", "int" },
    { "poll-max-ns", "int" }, { "poll-grow", "int" },
    { "poll-shrink", "int" }, { NULL },
};
static const Prop secret_props[] = {
    { "type", "string" }, { "iv", "string" }, { "keyid", "string" },
    { "loaded", "bool" }, { "format", "QCryptoSecretFormat" },
    { "file", "string" }, { "data", "string" }, { NULL },
};
static const Prop socket_props[] = {
    { "type", "string" }, { "connected", "bool" },
    { "addr", "SocketAddress" }, { NULL },
};
static const Prop throttle_props[] = {
    { "type", "string" }, { "x-bps-write-max-length", "int" },
    { "x-iops-total-max-length", "int" }, { "x-iops-size", "int" },
    { "limits", "ThrottleLimits" }, { "x-bps-total", "int" },
    { "x-iops-read-max-length", "int" }, { "x-bps-write", "int" },
    { "x-iops-write-max-length", "int" }, { "x-bps-read-max", "int" },
    { "x-iops-read-max", "int" }, { "x-bps-total-max", "int" },
    { "x-bps-read-max-length", "int" }, { "x-iops-read", "int" },
    { "x-bps-read", "int" }, { "x-bps-write-max", "int" },
    { "x-iops-total-max", "int" }, { "x-iops-total", "int" },
    { "x-iops-write", "int" }, { "x-bps-total-max-length", "int" },
    { "x-iops-write-max", "int" }, { NULL },
};
static const Prop null_props[] = { { "type", "string" }, { NULL } };
/* memory backends: QEMU 7.2's, less their memory-region child */
#define MEMORY_BACKEND_PROPS \
    { "type", "string" }, { "share", "bool" }, { "size", "int" }, \
    { "dump", "bool" }, { "prealloc-threads", "int" }, \
    { "x-use-canonical-path-for-ramblock-id", "bool" }, \
    { "policy", "HostMemPolicy" }, \
    { "prealloc-context", "link<thread-context>" }, \
    { "prealloc", "bool" }, { "reserve", "bool" }, \
    { "host-nodes", "int" }, { "merge", "bool" }
static const Prop memfd_props[] = {
    MEMORY_BACKEND_PROPS, { "hugetlb", "bool" }, { "seal", "bool" },
    { "hugetlbsize", "int" }, { NULL },
};
static const Prop memfile_props[] = {
    MEMORY_BACKEND_PROPS, { "readonly", "bool" }, { "align", "int" },
    { "pmem", "bool" }, { "mem-path", "string" }, { "discard-data", "bool" },
    { NULL },
};

static const char *node_type(const QomNode *n)
{
    switch (n->kind) {
    case N_IOTHREAD:
        return "iothread";
    case N_SECRET:
        return "secret";
    case N_THROTTLE:
        return "throttle-group";
    case N_MEMORY:
        return ObjectType_str(n->obj->type);
    case N_CHARDEV:
        return n->chr->is_socket ? "chardev-socket" : "chardev-null";
    default:
        return "container";
    }
}

static const Prop *node_props(const QomNode *n)
{
    switch (n->kind) {
    case N_IOTHREAD:
        return iothread_props;
    case N_SECRET:
        return secret_props;
    case N_THROTTLE:
        return throttle_props;
    case N_MEMORY:
        return n->obj->type == OBJECT_TYPE_MEMORY_BACKEND_FILE
               ? memfile_props : memfd_props;
    case N_CHARDEV:
        return n->chr->is_socket ? socket_props : null_props;
    default:
        return container_props;
    }
}

static QomNode *node_new(QomNode *parent, const char *name, NodeKind kind)
{
    QomNode *n = g_new0(QomNode, 1);
    n->name = g_strdup(name);
    n->kind = kind;
    n->children = g_ptr_array_new();
    if (parent) {
        n->path = g_strdup_printf("%s/%s", parent->path, name);
        g_ptr_array_add(parent->children, n);
    } else {
        n->path = g_strdup("");
    }
    return n;
}

static void node_free(QomNode *n)
{
    for (guint i = 0; i < n->children->len; i++) {
        node_free(n->children->pdata[i]);
    }
    g_ptr_array_free(n->children, TRUE);
    if (n->chr) {
        chardev_status_free(n->chr);
    }
    g_free(n->name);
    g_free(n->path);
    g_free(n);
}

/* The tree as it is now. */
static QomNode *tree_build(void)
{
    QomNode *root = node_new(NULL, "", N_CONTAINER);
    /* the root's two children, in the order its hash table gives them */
    GHashTable *h = g_hash_table_new(g_str_hash, g_str_equal);
    g_hash_table_add(h, "chardevs");
    if (user_objects_root_exists()) {
        g_hash_table_add(h, "objects");
    }
    GHashTableIter it;
    gpointer k;
    g_hash_table_iter_init(&it, h);
    while (g_hash_table_iter_next(&it, &k, NULL)) {
        QomNode *c = node_new(root, k, N_CONTAINER);
        if (!strcmp(k, "objects")) {
            GPtrArray *objs = user_objects_in_qom_order();
            for (guint i = 0; i < objs->len; i++) {
                UserObject *o = objs->pdata[i];
                QomNode *n = node_new(c, o->id,
                    o->type == OBJECT_TYPE_IOTHREAD ? N_IOTHREAD
                    : o->type == OBJECT_TYPE_THROTTLE_GROUP ? N_THROTTLE
                    : o->memory ? N_MEMORY
                    : N_SECRET);
                n->obj = o;
            }
            g_ptr_array_free(objs, TRUE);
        } else {
            GPtrArray *chrs = chardev_list();
            for (guint i = 0; i < chrs->len; i++) {
                ChardevStatus *st = chrs->pdata[i];
                QomNode *n = node_new(c, st->id, N_CHARDEV);
                n->chr = st;
                chrs->pdata[i] = NULL;
            }
            g_ptr_array_set_free_func(chrs, NULL);
            g_ptr_array_free(chrs, TRUE);
        }
    }
    g_hash_table_destroy(h);
    return root;
}

static QomNode *child_named(QomNode *n, const char *name)
{
    for (guint i = 0; i < n->children->len; i++) {
        QomNode *c = n->children->pdata[i];
        if (!strcmp(c->name, name)) {
            return c;
        }
    }
    return NULL;
}

/* QEMU's object_resolve_abs_path(): empty components are skipped. */
static QomNode *resolve_abs(QomNode *n, char **parts)
{
    for (; *parts; parts++) {
        if (!**parts) {
            continue;
        }
        n = child_named(n, *parts);
        if (!n) {
            return NULL;
        }
    }
    return n;
}

/* QEMU's object_resolve_partial_path(): the one match anywhere below n. */
static QomNode *resolve_partial(QomNode *n, char **parts, bool *ambiguous)
{
    QomNode *found = resolve_abs(n, parts);

    for (guint i = 0; i < n->children->len; i++) {
        QomNode *f = resolve_partial(n->children->pdata[i], parts, ambiguous);
        if (f) {
            if (found) {
                *ambiguous = true;
                return NULL;
            }
            found = f;
        }
        if (*ambiguous) {
            return NULL;
        }
    }
    return found;
}

static QomNode *resolve(QomNode *root, const char *path, GError **errp)
{
    char **parts = g_strsplit(path, "/", 0);
    bool ambiguous = false;
    QomNode *n;

    if (!parts[0] || *parts[0]) {
        n = resolve_partial(root, parts, &ambiguous);
    } else {
        n = resolve_abs(root, parts + 1);
    }
    g_strfreev(parts);
    if (!n) {
        if (ambiguous) {
            error_setg(errp, "Path '%s' is ambiguous", path);
        } else {
            g_set_error(errp, STRATA_ERROR, STRATA_ERROR_DEVICE_NOT_FOUND,
                        "Device '%s' not found", path);
        }
    }
    return n;
}

ObjectPropertyInfoList *qmp_qom_list(const char *path, GError **errp)
{
    QomNode *root = tree_build();
    QomNode *n = resolve(root, path, errp);
    ObjectPropertyInfoList *head = NULL, **tail = &head;

    if (!n) {
        node_free(root);
        return NULL;
    }
    for (const Prop *p = node_props(n); p->name; p++) {
        *tail = g_new0(ObjectPropertyInfoList, 1);
        (*tail)->value = g_new0(ObjectPropertyInfo, 1);
        (*tail)->value->name = g_strdup(p->name);
        (*tail)->value->type = g_strdup(p->type);
        tail = &(*tail)->next;
    }
    if (n->kind == N_MEMORY) {
        /* the backend's memory region (not modelled further) */
        *tail = g_new0(ObjectPropertyInfoList, 1);
        (*tail)->value = g_new0(ObjectPropertyInfo, 1);
        (*tail)->value->name = g_strdup_printf("%s[0]", n->name);
        (*tail)->value->type = g_strdup("child<memory-region>");
        tail = &(*tail)->next;
    }
    /* children last, the reverse of their iteration order, as QEMU lists */
    for (guint i = n->children->len; i-- > 0;) {
        QomNode *c = n->children->pdata[i];
        *tail = g_new0(ObjectPropertyInfoList, 1);
        (*tail)->value = g_new0(ObjectPropertyInfo, 1);
        (*tail)->value->name = g_strdup(c->name);
        (*tail)->value->type = g_strdup_printf("child<%s>", node_type(c));
        tail = &(*tail)->next;
    }
    node_free(root);
    return head;
}

static bool has_prop(const QomNode *n, const char *name)
{
    for (const Prop *p = node_props(n); p->name; p++) {
        if (!strcmp(p->name, name)) {
            return true;
        }
    }
    return child_named((QomNode *)n, name) != NULL;
}

static char **secret_field(UserObject *o, const char *name)
{
    SecretProperties *s = &o->secret;
    return !strcmp(name, "iv") ? &s->iv : !strcmp(name, "keyid") ? &s->keyid
         : !strcmp(name, "file") ? &s->file
         : !strcmp(name, "data") ? &s->data : NULL;
}

static json_t *chardev_addr(const ChardevStatus *st)
{
    if (st->unix_path && st->unix_flags) {
        return json_pack("{s:b, s:s, s:s, s:b}", "abstract", 0, "path",
                         st->unix_path, "type", "unix", "tight", 1);
    }
    if (st->unix_path) {
        return json_pack("{s:s, s:s}", "path", st->unix_path, "type", "unix");
    }
    if (st->host && st->client) {
        /* the address it was given */
        return json_pack("{s:s, s:s, s:s}", "port", st->port,
                         "host", st->host, "type", "inet");
    }
    if (st->host) {
        /* the address family QEMU's listener ended up with */
        return json_pack("{s:s, s:b, s:s, s:s}", "port", st->port,
                         strchr(st->host, ':') ? "ipv6" : "ipv4", 1,
                         "host", st->host, "type", "inet");
    }
    return json_pack("{s:s}", "type", "fd");
}

json_t *qmp_qom_get(const char *path, const char *property, GError **errp)
{
    QomNode *root = tree_build();
    QomNode *n = resolve(root, path, errp);
    json_t *ret = NULL;

    if (!n) {
        goto out;
    }
    if (!has_prop(n, property)) {
        error_setg(errp, "Property '%s.%s' not found", node_type(n),
                   property);
        goto out;
    }
    QomNode *child = child_named(n, property);
    if (!strcmp(property, "type")) {
        ret = json_string(node_type(n));
    } else if (child) {
        ret = json_string(child->path);
    } else if (n->kind == N_IOTHREAD) {
        IOThreadParams p = *iothread_params(n->obj->iothread);
        ret = json_integer(*iothread_param_field(&p, property));
    } else if (n->kind == N_THROTTLE) {
        ret = throttle_object_get(n->obj, property);
    } else if (n->kind == N_MEMORY) {
        ret = memory_backend_qom_get(n->obj, property);
    } else if (n->kind == N_SECRET) {
        if (!strcmp(property, "loaded")) {
            ret = json_true();
        } else if (!strcmp(property, "format")) {
            ret = json_string(QCryptoSecretFormat_str(
                n->obj->secret.has_format ? n->obj->secret.format
                                          : QCRYPTO_SECRET_FORMAT_RAW));
        } else {
            char *v = *secret_field(n->obj, property);
            ret = json_string(v ? v : "");
        }
    } else if (!strcmp(property, "connected")) {
        ret = json_boolean(n->chr->connected);
    } else {
        ret = chardev_addr(n->chr);
    }
out:
    node_free(root);
    return ret;
}

static bool iothread_set(UserObject *o, const char *property, json_t *value,
                         GError **errp)
{
    if (!json_is_integer(value)) {
        error_setg(errp, "Invalid parameter type for '%s', expected: integer",
                   property);
        return false;
    }
    int64_t v = json_integer_value(value);
    if (v < 0) {
        error_setg(errp, "%s value must be in range [0, %" G_GINT64_FORMAT
                   "]", property, (gint64)INT64_MAX);
        return false;
    }
    IOThreadParams p = *iothread_params(o->iothread);
    *iothread_param_field(&p, property) = v;
    if (g_str_has_prefix(property, "poll-")) {
        /* QEMU's poll setters take the value without more checks */
        iothread_force_params(o->iothread, &p);
        return true;
    }
    /*
     * The event-loop properties are stored, then the loop's parameters
     * applied as a whole: a bad pair is reported, the value kept (QEMU).
     */
    if (!iothread_params_check(&p, errp)) {
        iothread_force_params(o->iothread, &p);
        return false;
    }
    return iothread_set_params(o->iothread, &p, errp);
}

static bool secret_set(UserObject *o, const char *property, json_t *value,
                       GError **errp)
{
    if (!json_is_string(value)) {
        error_setg(errp, "Invalid parameter type for '%s', expected: string",
                   property);
        return false;
    }
    const char *v = json_string_value(value);
    if (!strcmp(property, "format")) {
        int f = QCryptoSecretFormat_parse(v);
        if (f < 0) {
            error_setg(errp, "Parameter '%s' does not accept value '%s'",
                       property, v);
            return false;
        }
        o->secret.has_format = true;
        o->secret.format = f;
        return true;
    }
    /* QEMU keeps the new text; the secret stays what was loaded */
    char **field = secret_field(o, property);
    g_free(*field);
    *field = g_strdup(v);
    return true;
}

void qmp_qom_set(const char *path, const char *property, json_t *value,
                 GError **errp)
{
    QomNode *root = tree_build();
    QomNode *n = resolve(root, path, errp);

    if (!n) {
        goto out;
    }
    if (!has_prop(n, property)) {
        error_setg(errp, "Property '%s.%s' not found", node_type(n),
                   property);
        goto out;
    }
    bool writable = strcmp(property, "type") && !child_named(n, property) &&
                    (n->kind == N_IOTHREAD || n->kind == N_THROTTLE ||
                     n->kind == N_MEMORY ||
                     (n->kind == N_SECRET && strcmp(property, "loaded")));
    if (!writable) {
        error_setg(errp, "Property '%s.%s' is not writable", node_type(n),
                   property);
        goto out;
    }
    if (n->kind == N_IOTHREAD) {
        iothread_set(n->obj, property, value, errp);
    } else if (n->kind == N_THROTTLE) {
        throttle_object_set(n->obj, property, value, errp);
    } else if (n->kind == N_MEMORY) {
        memory_backend_qom_set(n->obj, property, value, errp);
    } else {
        secret_set(n->obj, property, value, errp);
    }
out:
    node_free(root);
}

/*
 * The types strata has, in the order qemu-storage-daemon 7.2 lists them,
 * with their parents and the interfaces they declare.
 */
static const struct {
    const char *name, *parent, *iface;
    bool abstract;
} types[] = {
    { "secret_common", "object", "user-creatable", true },
    { "container", "object", NULL, false },
    { "interface", NULL, NULL, true },
    { "iothread", "event-loop-base", NULL, false },
    { "secret", "secret_common", NULL, false },
    { "chardev-null", "chardev", NULL, false },
    { "event-loop-base", "object", "user-creatable", true },
    { "chardev", "object", NULL, true },
    { "user-creatable", "interface", NULL, true },
    { "chardev-socket", "chardev", NULL, false },
    { "object", NULL, NULL, true },
    { "throttle-group", "object", "user-creatable", false },
};

static int type_index(const char *name)
{
    for (size_t i = 0; i < G_N_ELEMENTS(types); i++) {
        if (!strcmp(types[i].name, name)) {
            return (int)i;
        }
    }
    return -1;
}

/* QEMU's object_class_dynamic_cast(): an ancestor, or an interface of one. */
static bool type_implements(const char *name, const char *target)
{
    for (int i = type_index(name); i >= 0;
         i = types[i].parent ? type_index(types[i].parent) : -1) {
        if (!strcmp(types[i].name, target)) {
            return true;
        }
        if (types[i].iface && type_implements(types[i].iface, target)) {
            return true;
        }
    }
    return false;
}

ObjectTypeInfoList *qmp_qom_list_types(const char *implements,
                                       bool has_abstract, bool abstract,
                                       GError **errp)
{
    ObjectTypeInfoList *head = NULL, **tail = &head;

    for (size_t i = 0; i < G_N_ELEMENTS(types); i++) {
        if (implements && !type_implements(types[i].name, implements)) {
            continue;
        }
        if (types[i].abstract && !(has_abstract && abstract)) {
            continue;
        }
        ObjectTypeInfo *info = g_new0(ObjectTypeInfo, 1);
        info->name = g_strdup(types[i].name);
        if (types[i].abstract) {
            info->has_abstract = true;
            info->abstract = true;
        }
        info->parent = g_strdup(types[i].parent);
        *tail = g_new0(ObjectTypeInfoList, 1);
        (*tail)->value = info;
        tail = &(*tail)->next;
    }
    return head;
}
