/*
 * blkdebug's rule parser, compatible with QEMU 7.2: the rule file's
 * [inject-error]/[set-state] sections and the same sections given as
 * options (inject-error.0.event=...), with QemuOpts' value syntax and
 * QEMU's error messages.  Sections are first gathered as key/value lists
 * (RuleSpec), checked as QemuOpts would check them, and only then turned
 * into Rules, so that a bad section leaves no rule behind.
 */
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "strata/block-driver.h"
#include "strata/error.h"
#include "strata/opts.h"
#include "strata/id.h"

#include "blkdebug-rules.h"

static const char *const iotype_names[IOTYPE__MAX + 1] = {
    "read", "write", "write-zeroes", "discard", "flush", "block-status", NULL,
};

/* BlockPermission names, in BLK_PERM_* bit order. */
static const char *const perm_list_names[BLK_PERM_COUNT] = {
    "consistent-read", "write", "write-unchanged", "resize",
};

/* ------------------------------------------------------------------------ */
/* Rule sections: [inject-error] / [set-state] from a file or from options  */

typedef enum { GROUP_INJECT_ERROR, GROUP_SET_STATE, GROUP__MAX } RuleGroup;
static const char *const group_names[GROUP__MAX] = {
    "inject-error", "set-state",
};

typedef enum { KEY_STR, KEY_NUM, KEY_BOOL } KeyType;
typedef struct KeyDesc {
    const char *name;
    KeyType type;
} KeyDesc;

static const KeyDesc inject_error_keys[] = {
    { "event", KEY_STR },   { "state", KEY_NUM },       { "iotype", KEY_STR },
    { "errno", KEY_NUM },   { "sector", KEY_NUM },      { "once", KEY_BOOL },
    { "immediately", KEY_BOOL }, { NULL, KEY_STR },
};
static const KeyDesc set_state_keys[] = {
    { "event", KEY_STR }, { "state", KEY_NUM }, { "new_state", KEY_NUM },
    { NULL, KEY_STR },
};
static const KeyDesc *const group_keys[GROUP__MAX] = {
    inject_error_keys, set_state_keys,
};

/* One key/value pair; val is the string spelling QEMU's QemuOpts would see. */
typedef struct KV {
    char *key;
    char *val;
    bool is_string;            /* a string, not a number or a bool */
} KV;

static void kv_free(gpointer p)
{
    KV *kv = p;
    g_free(kv->key);
    g_free(kv->val);
    g_free(kv);
}

static void kv_add(GPtrArray *kvs, const char *key, const char *val,
                   bool is_string)
{
    KV *kv = g_new0(KV, 1);
    kv->key = g_strdup(key);
    kv->val = g_strdup(val);
    kv->is_string = is_string;
    g_ptr_array_add(kvs, kv);
}

/* One section: later values of a key override earlier ones. */
typedef struct RuleSpec {
    RuleGroup group;
    char *id;
    GPtrArray *kvs;
} RuleSpec;

static void spec_free(gpointer p)
{
    RuleSpec *sp = p;
    g_free(sp->id);
    g_ptr_array_unref(sp->kvs);
    g_free(sp);
}

static const char *spec_get(const RuleSpec *sp, const char *key)
{
    for (guint i = sp->kvs->len; i > 0; i--) {
        KV *kv = g_ptr_array_index(sp->kvs, i - 1);
        if (strcmp(kv->key, key) == 0) {
            return kv->val;
        }
    }
    return NULL;
}

/* Index of name in names[0..n), or -1. */
static int lookup(const char *const *names, int n, const char *name)
{
    for (int i = 0; i < n; i++) {
        if (strcmp(names[i], name) == 0) {
            return i;
        }
    }
    return -1;
}

static const KeyDesc *find_key(RuleGroup g, const char *key)
{
    for (const KeyDesc *d = group_keys[g]; d->name; d++) {
        if (strcmp(d->name, key) == 0) {
            return d;
        }
    }
    return NULL;
}

/* QemuOpts number syntax: strtoull base 0, negative values wrap. */
static int parse_number(const char *str, uint64_t *out)
{
    char *end;
    unsigned long long v;

    errno = 0;
    v = strtoull(str, &end, 0);
    if (end == str) {
        return -EINVAL;
    }
    if (errno == ERANGE) {
        return -ERANGE;
    }
    if (*end) {
        return -EINVAL;
    }
    *out = v;
    return 0;
}

