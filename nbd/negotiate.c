/*
 * The handshake: fixed newstyle only (as QEMU 7.2's server), options until
 * NBD_OPT_GO or NBD_OPT_EXPORT_NAME.  Every option handler answers with the
 * reply types and messages QEMU's server sends, so clients that look at
 * them (nbdinfo, libnbd's error strings) see the same thing.
 *
 * Return convention of the option helpers: negative to drop the client
 * (I/O error or protocol violation), 0 when the option is finished with an
 * error reply and negotiation goes on, 1 on success.
 */
#include <errno.h>
#include <inttypes.h>
#include <stdarg.h>
#include <string.h>
#include "nbd-int.h"
#include "proto.h"

int coroutine_fn nbd_opt_send_rep2(NbdClient *client, uint32_t type,
                                   const void *p1, uint32_t len1,
                                   const void *p2, uint32_t len2)
{
    uint8_t hdr[20];
    struct iovec iov[3] = {
        { hdr, sizeof(hdr) },
        { (void *)p1, len1 },
        { (void *)p2, len2 },
    };

    nbd_put64(hdr, NBD_REP_MAGIC);
    nbd_put32(hdr + 8, client->opt);
    nbd_put32(hdr + 12, type);
    nbd_put32(hdr + 16, len1 + len2);
    return nbd_channel_writev(client->ch, iov, 3) < 0 ? -EIO : 1;
}

int coroutine_fn nbd_opt_send_rep(NbdClient *client, uint32_t type,
                                  const void *payload, uint32_t len)
{
    return nbd_opt_send_rep2(client, type, payload, len, NULL, 0);
}

/* Skip what is left of the option, then answer an error with a message. */
static int coroutine_fn opt_vdrop(NbdClient *client, uint32_t type,
                                  const char *fmt, va_list va)
{
    if (nbd_channel_skip(client->ch, client->optlen) < 0) {
        return -EIO;
    }
    client->optlen = 0;
    g_autofree char *msg = g_strdup_vprintf(fmt, va);
    int ret = nbd_opt_send_rep(client, type, msg, strlen(msg));
    return ret < 0 ? ret : 0;
}

int coroutine_fn nbd_opt_drop(NbdClient *client, uint32_t type,
                              const char *fmt, ...)
{
    va_list va;
    va_start(va, fmt);
    int ret = opt_vdrop(client, type, fmt, va);
    va_end(va);
    return ret;
}

static int coroutine_fn G_GNUC_PRINTF(2, 3)
opt_invalid(NbdClient *client, const char *fmt, ...)
{
    va_list va;
    va_start(va, fmt);
    int ret = opt_vdrop(client, NBD_REP_ERR_INVALID, fmt, va);
    va_end(va);
    return ret;
}

int coroutine_fn nbd_opt_read(NbdClient *client, void *buf, uint32_t len,
                              bool check_nul)
{
    if (len > client->optlen) {
        return opt_invalid(client, "Inconsistent lengths in option %s",
                           nbd_opt_name(client->opt));
    }
    client->optlen -= len;
    if (len && nbd_channel_read(client->ch, buf, len) != 1) {
        return -EIO;
    }
    if (check_nul && memchr(buf, 0, len)) {
        return opt_invalid(client, "Unexpected embedded NUL in option %s",
                           nbd_opt_name(client->opt));
    }
    return 1;
}

int coroutine_fn nbd_opt_skip(NbdClient *client, uint32_t len)
{
    if (len > client->optlen) {
        return opt_invalid(client, "Inconsistent lengths in option %s",
                           nbd_opt_name(client->opt));
    }
    client->optlen -= len;
    return nbd_channel_skip(client->ch, len) < 0 ? -EIO : 1;
}

/* A 32-bit length and that many bytes, at most NBD_MAX_STRING_SIZE. */
int coroutine_fn nbd_opt_read_name(NbdClient *client, char **name,
                                   uint32_t *lenp)
{
    uint8_t be[4];
    int ret;

    *name = NULL;
    ret = nbd_opt_read(client, be, 4, false);
    if (ret <= 0) {
        return ret;
    }
    uint32_t len = nbd_get32(be);
    if (len > NBD_MAX_STRING_SIZE) {
        return opt_invalid(client, "Invalid name length: %" PRIu32, len);
    }
    g_autofree char *s = g_malloc(len + 1);
    ret = nbd_opt_read(client, s, len, true);
    if (ret <= 0) {
        return ret;
    }
    s[len] = '\0';
    if (lenp) {
        *lenp = len;
    }
    *name = g_steal_pointer(&s);
    return 1;
}

/* Long names are cut in error messages, as QEMU does. */
char *nbd_sanitize_name(const char *name)
{
    if (strnlen(name, 80) < 80) {
        return g_strdup(name);
    }
    return g_strdup_printf("%.80s...", name);
}

