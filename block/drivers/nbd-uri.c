/*
 * NBD filenames, turned into the nbd driver's options as QEMU 7.2 does:
 *
 *   nbd[+tcp]://HOST[:PORT][/EXPORT]       server.type=inet
 *   nbd+unix://[/EXPORT]?socket=PATH       server.type=unix
 *   nbd:unix:PATH[:exportname=NAME]        (the legacy forms)
 *   nbd:HOST:PORT[:exportname=NAME]
 *
 * The URI parser is our own, small and strict: QEMU's accepts exactly one
 * query parameter, named "socket", for unix and none for TCP, and an
 * authority only for TCP; anything else is "No valid URL specified".
 */
#include <string.h>
#include "nbd-int.h"

#define NBD_DEFAULT_PORT "10809"

/* %XX decoding; NULL for a '%' without two hex digits (RFC 3986). */
static char *uri_unescape(const char *s, size_t len)
{
    GString *out = g_string_sized_new(len);
    for (size_t i = 0; i < len; i++) {
        if (s[i] != '%') {
            g_string_append_c(out, s[i]);
        } else if (i + 2 < len && g_ascii_isxdigit(s[i + 1]) &&
                   g_ascii_isxdigit(s[i + 2])) {
            g_string_append_c(out, (char)(g_ascii_xdigit_value(s[i + 1]) * 16 +
                                          g_ascii_xdigit_value(s[i + 2])));
            i += 2;
        } else {
            g_string_free(out, TRUE);
            return NULL;
        }
    }
    return g_string_free(out, FALSE);
}

static void put(json_t *options, const char *key, const char *val)
{
    opts_set_dotted(options, key, json_string_nocheck(val), NULL);
}

/* Returns false for anything QEMU calls "No valid URL specified". */
static bool parse_uri(const char *filename, json_t *options)
{
    const char *sep = strstr(filename, "://");
    bool is_unix;
    size_t slen = sep - filename;

    if (slen == 3 && !strncmp(filename, "nbd", 3)) {
        is_unix = false;
    } else if (slen == 7 && !strncmp(filename, "nbd+tcp", 7)) {
        is_unix = false;
    } else if (slen == 8 && !strncmp(filename, "nbd+unix", 8)) {
        is_unix = true;
    } else {
        return false;
    }
    const char *auth = sep + 3;
    size_t alen = strcspn(auth, "/?#");
    const char *path = auth + alen;
    size_t plen = strcspn(path, "?#");
    const char *query = NULL;
    size_t qlen = 0;
    if (path[plen] == '?') {
        query = path + plen + 1;
        qlen = strcspn(query, "#");
    }

    /* The query: at most one "name=value" (QEMU splits on '&' and ';'). */
    char *qname = NULL, *qvalue = NULL;
    int nparams = 0;
    bool ok = false;
    if (query && qlen) {
        size_t first = strcspn(query, "&;");
        if (first < qlen) {
            goto out;            /* more than one parameter */
        }
        const char *eq = memchr(query, '=', qlen);
        nparams = 1;
        if (eq) {
            qname = uri_unescape(query, eq - query);
            qvalue = uri_unescape(eq + 1, qlen - (eq + 1 - query));
        } else {
            qname = uri_unescape(query, qlen);
            qvalue = g_strdup("");
        }
        if (!qname || !qvalue) {
            goto out;
        }
    }
    if ((is_unix && nparams != 1) || (!is_unix && nparams)) {
        goto out;
    }

    if (plen > 0 && path[0] == '/') {
        path++;
        plen--;
    }
    if (plen) {
        char *exp = uri_unescape(path, plen);
        if (!exp) {
            goto out;
        }
        put(options, "export", exp);
        g_free(exp);
    }

    if (is_unix) {
        if (alen || strcmp(qname, "socket")) {
            goto out;
        }
        put(options, "server.type", "unix");
        put(options, "server.path", qvalue);
    } else {
        /* [user@]host[:port], host possibly a bracketed IPv6 literal. */
        const char *at = memchr(auth, '@', alen);
        const char *h = at ? at + 1 : auth;
        size_t hlen = alen - (h - auth);
        const char *port = NULL;
        size_t portlen = 0;
        char *host;
        if (hlen && h[0] == '[') {
            const char *close = memchr(h, ']', hlen);
            if (!close) {
                goto out;
            }
            host = g_strndup(h + 1, close - h - 1);
            if (close + 1 < h + hlen) {
                if (close[1] != ':') {
                    g_free(host);
                    goto out;
                }
                port = close + 2;
                portlen = h + hlen - port;
            }
        } else {
            const char *colon = memchr(h, ':', hlen);
            size_t n = colon ? (size_t)(colon - h) : hlen;
            host = uri_unescape(h, n);
            if (!host) {
                goto out;
            }
            if (colon) {
                port = colon + 1;
                portlen = h + hlen - port;
            }
        }
        for (size_t i = 0; i < portlen; i++) {
            if (!g_ascii_isdigit(port[i])) {
                g_free(host);
                goto out;
            }
        }
        if (!host[0]) {
            g_free(host);
            goto out;
        }
        put(options, "server.type", "inet");
        put(options, "server.host", host);
        g_free(host);
        /* Port 0 or none: the default, as QEMU ("uri->port ?: 10809"). */
        guint64 pnum = portlen ? g_ascii_strtoull(port, NULL, 10) : 0;
        char *p = pnum ? g_strdup_printf("%" G_GUINT64_FORMAT, pnum)
                       : g_strdup(NBD_DEFAULT_PORT);
        put(options, "server.port", p);
        g_free(p);
    }
    ok = true;
out:
    g_free(qname);
    g_free(qvalue);
    return ok;
}