static int parse_bool(const char *str, bool *out)
{
    static const char *const yes[] = { "on", "yes", "true", "y" };
    static const char *const no[] = { "off", "no", "false", "n" };

    if (lookup(yes, 4, str) >= 0 || lookup(no, 4, str) >= 0) {
        *out = lookup(yes, 4, str) >= 0;
        return 0;
    }
    return -EINVAL;
}

static bool check_value(const KeyDesc *d, const char *val, GError **errp)
{
    uint64_t n;
    bool b;
    int ret;

    switch (d->type) {
    case KEY_NUM:
        ret = parse_number(val, &n);
        if (ret == -ERANGE) {
            error_setg(errp, "Value '%s' is too large for parameter '%s'", val,
                       d->name);
            return false;
        } else if (ret < 0) {
            error_setg(errp, "Parameter '%s' expects a number", d->name);
            return false;
        }
        return true;
    case KEY_BOOL:
        if (parse_bool(val, &b) < 0) {
            error_setg(errp, "Parameter '%s' expects 'on' or 'off'", d->name);
            return false;
        }
        return true;
    case KEY_STR:
        return true;
    }
    return true;
}

/* QemuOpts claims a section's id before it looks at the keys. */
static bool check_id(GPtrArray *specs, RuleGroup g, const char *id,
                     GError **errp)
{
    if (!id) {
        return true;
    }
    if (!id_wellformed(id)) {
        error_setg(errp, "Parameter 'id' expects an identifier\n"
                   "Identifiers consist of letters, digits, '-', '.', "
                   "'_', starting with a letter.");
        return false;
    }
    for (guint i = 0; i < specs->len; i++) {
        RuleSpec *o = g_ptr_array_index(specs, i);
        if (o->group == g && o->id && strcmp(o->id, id) == 0) {
            error_setg(errp, "Duplicate ID '%s' for %s", id, group_names[g]);
            return false;
        }
    }
    return true;
}

static void specs_add(GPtrArray *specs, RuleGroup g, const char *id,
                      GPtrArray *kvs)
{
    RuleSpec *sp = g_new0(RuleSpec, 1);

    sp->group = g;
    sp->id = g_strdup(id);
    sp->kvs = g_ptr_array_ref(kvs);
    g_ptr_array_add(specs, sp);
}

/* ---- The rule file ---- */

typedef struct FileSection {
    int group;                 /* -1: no group yet */
    char *id;
    GPtrArray *kvs;
} FileSection;

/* A section is checked when the next one starts or the file ends. */
static bool file_section_finish(FileSection *fs, GPtrArray *specs,
                                GError **errp)
{
    GPtrArray *kvs;
    const char *id = fs->id;
    bool ok = false;

    if (fs->group < 0) {
        return true;
    }
    kvs = g_ptr_array_new_with_free_func(kv_free);
    for (guint i = 0; i < fs->kvs->len; i++) {
        KV *kv = g_ptr_array_index(fs->kvs, i);
        if (strcmp(kv->key, "id") == 0) {
            id = kv->val;
        }
    }
    if (!check_id(specs, fs->group, id, errp)) {
        goto out;
    }
    for (guint i = 0; i < fs->kvs->len; i++) {
        KV *kv = g_ptr_array_index(fs->kvs, i);
        if (strcmp(kv->key, "id") && !find_key(fs->group, kv->key)) {
            error_setg(errp, "Invalid parameter '%s'", kv->key);
            goto out;
        }
    }
    for (guint i = 0; i < fs->kvs->len; i++) {
        KV *kv = g_ptr_array_index(fs->kvs, i);
        const KeyDesc *d = find_key(fs->group, kv->key);
        if (!d) {
            continue; /* "id" */
        }
        if (!check_value(d, kv->val, errp)) {
            goto out;
        }
        kv_add(kvs, kv->key, kv->val, true);
    }
    specs_add(specs, fs->group, id, kvs);
    ok = true;
out:
    g_ptr_array_unref(kvs);
    g_free(fs->id);
    fs->id = NULL;
    g_ptr_array_set_size(fs->kvs, 0);
    fs->group = -1;
    return ok;
}

