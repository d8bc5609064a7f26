/*
 * The throttle-group object (object-add, --object, qom-get, qom-set): its
 * properties, checks and messages as QEMU 7.2's.  The group itself (its
 * accounting and members) is block/throttle-groups.c.
 *
 * QEMU sets each property on the new object, then completes it: the
 * legacy "x-" properties are checked one by one (not negative, burst
 * lengths within an unsigned int); "limits" is merged into what is set
 * and checked as a whole; completion checks the result.  Once created,
 * only "limits" may change (the "x-" ones refuse, as QEMU's).
 */
#include <limits.h>
#include <string.h>

#include "strata/error.h"
#include "strata/throttle.h"
#include "qapi-commands.h"
#include "qapi-visit.h"
#include "objects.h"

/* The order QEMU's ThrottleLimits conversion reads the members in. */
static const char *const limits_order[] = {
    "bps-total", "bps-read", "bps-write", "iops-total", "iops-read",
    "iops-write", "bps-total-max", "bps-read-max", "bps-write-max",
    "iops-total-max", "iops-read-max", "iops-write-max",
    "bps-total-max-length", "bps-read-max-length", "bps-write-max-length",
    "iops-total-max-length", "iops-read-max-length", "iops-write-max-length",
    "iops-size", NULL,
};

/* qom-get limits: the members in the order qemu-storage-daemon prints. */
static const char *const limits_out_order[] = {
    "bps-read-max-length", "iops-read-max-length", "bps-read-max",
    "bps-total", "iops-total-max-length", "iops-total", "iops-write-max",
    "bps-write", "bps-total-max", "bps-write-max", "iops-size", "iops-read",
    "iops-write-max-length", "iops-write", "bps-total-max-length",
    "iops-read-max", "bps-read", "bps-write-max-length", "iops-total-max",
    NULL,
};

/* Merge limits into cfg and check the result (QEMU's set_limits). */
static bool apply_limits(ThrottleConfig *cfg, ThrottleLimits *limits,
                         GError **errp)
{
    json_t *j = qapi_ThrottleLimits_to_json(limits);
    bool ok = true;

    for (int i = 0; ok && limits_order[i]; i++) {
        json_t *v = json_object_get(j, limits_order[i]);
        if (v) {
            ok = throttle_param_set(cfg, throttle_param_find(limits_order[i]),
                                    json_integer_value(v), errp);
        }
    }
    json_decref(j);
    return ok && throttle_is_valid(cfg, errp);
}

bool throttle_object_config(ThrottleGroupProperties *p, ThrottleConfig *cfg,
                            GError **errp)
{
    json_t *j = qapi_ThrottleGroupProperties_to_json(p);
    bool ok = true;

    throttle_config_init(cfg);
    for (const ThrottleParam *tp = throttle_params; ok && tp->name; tp++) {
        char *name = g_strdup_printf("x-%s", tp->name);
        json_t *v = json_object_get(j, name);
        if (v) {
            int64_t n = json_integer_value(v);
            if (n < 0) {
                error_setg(errp, "Property values cannot be negative");
                ok = false;
            } else if (tp->kind == THROTTLE_PARAM_BURST_LENGTH &&
                       n > (int64_t)UINT_MAX) {
                /* sic: QEMU's message has no space in "therange" */
                error_setg(errp, "%s value must be in therange [0, %u]",
                           name, UINT_MAX);
                ok = false;
            } else {
                throttle_param_set(cfg, tp, n, NULL);
            }
        }
        g_free(name);
    }
    json_decref(j);
    if (ok && p->limits) {
        ok = apply_limits(cfg, p->limits, errp);
    }
    return ok;
}

json_t *throttle_object_get(UserObject *o, const char *property)
{
    ThrottleConfig cfg;

    throttle_group_get_config(o->throttle, &cfg);
    if (!strcmp(property, "limits")) {
        json_t *j = json_object();
        for (int i = 0; limits_out_order[i]; i++) {
            const ThrottleParam *p = throttle_param_find(limits_out_order[i]);
            json_object_set_new(j, p->name,
                                json_integer(throttle_param_get(&cfg, p)));
        }
        return j;
    }
    return json_integer(throttle_param_get(&cfg,
                                           throttle_param_find(property + 2)));
}

bool throttle_object_set(UserObject *o, const char *property, json_t *value,
                         GError **errp)
{
    if (strcmp(property, "limits")) {
        error_setg(errp, "Property cannot be set after initialization");
        return false;
    }

    QapiIn root;
    ThrottleLimits *limits = NULL;
    qapi_in_init(&root, false);
    if (!qapi_in_ThrottleLimits(&root, "limits", value, &limits, errp)) {
        return false;
    }
    ThrottleConfig cfg;
    throttle_group_get_config(o->throttle, &cfg);
    bool ok = apply_limits(&cfg, limits, errp);
    if (ok) {
        throttle_group_set_config(o->throttle, &cfg);
    }
    qapi_free_ThrottleLimits(limits);
    return ok;
}
