/*
 * --object throttle-group for strata-img and strata-io: a named group of
 * the library's (block/throttle-groups.c) that throttle nodes opened with
 * --image-opts join.  Properties, checks and messages as qemu-img 7.2's
 * throttle-group object: the legacy "x-" properties set one by one (not
 * negative, burst lengths within an unsigned int), "limits" merged in and
 * checked as a whole, the result checked again when the object is
 * complete (throttle_is_valid).  strata-daemon's object-add does the same
 * from its QAPI types (qapi/throttle-object.c); the tools do not link the
 * QAPI layer, so this file reads the keyval/JSON form itself.
 */
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "strata/error.h"
#include "strata/secret.h"
#include "strata/throttle.h"
#include "strata/units.h"
#include "tool-common.h"
#include "object-throttle.h"

/* The groups this process made, removed at exit. */
static GPtrArray *groups;

static int cmp_str(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

void tool_throttle_group_help(void)
{
    GPtrArray *lines = g_ptr_array_new_with_free_func(g_free);

    g_ptr_array_add(lines, g_strdup("limits=<ThrottleLimits>"));
    for (const ThrottleParam *p = throttle_params; p->name; p++) {
        g_ptr_array_add(lines, g_strdup_printf("x-%s=<int>", p->name));
    }
    /* QEMU sorts the whole "name=<type>" lines. */
    qsort(lines->pdata, lines->len, sizeof(char *), cmp_str);
    printf("throttle-group options:\n");
    for (guint i = 0; i < lines->len; i++) {
        printf("  %s\n", (char *)g_ptr_array_index(lines, i));
    }
    g_ptr_array_free(lines, true);
}

/*
 * An integer property: a JSON integer from the JSON form, a string in C
 * syntax (decimal, 0x hex, 0 octal) from the keyval form.
 */
static bool take_int(json_t *v, const char *name, bool from_json,
                     int64_t *out, GError **errp)
{
    if (from_json) {
        if (!json_is_integer(v)) {
            error_setg(errp, "Invalid parameter type for '%s', expected: "
                       "integer", name);
            return false;
        }
        *out = json_integer_value(v);
        return true;
    }
    if (!json_is_string(v)) {
        error_setg(errp, "Invalid parameter type for '%s', expected: "
                   "integer", name);
        return false;
    }
    if (parse_int64(json_string_value(v), out) < 0) {
        error_setg(errp, "Parameter '%s' expects integer", name);
        return false;
    }
    return true;
}

/* QEMU's legacy property setter (throttle_group_set). */
static bool set_legacy(ThrottleConfig *cfg, const ThrottleParam *p,
                       const char *name, int64_t v, GError **errp)
{
    if (v < 0) {
        error_setg(errp, "Property values cannot be negative");
        return false;
    }
    if (p->kind == THROTTLE_PARAM_BURST_LENGTH && v > (int64_t)UINT_MAX) {
        /* sic: QEMU's message has no space in "therange" */
        error_setg(errp, "%s value must be in therange [0, %u]", name,
                   UINT_MAX);
        return false;
    }
    return throttle_param_set(cfg, p, v, errp);
}

/* QEMU's "limits" setter: merged into what is set, checked as a whole. */
static bool set_limits(ThrottleConfig *cfg, json_t *limits, bool from_json,
                       GError **errp)
{
    ThrottleConfig merged = *cfg;
    const char *key;
    json_t *v;

    if (!json_is_object(limits)) {
        error_setg(errp, "Invalid parameter type for 'limits', expected: "
                   "object");
        return false;
    }
    json_object_foreach(limits, key, v) {
        const ThrottleParam *p = throttle_param_find(key);
        char *name = g_strdup_printf("limits.%s", key);
        int64_t n;
        bool ok;

        if (!p) {
            error_setg(errp, "Parameter '%s' is unexpected", name);
            g_free(name);
            return false;
        }
        ok = take_int(v, name, from_json, &n, errp) &&
             throttle_param_set(&merged, p, n, errp);
        g_free(name);
        if (!ok) {
            return false;
        }
    }
    if (!throttle_is_valid(&merged, errp)) {
        return false;
    }
    *cfg = merged;
    return true;
}

bool tool_throttle_group_add(json_t *args, bool from_json, const char *id,
                             GError **errp)
{
    ThrottleConfig cfg;
    ThrottleGroup *tg;
    const char *key;
    json_t *v;

    throttle_config_init(&cfg);
    json_object_foreach(args, key, v) {
        if (!strcmp(key, "limits")) {
            if (!set_limits(&cfg, v, from_json, errp)) {
                return false;
            }
            continue;
        }
        const ThrottleParam *p = g_str_has_prefix(key, "x-")
                                 ? throttle_param_find(key + 2) : NULL;
        int64_t n;

        if (!p) {
            /* Also for a nested key (QOM looks the property up by name). */
            error_setg(errp, "Parameter '%s' is unexpected", key);
            return false;
        }
        if (!take_int(v, key, from_json, &n, errp) ||
            !set_legacy(&cfg, p, key, n, errp)) {
            return false;
        }
    }
    if (throttle_group_find(id) || secret_object_exists(id)) {
        error_setg(errp, "attempt to add duplicate property '%s' to object "
                   "(type 'container')", id);
        return false;
    }
    tg = throttle_group_create(id, &cfg, errp);
    if (!tg) {
        return false;
    }
    if (!groups) {
        groups = g_ptr_array_new();
    }
    g_ptr_array_add(groups, tg);
    return true;
}

bool tool_throttle_group_exists(const char *id)
{
    return throttle_group_find(id) != NULL;
}

void tool_throttle_groups_clear(void)
{
    if (!groups) {
        return;
    }
    for (guint i = 0; i < groups->len; i++) {
        ThrottleGroup *tg = g_ptr_array_index(groups, i);
        /* A node still open at exit keeps its group; the process ends. */
        if (!throttle_group_in_use(tg)) {
            throttle_group_destroy(tg);
        }
    }
    g_ptr_array_free(groups, true);
    groups = NULL;
}