/*
 * QEMU's config file syntax, line by line (lines are read in chunks of at
 * most 1023 bytes, as QEMU does):
 *   empty line or '#' in the first column: ignored
 *   [group "id"]   or   [group]
 *   key = "value"  (a key with no quoted value gets the empty string)
 */
static bool parse_config_file(const char *path, GPtrArray *specs,
                              GError **errp)
{
    char line[1024], group[64], id[64], arg[64], value[1024];
    FileSection fs = { .group = -1 };
    bool ok = false;
    FILE *f;

    f = fopen(path, "r");
    if (!f) {
        error_setg_errno(errp, errno, "Could not read blkdebug config file");
        return false;
    }
    fs.kvs = g_ptr_array_new_with_free_func(kv_free);

    while (fgets(line, sizeof(line), f)) {
        bool with_id = false;

        if (line[0] == '\n' || line[0] == '#') {
            continue;
        }
        if (sscanf(line, "[%63s \"%63[^\"]\"]", group, id) == 2) {
            with_id = true;
        } else if (sscanf(line, "[%63[^]]]", group) != 1) {
            value[0] = '\0';
            if (sscanf(line, " %63s = \"%1023[^\"]\"", arg, value) == 2 ||
                sscanf(line, " %63s = \"\"", arg) == 1) {
                if (fs.group < 0) {
                    error_setg(errp, "no group defined");
                    goto out;
                }
                kv_add(fs.kvs, arg, value, true);
                continue;
            }
            error_setg(errp, "parse error");
            goto out;
        }

        /* A group header. */
        if (!file_section_finish(&fs, specs, errp)) {
            goto out;
        }
        fs.group = lookup(group_names, GROUP__MAX, group);
        if (fs.group < 0) {
            error_setg(errp, "There is no option group '%s'", group);
            goto out;
        }
        fs.id = with_id ? g_strdup(id) : NULL;
    }
    if (ferror(f)) {
        error_setg(errp, "error reading file");
        goto out;
    }
    ok = file_section_finish(&fs, specs, errp);
out:
    g_free(fs.id);
    g_ptr_array_unref(fs.kvs);
    fclose(f);
    return ok;
}

/* ---- Sections given as options ---- */

/* Flatten v into kvs as "prefix.key" pairs (arrays by index). */
static void flatten_into(GPtrArray *kvs, const char *prefix, json_t *v)
{
    char *sub;

    if (json_is_object(v)) {
        const char *k;
        json_t *e;
        json_object_foreach(v, k, e) {
            sub = prefix ? g_strdup_printf("%s.%s", prefix, k) : g_strdup(k);
            flatten_into(kvs, sub, e);
            g_free(sub);
        }
    } else if (json_is_array(v)) {
        size_t i;
        json_t *e;
        json_array_foreach(v, i, e) {
            sub = prefix ? g_strdup_printf("%s.%zu", prefix, i)
                         : g_strdup_printf("%zu", i);
            flatten_into(kvs, sub, e);
            g_free(sub);
        }
    } else if (json_is_string(v)) {
        kv_add(kvs, prefix, json_string_value(v), true);
    } else if (json_is_integer(v)) {
        char *s = g_strdup_printf("%" JSON_INTEGER_FORMAT,
                                  json_integer_value(v));
        kv_add(kvs, prefix, s, false);
        g_free(s);
    } else if (json_is_real(v)) {
        char *s = g_strdup_printf("%.17g", json_real_value(v));
        kv_add(kvs, prefix, s, false);
        g_free(s);
    } else if (json_is_boolean(v)) {
        kv_add(kvs, prefix, json_is_true(v) ? "on" : "off", false);
    }
    /* null: as if the key were absent */
}

/*
 * Remove name (when it holds a non-empty object or array) and every
 * "name.*" key from options; return them flattened, without the prefix.
 * A scalar or empty "name" stays for the generic unknown-option error.
 */