static int coroutine_fn reject_length(NbdClient *client)
{
    return opt_invalid(client, "option '%s' has unexpected length",
                       nbd_opt_name(client->opt));
}

static int coroutine_fn handle_list(NbdClient *client)
{
    for (GList *l = nbd_export_list(); l; l = l->next) {
        NbdExport *exp = l->data;
        const char *desc = exp->description ? exp->description : "";
        uint32_t nlen = strlen(exp->name);
        uint8_t be[4];
        nbd_put32(be, nlen);
        /* name length, name, description: one reply. */
        g_autofree char *body = g_strdup_printf("%s%s", exp->name, desc);
        uint8_t hdr[20];
        struct iovec iov[3] = {
            { hdr, 20 }, { be, 4 }, { body, strlen(body) },
        };
        nbd_put64(hdr, NBD_REP_MAGIC);
        nbd_put32(hdr + 8, client->opt);
        nbd_put32(hdr + 12, NBD_REP_SERVER);
        nbd_put32(hdr + 16, 4 + strlen(body));
        if (nbd_channel_writev(client->ch, iov, 3) < 0) {
            return -EIO;
        }
    }
    return nbd_opt_send_rep(client, NBD_REP_ACK, NULL, 0);
}

static int coroutine_fn send_info(NbdClient *client, uint16_t type,
                                  const void *buf, uint32_t len)
{
    uint8_t be[2];
    nbd_put16(be, type);
    return nbd_opt_send_rep2(client, NBD_REP_INFO, be, 2, buf, len);
}

static void attach_client(NbdClient *client, NbdExport *exp)
{
    client->exp = exp;
    exp->clients = g_list_append(exp->clients, client);
    nbd_export_ref(exp);
    if (client->meta.exp != exp) {
        nbd_meta_reset(&client->meta);
    }
}

/* NBD_OPT_INFO and NBD_OPT_GO: 2 when GO succeeded, else as the helpers. */
static int coroutine_fn handle_info(NbdClient *client)
{
    g_autofree char *name = NULL;
    uint32_t namelen = 0;
    uint8_t be[8];
    bool sendname = false, blocksize = false;
    int ret;

    ret = nbd_opt_read_name(client, &name, &namelen);
    if (ret <= 0) {
        return ret;
    }
    ret = nbd_opt_read(client, be, 2, false);
    if (ret <= 0) {
        return ret;
    }
    for (uint16_t n = nbd_get16(be); n; n--) {
        ret = nbd_opt_read(client, be, 2, false);
        if (ret <= 0) {
            return ret;
        }
        switch (nbd_get16(be)) {
        case NBD_INFO_NAME:
            sendname = true;
            break;
        case NBD_INFO_BLOCK_SIZE:
            blocksize = true;
            break;
        }
    }
    if (client->optlen) {
        return reject_length(client);
    }

    NbdExport *exp = nbd_export_find_name(name);
    if (!exp) {
        g_autofree char *sane = nbd_sanitize_name(name);
        return nbd_opt_drop(client, NBD_REP_ERR_UNKNOWN,
                            "export '%s' not present", sane);
    }
    if (sendname && send_info(client, NBD_INFO_NAME, name, namelen) < 0) {
        return -EIO;
    }
    if (exp->description &&
        send_info(client, NBD_INFO_DESCRIPTION, exp->description,
                  strlen(exp->description)) < 0) {
        return -EIO;
    }
    /*
     * The block layer takes any alignment (it bounces), so the minimum is
     * 1 for every client; preferred 4 KiB and maximum 32 MiB as QEMU says
     * for the images it serves.
     */
    uint8_t sizes[12];
    nbd_put32(sizes, 1);
    nbd_put32(sizes + 4, 4096);
    nbd_put32(sizes + 8, NBD_MAX_BUFFER_SIZE);
    if (send_info(client, NBD_INFO_BLOCK_SIZE, sizes, 12) < 0) {
        return -EIO;
    }
    uint8_t info[10];
    uint16_t flags = exp->flags;
    if (client->structured_reply) {
        flags |= NBD_FLAG_SEND_DF;
    }
    nbd_put64(info, exp->size);
    nbd_put16(info + 8, flags);
    if (send_info(client, NBD_INFO_EXPORT, info, 10) < 0) {
        return -EIO;
    }
    if (nbd_opt_send_rep(client, NBD_REP_ACK, NULL, 0) < 0) {
        return -EIO;
    }
    (void)blocksize;    /* with a minimum of 1 there is nothing to enforce */
    if (client->opt == NBD_OPT_GO) {
        attach_client(client, exp);
        return 2;
    }
    return 1;
}

