/*
 * --chardev for strata-daemon, and the shutdown sequence.
 */
#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "strata/block.h"
#include "strata/chardev.h"
#include "strata/error.h"
#include "strata/qmp-server.h"
#include "../common/tool-common.h"
#include "daemon.h"

/* The keys of QEMU's chardev option list (any backend). */
static const char *const chardev_keys[] = {
    "id", "backend", "path", "host", "port", "fd", "localaddr", "localport",
    "to", "ipv4", "ipv6", "wait", "server", "delay", "nodelay", "reconnect",
    "telnet", "tn3270", "websocket", "width", "height", "cols", "rows",
    "mux", "signal", "name", "debug", "size", "chardev", "append",
    "logfile", "logappend", "tls-creds", "tls-authz", "abstract", "tight",
    NULL,
};

/* QemuOpts' booleans. */
static bool parse_bool(json_t *opts, const char *key, bool def, bool *out,
                       GError **errp)
{
    const char *v = json_string_value(json_object_get(opts, key));

    if (!v) {
        *out = def;
        return true;
    }
    if (!strcmp(v, "on") || !strcmp(v, "yes") || !strcmp(v, "true") ||
        !strcmp(v, "y")) {
        *out = true;
    } else if (!strcmp(v, "off") || !strcmp(v, "no") ||
               !strcmp(v, "false") || !strcmp(v, "n")) {
        *out = false;
    } else {
        error_setg(errp, "Parameter '%s' expects 'on' or 'off'", key);
        return false;
    }
    json_object_del(opts, key);
    return true;
}

static const char *take(json_t *opts, const char *key)
{
    json_t *v = json_object_get(opts, key);
    return v ? json_string_value(v) : NULL;
}

bool daemon_chardev_option(const char *arg, GError **errp)
{
    /* the first element, when it is a bare word, is the backend */
    const char *comma = strchr(arg, ',');
    size_t first = comma ? (size_t)(comma - arg) : strlen(arg);
    char *backend = NULL;
    const char *rest = arg;
    if (!memchr(arg, '=', first)) {
        backend = g_strndup(arg, first);
        rest = comma ? comma + 1 : "";
    }
    json_t *opts = NULL;
    bool ok = false;
    if (!tool_qemuopts_parse(&opts, rest, false, errp)) {
        goto out;
    }
    if (!backend && take(opts, "backend")) {
        backend = g_strdup(take(opts, "backend"));
        json_object_del(opts, "backend");
    }
    const char *id = take(opts, "id");
    if (!id) {
        error_setg(errp, "Parameter 'id' is missing");
        goto out;
    }
    if (!backend) {
        error_setg(errp, "chardev: \"%s\" missing backend", id);
        goto out;
    }
    const char *key;
    json_t *v;
    json_object_foreach(opts, key, v) {
        if (!g_strv_contains(chardev_keys, key)) {
            error_setg(errp, "Invalid parameter '%s'", key);
            goto out;
        }
    }
    if (!strcmp(backend, "stdio")) {
        /* as QEMU: the other backends' keys are accepted and unused */
        ok = chardev_stdio_add(id, errp);
        goto out;
    }
    if (strcmp(backend, "socket")) {
        error_setg(errp, "chardev backend '%s' is not supported by %s "
                   "(only 'socket' and 'stdio')", backend, tool_name());
        goto out;
    }
    /*
     * As QEMU's reader: server defaults to off on the command line (a
     * client), wait to on for a server; the address checks come first.
     */
    bool server, wait;
    bool has_wait = json_object_get(opts, "wait") != NULL;
    bool has_reconnect = json_object_get(opts, "reconnect") != NULL;
    if (!parse_bool(opts, "server", false, &server, errp) ||
        !parse_bool(opts, "wait", true, &wait, errp)) {
        goto out;
    }
    ChardevSocketSpec spec = {
        .path = take(opts, "path"), .host = take(opts, "host"),
        .port = take(opts, "port"), .fd = -1, .wait = wait,
        .client = !server, .unix_flags = true,
    };
    const char *fd = take(opts, "fd");
    if (!!spec.path + !!spec.host + !!fd > 1) {
        error_setg(errp, "None or one of 'path', 'fd' or 'host' option "
                   "required.");
        goto out;
    }
    if (spec.host && !spec.port) {
        error_setg(errp, "chardev: socket: no port given");
        goto out;
    }
    long long reconnect = 0;
    if (has_reconnect) {
        const char *r = take(opts, "reconnect");
        char *end;
        errno = 0;
        reconnect = strtoll(r, &end, 0);
        if (!*r || *end || errno) {
            error_setg(errp, "Parameter 'reconnect' expects a number");
            goto out;
        }
        json_object_del(opts, "reconnect");
    }
    if (fd) {
        char *end;
        long n = strtol(fd, &end, 10);
        if (!*fd || *end || n < 0 || n > INT32_MAX) {
            error_setg(errp, "Invalid file descriptor number '%s'", fd);
            goto out;
        }
        spec.fd = (int)n;
    }
    if (has_reconnect && fd) {
        error_setg(errp, "'reconnect' option is incompatible with 'fd' "
                   "address type");
        goto out;
    }
    if (server && has_reconnect) {
        error_setg(errp, "'reconnect' option is incompatible with socket in "
                   "server listen mode");
        goto out;
    }
    const char *ws = take(opts, "websocket");
    if (!server && ws && (!strcmp(ws, "on") || !strcmp(ws, "yes") ||
                          !strcmp(ws, "true") || !strcmp(ws, "y"))) {
        error_setg(errp, "Websocket client is not implemented");
        goto out;
    }
    if (!server && has_wait) {
        error_setg(errp, "'wait' option is incompatible with socket in "
                   "client connect mode");
        goto out;
    }
    if (reconnect > 0) {
        spec.reconnect = reconnect > UINT_MAX ? UINT_MAX : reconnect;
    }
    json_object_foreach(opts, key, v) {
        if (strcmp(key, "id") && strcmp(key, "path") && strcmp(key, "host") &&
            strcmp(key, "port") && strcmp(key, "fd")) {
            error_setg(errp, "Parameter '%s' is not supported by %s", key,
                       tool_name());
            goto out;
        }
    }
    if (!spec.path && !spec.host && spec.fd < 0) {
        if (!server) {
            /* QEMU reads a missing address as an empty fd= */
            error_setg(errp, "Unable to parse FD number ");
        } else {
            error_setg(errp, "chardev: socket: exactly one of path=, host= "
                       "and fd= is needed");
        }
        goto out;
    }
    char *who = g_strdup_printf("%s: --chardev %s", tool_name(), arg);
    ok = chardev_socket_add(id, &spec, who, errp);
    g_free(who);
out:
    json_decref(opts);
    g_free(backend);
    return ok;
}

void daemon_shutdown(void)
{
    qmp_server_run_shutdown(QMP_SHUTDOWN_EXPORTS);
    drain_all_begin();
    qmp_server_run_shutdown(QMP_SHUTDOWN_JOBS);
    qmp_server_run_shutdown(QMP_SHUTDOWN_NODES);
    drain_all_end();
}