static GPtrArray *take_flat(json_t *options, const char *name)
{
    GPtrArray *kvs = g_ptr_array_new_with_free_func(kv_free);
    size_t plen = strlen(name);
    GPtrArray *taken = g_ptr_array_new_with_free_func(g_free);
    const char *k;
    json_t *v;

    json_object_foreach(options, k, v) {
        if (strcmp(k, name) == 0) {
            if ((json_is_object(v) && json_object_size(v)) ||
                (json_is_array(v) && json_array_size(v))) {
                flatten_into(kvs, NULL, v);
                g_ptr_array_add(taken, g_strdup(k));
            }
        } else if (strncmp(k, name, plen) == 0 && k[plen] == '.' &&
                   k[plen + 1]) {
            flatten_into(kvs, k + plen + 1, v);
            g_ptr_array_add(taken, g_strdup(k));
        }
    }
    for (guint i = 0; i < taken->len; i++) {
        json_object_del(options, g_ptr_array_index(taken, i));
    }
    g_ptr_array_unref(taken);
    return kvs;
}

static bool has_prefix_dot(const char *key, const char *prefix, size_t plen)
{
    return strncmp(key, prefix, plen) == 0 && key[plen] == '.';
}

/* 0: index i absent, 1: given as a value, 2: given as keys, 3: both. */
static int index_kind(GPtrArray *flat, unsigned i)
{
    char idx[16];
    size_t ilen = (size_t)snprintf(idx, sizeof(idx), "%u", i);
    int kind = 0;

    for (guint j = 0; j < flat->len; j++) {
        KV *kv = g_ptr_array_index(flat, j);
        if (strcmp(kv->key, idx) == 0) {
            kind |= 1;
        } else if (has_prefix_dot(kv->key, idx, ilen)) {
            kind |= 2;
        }
    }
    return kind;
}

/* The pair whose key is exactly index i. */
static const KV *flat_get(GPtrArray *flat, unsigned i)
{
    char idx[16];

    snprintf(idx, sizeof(idx), "%u", i);
    for (guint j = 0; j < flat->len; j++) {
        KV *kv = g_ptr_array_index(flat, j);
        if (strcmp(kv->key, idx) == 0) {
            return kv;
        }
    }
    return NULL;
}

/* Does key belong to one of the list elements 0..n-1? */
static bool key_in_list(const char *key, unsigned n)
{
    for (unsigned i = 0; i < n; i++) {
        char idx[16];
        size_t ilen = (size_t)snprintf(idx, sizeof(idx), "%u", i);
        if (strcmp(key, idx) == 0 || has_prefix_dot(key, idx, ilen)) {
            return true;
        }
    }
    return false;
}

/* Absorb one enumerated section (keys "N.*" of flat, N stripped). */
static bool inline_section(GPtrArray *specs, RuleGroup g, unsigned index,
                           GPtrArray *flat, GError **errp)
{
    GPtrArray *kvs = g_ptr_array_new_with_free_func(kv_free);
    char idx[16];
    size_t ilen = (size_t)snprintf(idx, sizeof(idx), "%u", index);
    char *id = g_strdup_printf("%s.%u", group_names[g], index);
    bool ok = false;

    for (guint i = 0; i < flat->len; i++) {
        KV *kv = g_ptr_array_index(flat, i);
        if (has_prefix_dot(kv->key, idx, ilen)) {
            kv_add(kvs, kv->key + ilen + 1, kv->val, kv->is_string);
        }
    }
    if (!check_id(specs, g, id, errp)) {
        goto out;
    }
    for (guint i = 0; i < kvs->len; i++) {
        KV *kv = g_ptr_array_index(kvs, i);
        const KeyDesc *d = find_key(g, kv->key);
        if (d && !check_value(d, kv->val, errp)) {
            goto out;
        }
    }
    for (guint i = 0; i < kvs->len; i++) {
        KV *kv = g_ptr_array_index(kvs, i);
        if (!find_key(g, kv->key)) {
            error_setg(errp, "[%s] section doesn't support the option '%s'",
                       group_names[g], kv->key);
            goto out;
        }
    }
    specs_add(specs, g, id, kvs);
    ok = true;
out:
    g_free(id);
    g_ptr_array_unref(kvs);
    return ok;
}

/*
 * Rules given as options: either one section of direct keys
 * ("inject-error.event=...") or a list ("inject-error.0.event=...").
 */
