/* GError helpers: one domain, codes that are QMP error classes. */
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include "strata/error.h"

G_DEFINE_QUARK(strata-error-quark, strata_error)

const char *strata_error_class_name(int code)
{
    static const char *const names[] = {
        [STRATA_ERROR_GENERIC] = "GenericError",
        [STRATA_ERROR_COMMAND_NOT_FOUND] = "CommandNotFound",
        [STRATA_ERROR_DEVICE_NOT_ACTIVE] = "DeviceNotActive",
        [STRATA_ERROR_DEVICE_NOT_FOUND] = "DeviceNotFound",
        [STRATA_ERROR_KVM_MISSING_CAP] = "KVMMissingCap",
    };
    if (code < 0 || code >= (int)G_N_ELEMENTS(names) || !names[code]) {
        return "GenericError";
    }
    return names[code];
}

static void error_setv(GError **errp, int code, const char *suffix,
                       const char *fmt, va_list ap)
{
    if (!errp) {
        return;
    }
    /* Setting an error twice loses the first: a bug, but never a crash. */
    g_clear_error(errp);
    char *msg = g_strdup_vprintf(fmt, ap);
    if (suffix) {
        char *full = g_strconcat(msg, ": ", suffix, NULL);
        g_free(msg);
        msg = full;
    }
    *errp = g_error_new_literal(STRATA_ERROR, code, msg);
    g_free(msg);
}

void error_setg(GError **errp, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    error_setv(errp, STRATA_ERROR_GENERIC, NULL, fmt, ap);
    va_end(ap);
}

void error_setg_errno(GError **errp, int errnum, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    error_setv(errp, STRATA_ERROR_GENERIC, g_strerror(errnum < 0 ? -errnum : errnum),
               fmt, ap);
    va_end(ap);
}

void error_set_class(GError **errp, StrataErrorCode code, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    error_setv(errp, code, NULL, fmt, ap);
    va_end(ap);
}

void error_prefix(GError **errp, const char *fmt, ...)
{
    if (!errp || !*errp) {
        return;
    }
    va_list ap;
    va_start(ap, fmt);
    char *prefix = g_strdup_vprintf(fmt, ap);
    va_end(ap);
    g_prefix_error(errp, "%s", prefix);
    g_free(prefix);
}

void error_propagate(GError **dst, GError *src)
{
    if (!src) {
        return;
    }
    if (dst && !*dst) {
        *dst = src;
    } else {
        g_error_free(src);
    }
}

static void (*warn_handler)(const char *msg);

void warn_set_handler(void (*handler)(const char *msg))
{
    warn_handler = handler;
}

void warn_print(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    char *msg = g_strdup_vprintf(fmt, ap);
    va_end(ap);
    if (warn_handler) {
        warn_handler(msg);
    } else {
        fprintf(stderr, "%s\n", msg);
    }
    g_free(msg);
}

/* See warn_report(): NULL, "" or a command-line location. */
static char *report_context;

void report_set_context(const char *context)
{
    g_free(report_context);
    report_context = g_strdup(context);
}

void warn_report(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    char *msg = g_strdup_vprintf(fmt, ap);
    va_end(ap);
    const char *prog = g_get_prgname();

    if (report_context && !report_context[0]) {
        warn_print("warning: %s", msg);
    } else if (report_context) {
        warn_print("%s: %s: warning: %s", prog ? prog : "", report_context,
                   msg);
    } else {
        warn_print("%s%swarning: %s", prog ? prog : "", prog ? ": " : "",
                   msg);
    }
    g_free(msg);
}

static bool (*in_monitor_command)(void);

void report_set_monitor_check(bool (*in_command)(void))
{
    in_monitor_command = in_command;
}

void error_print(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    char *msg = g_strdup_vprintf(fmt, ap);
    va_end(ap);
    const char *prog = g_get_prgname();
    if (in_monitor_command && in_monitor_command()) {
        prog = NULL;
    }
    warn_print("%s%s%s", prog ? prog : "", prog ? ": " : "", msg);
    g_free(msg);
}
