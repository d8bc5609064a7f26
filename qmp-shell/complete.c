#include <string.h>
#include "complete.h"
#include "parse.h"

struct ShellSchema {
    GHashTable *types;          /* name -> schema entity (borrowed) */
    GPtrArray *commands;        /* sorted names */
    json_t *schema;             /* owns the entities */
};

static int cmp_names(gconstpointer a, gconstpointer b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

ShellSchema *shell_schema_new(json_t *schema, json_t *commands)
{
    ShellSchema *s = g_new0(ShellSchema, 1);
    size_t i;
    json_t *e;

    s->types = g_hash_table_new(g_str_hash, g_str_equal);
    s->commands = g_ptr_array_new_with_free_func(g_free);
    s->schema = json_incref(schema);
    json_array_foreach(schema, i, e) {
        const char *name = json_string_value(json_object_get(e, "name"));
        const char *meta = json_string_value(json_object_get(e, "meta-type"));
        if (!name || !meta) {
            continue;
        }
        if (!strcmp(meta, "command")) {
            g_ptr_array_add(s->commands, g_strdup(name));
        }
        g_hash_table_insert(s->types, (char *)name, e);
    }
    if (!schema) {
        json_array_foreach(commands, i, e) {
            const char *name = json_string_value(json_object_get(e, "name"));
            if (name) {
                g_ptr_array_add(s->commands, g_strdup(name));
            }
        }
    }
    g_ptr_array_sort(s->commands, cmp_names);
    return s;
}

void shell_schema_add_local(ShellSchema *s, const char *name)
{
    g_ptr_array_add(s->commands, g_strdup(name));
    g_ptr_array_sort(s->commands, cmp_names);
}

void shell_schema_free(ShellSchema *s)
{
    if (s) {
        g_hash_table_destroy(s->types);
        g_ptr_array_free(s->commands, TRUE);
        json_decref(s->schema);
        g_free(s);
    }
}

static json_t *type_of(ShellSchema *s, const char *name)
{
    return name ? g_hash_table_lookup(s->types, name) : NULL;
}

static const char *meta_of(json_t *t)
{
    const char *m = json_string_value(json_object_get(t, "meta-type"));
    return m ? m : "";
}

/* The object type behind TYPE: itself, or an alternate's object branch. */
static json_t *object_type(ShellSchema *s, json_t *t)
{
    if (!strcmp(meta_of(t), "object")) {
        return t;
    }
    if (!strcmp(meta_of(t), "alternate")) {
        size_t i;
        json_t *m;
        json_array_foreach(json_object_get(t, "members"), i, m) {
            json_t *b = type_of(s, json_string_value(json_object_get(m, "type")));
            if (!strcmp(meta_of(b), "object")) {
                return b;
            }
        }
    }
    return NULL;
}

/* The member list of object OBJ: its own members, and the members of
 * the variant that ARGS (what the line has set at this level) selects. */
static void collect_members(ShellSchema *s, json_t *obj, json_t *args,
                            GPtrArray *out)
{
    size_t i;
    json_t *m, *v;

    json_array_foreach(json_object_get(obj, "members"), i, m) {
        g_ptr_array_add(out, m);
    }
    const char *tag = json_string_value(json_object_get(obj, "tag"));
    const char *val = tag ? json_string_value(json_object_get(args, tag)) : NULL;
    if (!val) {
        return;
    }
    json_array_foreach(json_object_get(obj, "variants"), i, v) {
        if (!g_strcmp0(json_string_value(json_object_get(v, "case")), val)) {
            json_t *vt = type_of(s, json_string_value(json_object_get(v, "type")));
            json_array_foreach(json_object_get(vt, "members"), i, m) {
                /* a flat union's branch repeats no base member, but be
                 * safe against listing one twice */
                g_ptr_array_add(out, m);
            }
            return;
        }
    }
}

static json_t *find_member(ShellSchema *s, json_t *obj, json_t *args,
                           const char *name)
{
    g_autoptr(GPtrArray) members = g_ptr_array_new();
    collect_members(s, obj, args, members);
    for (guint i = 0; i < members->len; i++) {
        json_t *m = members->pdata[i];
        if (!g_strcmp0(json_string_value(json_object_get(m, "name")), name)) {
            return m;
        }
    }
    return NULL;
}

static void add_unique(GPtrArray *out, char *cand)
{
    for (guint i = 0; i < out->len; i++) {
        if (!strcmp(out->pdata[i], cand)) {
            g_free(cand);
            return;
        }
    }
    g_ptr_array_add(out, cand);
}

/* Candidates for an argument word WORD given the object type TOP and the
 * arguments ARGS the earlier words of the line set. */
static void complete_arg(ShellSchema *s, json_t *top, json_t *args,
                         const char *word, GPtrArray *out)
{
    const char *eq = strchr(word, '=');
    g_autofree char *key = g_strndup(word, eq ? (size_t)(eq - word)
                                              : strlen(word));
    const char *last_dot = strrchr(key, '.');
    size_t prefix_len = last_dot ? (size_t)(last_dot - key + 1) : 0;
    json_t *obj = top, *level = args;

    /* walk the dotted prefix down through nested objects */
    if (last_dot) {
        g_autofree char *prefix = g_strndup(key, prefix_len - 1);
        g_auto(GStrv) path = g_strsplit(prefix, ".", -1);
        for (guint i = 0; path[i]; i++) {
            json_t *m = find_member(s, obj, level, path[i]);
            obj = m ? object_type(s, type_of(s, json_string_value(
                                  json_object_get(m, "type")))) : NULL;
            if (!obj) {
                return;
            }
            level = json_object_get(level, path[i]);
        }
    }

    if (eq) {
        json_t *m = find_member(s, obj, level, key + prefix_len);
        json_t *t = m ? type_of(s, json_string_value(json_object_get(m, "type")))
                      : NULL;
        json_t *values = json_object_get(t, "values");
        size_t i;
        json_t *v;
        if (!strcmp(meta_of(t), "builtin") &&
            !g_strcmp0(json_string_value(json_object_get(t, "json-type")),
                       "boolean")) {
            values = json_pack("[ss]", "false", "true");
        } else {
            json_incref(values);
        }
        json_array_foreach(values, i, v) {
            g_autofree char *c = g_strdup_printf("%s=%s", key,
                                                 json_string_value(v));
            if (g_str_has_prefix(c, word)) {
                add_unique(out, g_strconcat(c, " ", NULL));
            }
        }
        json_decref(values);
        return;
    }

    g_autoptr(GPtrArray) members = g_ptr_array_new();
    collect_members(s, obj, level, members);
    for (guint i = 0; i < members->len; i++) {
        json_t *m = members->pdata[i];
        const char *name = json_string_value(json_object_get(m, "name"));
        if (!name || json_object_get(level, name)) {
            continue;       /* already given on this line */
        }
        g_autofree char *full = g_strdup_printf("%.*s%s", (int)prefix_len,
                                                key, name);
        if (!g_str_has_prefix(full, word)) {
            continue;
        }
        json_t *t = type_of(s, json_string_value(json_object_get(m, "type")));
        if (!strcmp(meta_of(t), "object")) {
            add_unique(out, g_strconcat(full, ".", NULL));
            continue;
        }
        add_unique(out, g_strconcat(full, "=", NULL));
        if (object_type(s, t)) {        /* an alternate: a name or an object */
            add_unique(out, g_strconcat(full, ".", NULL));
        }
    }
}

/* For a transaction: the element type of the command's "actions" list
 * (a union on "type" whose branches wrap the action in "data"). */
static json_t *action_type(ShellSchema *s)
{
    json_t *cmd = type_of(s, "transaction");
    json_t *args = type_of(s, json_string_value(json_object_get(cmd, "arg-type")));
    size_t i;
    json_t *m;
    json_array_foreach(json_object_get(args, "members"), i, m) {
        if (!g_strcmp0(json_string_value(json_object_get(m, "name")),
                       "actions")) {
            json_t *list = type_of(s, json_string_value(json_object_get(m, "type")));
            return type_of(s, json_string_value(
                           json_object_get(list, "element-type")));
        }
    }
    return NULL;
}

static json_t *action_data_type(ShellSchema *s, const char *action)
{
    json_t *at = action_type(s);
    json_t *sel = json_pack("{ss}", "type", action);
    json_t *m = at ? find_member(s, at, sel, "data") : NULL;
    json_decref(sel);
    return m ? object_type(s, type_of(s, json_string_value(
                          json_object_get(m, "type")))) : NULL;
}

static void complete_action_name(ShellSchema *s, const char *word,
                                 GPtrArray *out)
{
    json_t *at = action_type(s);
    size_t i;
    json_t *v;
    json_array_foreach(json_object_get(at, "variants"), i, v) {
        const char *name = json_string_value(json_object_get(v, "case"));
        if (name && g_str_has_prefix(name, word)) {
            add_unique(out, g_strconcat(name, " ", NULL));
        }
    }
}

GPtrArray *shell_complete(ShellSchema *s, const char *line,
                          bool in_transaction)
{
    GPtrArray *out = g_ptr_array_new_with_free_func(g_free);
    const char *word = line + strlen(line);
    while (word > line && !g_ascii_isspace(word[-1])) {
        word--;
    }
    g_autofree char *before = g_strndup(line, word - line);
    g_autoptr(GPtrArray) words = shell_tokenize(before);
    char **w = (char **)words->pdata;
    guint n = words->len;

    if (n && !strcmp(w[0], "transaction(")) {
        in_transaction = true;
        w++, n--;
    }
    if (n == 0) {
        if (in_transaction) {
            complete_action_name(s, word, out);
            return out;
        }
        for (guint i = 0; i < s->commands->len; i++) {
            if (g_str_has_prefix(s->commands->pdata[i], word)) {
                add_unique(out, g_strconcat(s->commands->pdata[i], " ", NULL));
            }
        }
        return out;
    }

    json_t *top;
    if (in_transaction) {
        top = action_data_type(s, w[0]);
    } else {
        json_t *cmd = type_of(s, w[0]);
        top = !strcmp(meta_of(cmd), "command")
              ? type_of(s, json_string_value(json_object_get(cmd, "arg-type")))
              : NULL;
    }
    if (!top) {
        return out;
    }
    /* what the earlier words set, so that given keys are not offered again
     * and a union's tag selects its branch; bad words are just skipped */
    json_t *args = json_object();
    for (guint i = 1; i < n; i++) {
        shell_add_args(args, &w[i], 1, NULL);
    }
    complete_arg(s, top, args, word, out);
    json_decref(args);
    return out;
}