static bool parse_inline_sections(json_t *options, RuleGroup g,
                                  GPtrArray *specs, GError **errp)
{
    const char *gname = group_names[g];
    GPtrArray *flat = take_flat(options, gname);
    GPtrArray *direct = NULL;
    unsigned n = 0;
    bool ok = false;

    if (flat->len == 0) {
        ok = true;
        goto out;
    }

    direct = g_ptr_array_new_with_free_func(kv_free);
    for (guint i = 0; i < flat->len; i++) {
        KV *kv = g_ptr_array_index(flat, i);
        const KeyDesc *d = find_key(g, kv->key);
        if (d) {
            if (!check_value(d, kv->val, errp)) {
                goto out;
            }
            kv_add(direct, kv->key, kv->val, kv->is_string);
        }
    }
    if (direct->len) {
        for (guint i = 0; i < flat->len; i++) {
            KV *kv = g_ptr_array_index(flat, i);
            if (!find_key(g, kv->key)) {
                error_setg(errp, "Unknown option '%s' for [%s]", kv->key,
                           gname);
                goto out;
            }
        }
        specs_add(specs, g, NULL, direct);
        ok = true;
        goto out;
    }

    /*
     * A list: indices 0, 1, ... up to the first one that is missing or
     * given both as a value and as keys; anything beyond is unused.
     */
    for (;; n++) {
        int kind = index_kind(flat, n);
        if (kind != 1 && kind != 2) {
            break;
        }
    }
    for (guint i = 0; i < flat->len; i++) {
        KV *kv = g_ptr_array_index(flat, i);
        if (!key_in_list(kv->key, n)) {
            error_setg(errp, "Unused option '%s' for [%s]", kv->key, gname);
            goto out;
        }
    }
    for (unsigned i = 0; i < n; i++) {
        if (index_kind(flat, i) == 1) {
            error_setg(errp, "[%s] section (index %u) does not consist of "
                       "keys", gname, i);
            goto out;
        }
        if (!inline_section(specs, g, i, flat, errp)) {
            goto out;
        }
    }
    ok = true;
out:
    if (direct) {
        g_ptr_array_unref(direct);
    }
    g_ptr_array_unref(flat);
    return ok;
}

/* ---- From sections to rules ---- */

void blkdebug_rule_free(Rule *r)
{
    g_free(r->tag);
    g_free(r);
}

static uint64_t spec_number(const RuleSpec *sp, const char *key, uint64_t dflt)
{
    const char *v = spec_get(sp, key);
    uint64_t n;

    return v && parse_number(v, &n) == 0 ? n : dflt;
}

static bool spec_bool(const RuleSpec *sp, const char *key)
{
    const char *v = spec_get(sp, key);
    bool b = false;

    if (v) {
        parse_bool(v, &b);
    }
    return b;
}

static bool add_rule(GList *rules[BLKDBG__MAX], const RuleSpec *sp,
                     GError **errp)
{
    const char *name = spec_get(sp, "event");
    const char *iotype;
    int event;
    Rule *r;

    if (!name) {
        error_setg(errp, "Missing event name for rule");
        return false;
    }
    event = blkdbg_event_from_name(name);
    if (event < 0) {
        error_setg(errp, "invalid parameter value: %s", name);
        return false;
    }

    r = g_new0(Rule, 1);
    r->event = event;
    /* QEMU stores these 64-bit option values in ints: keep its truncation. */
    r->state = (int)spec_number(sp, "state", 0);
    if (sp->group == GROUP_INJECT_ERROR) {
        int64_t sector = (int64_t)spec_number(sp, "sector", (uint64_t)-1);

        r->action = ACTION_INJECT_ERROR;
        r->error = (int)spec_number(sp, "errno", EIO);
        r->once = spec_bool(sp, "once");
        r->immediately = spec_bool(sp, "immediately");
        r->offset = sector == -1 ? ANY_OFFSET
                                 : (uint64_t)sector * SECTOR_SIZE;
        iotype = spec_get(sp, "iotype");
        if (iotype) {
            int t = lookup(iotype_names, IOTYPE__MAX, iotype);
            if (t < 0) {
                error_setg(errp, "invalid parameter value: %s", iotype);
                blkdebug_rule_free(r);
                return false;
            }
            r->iotype_mask = 1u << t;
        } else {
            r->iotype_mask = IOTYPE_DEFAULT_MASK;
        }
    } else {
        r->action = ACTION_SET_STATE;
        r->new_state = (int)spec_number(sp, "new_state", 0);
    }
    rules[event] = g_list_prepend(rules[event], r);
    return true;
}

