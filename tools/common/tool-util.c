/* Program name, reports, QEMU's size parser and mode names for the tools. */
#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "strata/block.h"
#include "tool-common.h"
#include "strata/units.h"

static char *prog_name;

void tool_set_name(const char *argv0)
{
    g_free(prog_name);
    prog_name = g_path_get_basename(argv0 && *argv0 ? argv0 : "strata");
    g_set_prgname(prog_name);
}

const char *tool_name(void)
{
    return prog_name ? prog_name : "strata";
}

static void vreport(const char *kind, const char *fmt, va_list ap)
{
    fprintf(stderr, "%s: %s", tool_name(), kind);
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
}

void tool_error(const char *fmt, ...)
{
    va_list ap;

    va_start(ap, fmt);
    vreport("", fmt, ap);
    va_end(ap);
}

void tool_warn(const char *fmt, ...)
{
    va_list ap;

    va_start(ap, fmt);
    vreport("warning: ", fmt, ap);
    va_end(ap);
}

void tool_error_gerror(GError *err, const char *prefix_fmt, ...)
{
    va_list ap;
    char *prefix;

    va_start(ap, prefix_fmt);
    prefix = g_strdup_vprintf(prefix_fmt, ap);
    va_end(ap);
    /*
     * A message may carry QEMU's "hint" lines after the first newline; they
     * are printed without the program prefix, as error_report_err() does.
     */
    fprintf(stderr, "%s: %s%s\n", tool_name(), prefix,
            err ? err->message : "Unknown error");
    g_free(prefix);
    if (err) {
        g_error_free(err);
    }
}

void tool_trace_option(const char *arg)
{
    char **elems = g_strsplit(arg, ",", -1);

    for (int i = 0; elems[i]; i++) {
        const char *pattern = NULL;

        if (g_str_has_prefix(elems[i], "enable=")) {
            pattern = elems[i] + strlen("enable=");
        } else if (i == 0 && !strchr(elems[i], '=')) {
            pattern = elems[i];
        }
        if (pattern && *pattern == '-') {
            pattern++;
        }
        if (pattern && *pattern && !strpbrk(pattern, "*?") &&
            strcmp(pattern, "help")) {
            tool_warn("trace event '%s' does not exist", pattern);
        }
    }
    g_strfreev(elems);
}

/* ---- qemu_strtosz ---- */

int tool_strtosz(const char *nptr, const char **end, uint64_t *result)
{
    bool hex_suffix = false;
    int ret = strtosz(nptr, end, result, &hex_suffix);
    if (hex_suffix) {
        tool_warn("Using a multiplier suffix on hex numbers is deprecated: %s",
                  nptr);
    }
    return ret;
}

int64_t tool_cvtnum(const char *s)
{
    uint64_t value;
    int err = tool_strtosz(s, NULL, &value);

    if (err < 0) {
        return err;
    }
    if (value > INT64_MAX) {
        return -ERANGE;
    }
    return (int64_t)value;
}

bool tool_id_wellformed(const char *id)
{
    if (!g_ascii_isalpha(id[0])) {
        return false;
    }
    for (int i = 1; id[i]; i++) {
        if (!g_ascii_isalnum(id[i]) && !strchr("-._", id[i])) {
            return false;
        }
    }
    return true;
}

/* ---- Modes ---- */

int tool_parse_cache_mode(const char *mode, int *flags, bool *writethrough)
{
    int f = *flags & ~(NODE_O_NOCACHE | NODE_O_NO_FLUSH);
    bool wt;

    if (!strcmp(mode, "off") || !strcmp(mode, "none")) {
        f |= NODE_O_NOCACHE;
        wt = false;
    } else if (!strcmp(mode, "directsync")) {
        f |= NODE_O_NOCACHE;
        wt = true;
    } else if (!strcmp(mode, "writeback")) {
        wt = false;
    } else if (!strcmp(mode, "unsafe")) {
        f |= NODE_O_NO_FLUSH;
        wt = false;
    } else if (!strcmp(mode, "writethrough")) {
        wt = true;
    } else {
        return -1;
    }
    *flags = f;
    *writethrough = wt;
    return 0;
}

int tool_parse_discard(const char *mode, bool *unmap)
{
    if (!strcmp(mode, "off") || !strcmp(mode, "ignore")) {
        *unmap = false;
    } else if (!strcmp(mode, "on") || !strcmp(mode, "unmap")) {
        *unmap = true;
    } else {
        return -1;
    }
    return 0;
}

int tool_parse_aio(const char *mode, const char **canonical)
{
    static const char *const modes[] = { "threads", "native", "io_uring" };

    for (size_t i = 0; i < G_N_ELEMENTS(modes); i++) {
        if (!strcmp(mode, modes[i])) {
            *canonical = modes[i];
            return 0;
        }
    }
    return -1;
}