/* NBD_OPT_EXPORT_NAME: no error reply exists, a bad name drops the client. */
static int coroutine_fn handle_export_name(NbdClient *client)
{
    if (client->optlen > NBD_MAX_STRING_SIZE) {
        return -EINVAL;
    }
    g_autofree char *name = g_malloc(client->optlen + 1);
    if (client->optlen &&
        nbd_channel_read(client->ch, name, client->optlen) != 1) {
        return -EIO;
    }
    name[client->optlen] = '\0';
    client->optlen = 0;
    NbdExport *exp = nbd_export_find_name(name);
    if (!exp) {
        return -EINVAL;
    }
    uint8_t buf[8 + 2 + 124] = { 0 };
    uint16_t flags = exp->flags;
    if (client->structured_reply) {
        flags |= NBD_FLAG_SEND_DF;
    }
    nbd_put64(buf, exp->size);
    nbd_put16(buf + 8, flags);
    if (nbd_channel_write(client->ch, buf,
                          client->no_zeroes ? 10 : sizeof(buf)) < 0) {
        return -EIO;
    }
    attach_client(client, exp);
    return 0;
}

static int coroutine_fn negotiate_options(NbdClient *client)
{
    uint8_t buf[16];

    if (nbd_channel_read(client->ch, buf, 4) != 1) {
        return -EIO;
    }
    uint32_t flags = nbd_get32(buf);
    bool fixed = flags & NBD_FLAG_C_FIXED_NEWSTYLE;
    client->no_zeroes = flags & NBD_FLAG_C_NO_ZEROES;
    if (flags & ~(NBD_FLAG_C_FIXED_NEWSTYLE | NBD_FLAG_C_NO_ZEROES)) {
        return -EINVAL;
    }

    for (;;) {
        int ret;

        if (nbd_channel_read(client->ch, buf, 16) != 1) {
            return -EIO;
        }
        if (nbd_get64(buf) != NBD_OPTS_MAGIC) {
            return -EINVAL;
        }
        client->opt = nbd_get32(buf + 8);
        client->optlen = nbd_get32(buf + 12);
        if (client->optlen > NBD_MAX_BUFFER_SIZE) {
            return -EINVAL;
        }
        if (!fixed) {
            /* Plain newstyle clients can only name an export. */
            if (client->opt == NBD_OPT_EXPORT_NAME) {
                return handle_export_name(client);
            }
            return -EINVAL;
        }

        switch (client->opt) {
        case NBD_OPT_LIST:
            ret = client->optlen ? reject_length(client) : handle_list(client);
            break;
        case NBD_OPT_ABORT:
            /* Answer, but the client need not wait for it. */
            nbd_opt_send_rep(client, NBD_REP_ACK, NULL, 0);
            return 1;
        case NBD_OPT_EXPORT_NAME:
            return handle_export_name(client);
        case NBD_OPT_INFO:
        case NBD_OPT_GO:
            ret = handle_info(client);
            if (ret == 2) {
                return 0;
            }
            break;
        case NBD_OPT_STARTTLS:
            if (client->optlen) {
                ret = reject_length(client);
            } else {
                ret = nbd_opt_drop(client, NBD_REP_ERR_POLICY,
                                   "TLS not configured");
            }
            break;
        case NBD_OPT_STRUCTURED_REPLY:
            if (client->optlen) {
                ret = reject_length(client);
            } else if (client->structured_reply) {
                ret = nbd_opt_drop(client, NBD_REP_ERR_INVALID,
                                   "structured reply already negotiated");
            } else {
                ret = nbd_opt_send_rep(client, NBD_REP_ACK, NULL, 0);
                client->structured_reply = true;
            }
            break;
        case NBD_OPT_LIST_META_CONTEXT:
        case NBD_OPT_SET_META_CONTEXT:
            ret = nbd_negotiate_meta(client);
            break;
        default:
            ret = nbd_opt_drop(client, NBD_REP_ERR_UNSUP,
                               "Unsupported option %" PRIu32 " (%s)",
                               client->opt, nbd_opt_name(client->opt));
            break;
        }
        if (ret < 0) {
            return ret;
        }
        /* A handler that stopped early leaves bytes we must not parse. */
        if (client->optlen && nbd_channel_skip(client->ch, client->optlen)) {
            return -EIO;
        }
        client->optlen = 0;
    }
}

int coroutine_fn nbd_negotiate(NbdClient *client)
{
    uint8_t greeting[18];

    nbd_put64(greeting, NBD_INIT_PASSWD);
    nbd_put64(greeting + 8, NBD_OPTS_MAGIC);
    nbd_put16(greeting + 16, NBD_FLAG_FIXED_NEWSTYLE | NBD_FLAG_NO_ZEROES);
    if (nbd_channel_write(client->ch, greeting, sizeof(greeting)) < 0) {
        return -1;
    }
    int ret = negotiate_options(client);
    if (ret < 0) {
        return -1;
    }
    return ret;
}