/* The rule file first, then rules from options; inject-error rules first. */
bool blkdebug_rules_read(const char *config, json_t *options,
                         GList *rules[BLKDBG__MAX], GError **errp)
{
    GPtrArray *specs = g_ptr_array_new_with_free_func(spec_free);
    bool ok = false;

    if (config && !parse_config_file(config, specs, errp)) {
        goto out;
    }
    if (!parse_inline_sections(options, GROUP_INJECT_ERROR, specs, errp) ||
        !parse_inline_sections(options, GROUP_SET_STATE, specs, errp)) {
        goto out;
    }
    for (int g = 0; g < GROUP__MAX; g++) {
        for (guint i = 0; i < specs->len; i++) {
            RuleSpec *sp = g_ptr_array_index(specs, i);
            if (sp->group == (RuleGroup)g && !add_rule(rules, sp, errp)) {
                goto out;
            }
        }
    }
    ok = true;
out:
    g_ptr_array_unref(specs);
    return ok;
}

/* ---- take-child-perms / unshare-child-perms ---- */

static bool parse_index(const char *str, int64_t *out)
{
    char *end;

    errno = 0;
    *out = strtoll(str, &end, 10);
    return end != str && !*end && errno == 0;
}

/* A list of BlockPermission names, with QEMU's list-crumpling errors. */
bool blkdebug_parse_perm_list(json_t *options, const char *name,
                              uint64_t *dest, GError **errp)
{
    GPtrArray *flat = take_flat(options, name);
    GHashTable *heads = g_hash_table_new_full(g_str_hash, g_str_equal,
                                              g_free, NULL);
    size_t nums = 0, others = 0;
    int64_t max = -1;
    bool ok = false;

    *dest = 0;
    for (guint i = 0; i < flat->len; i++) {
        KV *kv = g_ptr_array_index(flat, i);
        const char *dot = strchr(kv->key, '.');
        char *head = g_strndup(kv->key, dot ? (size_t)(dot - kv->key)
                                            : strlen(kv->key));
        int64_t idx;

        if (g_hash_table_contains(heads, head)) {
            g_free(head);
            continue;
        }
        if (parse_index(head, &idx)) {
            nums++;
            max = MAX(max, idx);
        } else {
            others++;
        }
        g_hash_table_add(heads, head);
    }
    if (flat->len == 0) {
        ok = true;
        goto out;
    }
    if (nums && others) {
        error_setg(errp, "Cannot mix list and non-list keys");
        goto out;
    }
    if (others) {
        error_setg(errp, "Invalid parameter type for '<anonymous>', "
                   "expected: array");
        goto out;
    }
    if (max >= (int64_t)nums) {
        error_setg(errp, "List indices are not contiguous, saw %zu elements "
                   "but %" PRId64 " largest index", nums, max);
        goto out;
    }
    for (unsigned i = 0; i < nums; i++) {
        int kind = index_kind(flat, i);
        const KV *val = kind == 1 ? flat_get(flat, i) : NULL;
        int p;

        if (kind == 0) {
            error_setg(errp, "Missing list index %u", i);
            goto out;
        }
        if (!val || !val->is_string) {
            error_setg(errp, "Invalid parameter type for '[%u]', expected: "
                       "string", i);
            goto out;
        }
        p = lookup(perm_list_names, BLK_PERM_COUNT, val->val);
        if (p < 0) {
            error_setg(errp, "Parameter 'null' does not accept value '%s'",
                       val->val);
            goto out;
        }
        *dest |= 1ull << p;
    }
    ok = true;
out:
    g_hash_table_unref(heads);
    g_ptr_array_unref(flat);
    return ok;
}

bool blkdebug_options_have(json_t *options, const char *name)
{
    size_t plen = strlen(name);
    const char *k;
    json_t *v;

    json_object_foreach(options, k, v) {
        if (strcmp(k, name) == 0 || has_prefix_dot(k, name, plen)) {
            return true;
        }
    }
    return false;
}

