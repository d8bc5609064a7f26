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

#define SECTOR_SIZE 512
#define ANY_OFFSET UINT64_MAX

/* I/O types, as QEMU's BlkdebugIOType (bit numbers in iotype_mask). */
enum {
    IOTYPE_READ,
    IOTYPE_WRITE,
    IOTYPE_WRITE_ZEROES,
    IOTYPE_DISCARD,
    IOTYPE_FLUSH,
    IOTYPE_BLOCK_STATUS,
    IOTYPE__MAX,
};
static const char *const iotype_names[IOTYPE__MAX + 1] = {
    "read", "write", "write-zeroes", "discard", "flush", "block-status", NULL,
};
/* Without iotype a rule fails everything but block-status queries. */
#define IOTYPE_DEFAULT_MASK                                                    \
    ((1u << IOTYPE_READ) | (1u << IOTYPE_WRITE) |                             \
     (1u << IOTYPE_WRITE_ZEROES) | (1u << IOTYPE_DISCARD) |                   \
     (1u << IOTYPE_FLUSH))

/* BlockPermission names, in BLK_PERM_* bit order. */
static const char *const perm_list_names[BLK_PERM_COUNT] = {
    "consistent-read", "write", "write-unchanged", "resize",
};

typedef enum {
    ACTION_INJECT_ERROR,
    ACTION_SET_STATE,
    ACTION_SUSPEND,
} RuleAction;

typedef struct Rule {
    int event;
    RuleAction action;
    int state;                 /* 0: any state */
    /* inject-error */
    unsigned iotype_mask;
    int error;                 /* positive errno (QEMU allows <= 0 too) */
    bool immediately;
    bool once;
    uint64_t offset;           /* ANY_OFFSET or a byte offset */
    /* set-state */
    int new_state;
    /* suspend */
    char *tag;
} Rule;

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

static bool id_wellformed(const char *id)
{
    if (!g_ascii_isalpha(id[0])) {
        return false;
    }
    for (const char *p = id + 1; *p; p++) {
        if (!g_ascii_isalnum(*p) && !strchr("-._", *p)) {
            return false;
        }
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

static void rule_free(Rule *r)
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

static bool add_rule(BlkdebugState *s, const RuleSpec *sp, GError **errp)
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
                rule_free(r);
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
    s->rules[event] = g_list_prepend(s->rules[event], r);
    return true;
}

static void remove_rule(BlkdebugState *s, Rule *r)
{
    s->rules[r->event] = g_list_remove(s->rules[r->event], r);
    s->armed = g_list_remove(s->armed, r);
    rule_free(r);
}

/* The rule file first, then rules from options; inject-error rules first. */
static bool read_config(BlkdebugState *s, const char *config, json_t *options,
                        GError **errp)
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
            if (sp->group == (RuleGroup)g && !add_rule(s, sp, errp)) {
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
static bool parse_perm_list(json_t *options, const char *name, uint64_t *dest,
                            GError **errp)
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

/* ------------------------------------------------------------------------ */
/* Opening                                                                  */

/* Valid blkdebug filenames look like blkdebug:[CONFIG]:IMAGE. */
static bool blkdebug_parse_filename(const char *filename, json_t *options,
                                    GError **errp)
{
    const char *rest, *colon;

    if (!g_str_has_prefix(filename, "blkdebug:")) {
        /* Everything else must already be in the options. */
        json_object_set_new(options, "x-image", json_string(filename));
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
    json_object_set_new(options, "x-image", json_string(colon + 1));
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
        opts = json_loads(fn + strlen("json:"), JSON_DECODE_ANY, NULL);
        if (!opts) {
            error_setg(errp, "Could not parse the JSON options");
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
        json_object_set_new(opts, "filename", json_string(fn));
    }
    g_free(name);
    return opts;
}

static bool options_have(json_t *options, const char *name)
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

static void free_rules(BlkdebugState *s)
{
    for (int i = 0; i < BLKDBG__MAX; i++) {
        g_list_free_full(s->rules[i], (GDestroyNotify)rule_free);
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
    for (size_t i = 0; i < G_N_ELEMENTS(limit_opts); i++) {
        uint64_t *field = (uint64_t *)((char *)s + limit_opts[i].off);
        if (!opts_take_size(options, limit_opts[i].name, field, errp)) {
            goto fail;
        }
    }
    s->plain = !s->align && !s->max_transfer && !s->opt_write_zero &&
               !s->max_write_zero && !s->opt_discard && !s->max_discard &&
               !options_have(options, "inject-error") &&
               !options_have(options, "set-state") &&
               !options_have(options, "take-child-perms") &&
               !options_have(options, "unshare-child-perms");

    if (!read_config(s, s->config_file, options, errp)) {
        goto fail;
    }
    s->state = 1;

    if (!parse_perm_list(options, "take-child-perms", &s->take_child_perms,
                         errp) ||
        !parse_perm_list(options, "unshare-child-perms",
                         &s->unshare_child_perms, errp)) {
        goto fail;
    }

    if (x_image) {
        json_t *img;
        if (options_have(options, "image")) {
            error_setg(errp, "Can't specify 'file' and 'filename' options at "
                       "the same time");
            goto fail;
        }
        img = image_options_from_filename(x_image, errp);
        if (!img) {
            goto fail;
        }
        json_object_set_new(options, "image", img);
    } else if (!options_have(options, "image")) {
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

    bs->supported_write_flags = REQ_WRITE_UNCHANGED |
                                (REQ_FUA & file->supported_write_flags);
    bs->supported_zero_flags =
        REQ_WRITE_UNCHANGED |
        ((REQ_FUA | REQ_MAY_UNMAP | REQ_NO_FALLBACK) &
         file->supported_zero_flags);

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