/* QEMU's inet_parse() for "host:port" (the host may be "[v6]" or empty). */
static bool parse_host_port(const char *spec, char **host, char **port)
{
    const char *colon;
    if (spec[0] == '[') {
        const char *close = strchr(spec, ']');
        if (!close || close[1] != ':') {
            return false;
        }
        *host = g_strndup(spec + 1, close - spec - 1);
        colon = close + 1;
    } else {
        colon = strchr(spec, ':');
        if (!colon) {
            return false;
        }
        *host = g_strndup(spec, colon - spec);
    }
    /* Options after a comma (",ipv4" ...) are not part of the port. */
    size_t plen = strcspn(colon + 1, ",");
    if (!plen) {
        g_free(*host);
        return false;
    }
    *port = g_strndup(colon + 1, plen);
    return true;
}

bool nbd_parse_filename(const char *filename, json_t *options, GError **errp)
{
    static const char *const conflicting[] = {
        "host", "port", "path", "export", "server",
    };
    for (size_t i = 0; i < G_N_ELEMENTS(conflicting); i++) {
        if (json_object_get(options, conflicting[i])) {
            error_setg(errp, "Option '%s' cannot be used with a file name",
                       conflicting[i]);
            return false;
        }
    }
    /* Dotted "server.x" keys not yet nested. */
    const char *key;
    json_t *val;
    json_object_foreach(options, key, val) {
        if (g_str_has_prefix(key, "server.")) {
            error_setg(errp, "Option '%s' cannot be used with a file name",
                       key);
            return false;
        }
    }

    if (strstr(filename, "://")) {
        if (!parse_uri(filename, options)) {
            error_setg(errp, "No valid URL specified");
            return false;
        }
        return true;
    }

    char *file = g_strdup(filename);
    char *en = strstr(file, ":exportname=");
    bool ok = false;
    if (en) {
        if (!en[strlen(":exportname=")]) {
            /* QEMU leaves everything unset then: "address missing" later. */
            ok = true;
            goto out;
        }
        *en = '\0';
        put(options, "export", en + strlen(":exportname="));
    }
    if (!g_str_has_prefix(file, "nbd:")) {
        error_setg(errp, "File name string for NBD must start with 'nbd:'");
        goto out;
    }
    const char *spec = file + 4;
    if (!*spec) {
        ok = true;
        goto out;
    }
    if (g_str_has_prefix(spec, "unix:")) {
        put(options, "server.type", "unix");
        put(options, "server.path", spec + 5);
    } else {
        char *host, *port;
        if (!parse_host_port(spec, &host, &port)) {
            error_setg(errp, "error parsing address '%s'", spec);
            goto out;
        }
        put(options, "server.type", "inet");
        put(options, "server.host", host);
        put(options, "server.port", port);
        g_free(host);
        g_free(port);
    }
    ok = true;
out:
    g_free(file);
    return ok;
}

/* The name QEMU shows for a node it could reopen from its filename alone. */
char *nbd_make_filename(const NbdAddress *addr, const char *export)
{
    if (addr->is_unix) {
        return export ? g_strdup_printf("nbd+unix:///%s?socket=%s", export,
                                        addr->path)
                      : g_strdup_printf("nbd+unix://?socket=%s", addr->path);
    }
    return export ? g_strdup_printf("nbd://%s:%s/%s", addr->host, addr->port,
                                    export)
                  : g_strdup_printf("nbd://%s:%s", addr->host, addr->port);
}
