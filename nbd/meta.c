/*
 * Meta contexts: NBD_OPT_LIST_META_CONTEXT and NBD_OPT_SET_META_CONTEXT.
 * The contexts are base:allocation (always) and qemu:allocation-depth
 * (when the export offers it).  Queries are matched as QEMU matches them:
 * an exact name selects it; for LIST, an empty query or a bare namespace
 * ("base:", "qemu:") lists what the namespace has; anything else is
 * silently not selected.
 */
#include <errno.h>
#include <string.h>
#include "nbd-int.h"
#include "proto.h"

static bool shift(const char **s, const char *prefix)
{
    size_t n = strlen(prefix);
    if (strncmp(*s, prefix, n) == 0) {
        *s += n;
        return true;
    }
    return false;
}

static void match_query(NbdClient *client, NbdMeta *meta, const char *q)
{
    bool list = client->opt == NBD_OPT_LIST_META_CONTEXT;

    if (shift(&q, "base:")) {
        if ((!*q && list) || strcmp(q, "allocation") == 0) {
            meta->base_allocation = true;
        }
    } else if (shift(&q, "qemu:")) {
        if ((!*q && list) || strcmp(q, "allocation-depth") == 0) {
            meta->allocation_depth = meta->exp->allocation_depth;
        }
    }
}

static int coroutine_fn send_context(NbdClient *client, const char *name,
                                     uint32_t id)
{
    uint8_t be[4];

    /* LIST replies carry no usable id. */
    nbd_put32(be, client->opt == NBD_OPT_LIST_META_CONTEXT ? 0 : id);
    return nbd_opt_send_rep2(client, NBD_REP_META_CONTEXT, be, 4, name,
                             strlen(name));
}

int coroutine_fn nbd_negotiate_meta(NbdClient *client)
{
    NbdMeta local = { 0 };
    NbdMeta *meta = &local;
    g_autofree char *export_name = NULL;
    uint8_t be[4];
    int ret;

    if (client->opt == NBD_OPT_SET_META_CONTEXT) {
        if (!client->structured_reply) {
            return nbd_opt_drop(client, NBD_REP_ERR_INVALID,
                                "request option '%s' when structured reply "
                                "is not negotiated",
                                nbd_opt_name(client->opt));
        }
        /* Only SET changes the client's choice, and it forgets the old. */
        meta = &client->meta;
        memset(meta, 0, sizeof(*meta));
    }

    ret = nbd_opt_read_name(client, &export_name, NULL);
    if (ret <= 0) {
        return ret;
    }
    meta->exp = nbd_export_find_name(export_name);
    if (!meta->exp) {
        g_autofree char *sane = nbd_sanitize_name(export_name);
        return nbd_opt_drop(client, NBD_REP_ERR_UNKNOWN,
                            "export '%s' not present", sane);
    }
    ret = nbd_opt_read(client, be, 4, false);
    if (ret <= 0) {
        return ret;
    }
    uint32_t nq = nbd_get32(be);
    if (client->opt == NBD_OPT_LIST_META_CONTEXT && nq == 0) {
        meta->base_allocation = true;
        meta->allocation_depth = meta->exp->allocation_depth;
    }
    for (; nq; nq--) {
        ret = nbd_opt_read(client, be, 4, false);
        if (ret <= 0) {
            return ret;
        }
        uint32_t len = nbd_get32(be);
        if (len > NBD_MAX_STRING_SIZE) {
            /* Too long to be one of ours: skipped, not an error. */
            ret = nbd_opt_skip(client, len);
            if (ret <= 0) {
                return ret;
            }
            continue;
        }
        g_autofree char *q = g_malloc(len + 1);
        ret = nbd_opt_read(client, q, len, true);
        if (ret <= 0) {
            return ret;
        }
        q[len] = '\0';
        match_query(client, meta, q);
    }

    unsigned count = 0;
    if (meta->base_allocation) {
        if (send_context(client, "base:allocation",
                         NBD_META_ID_BASE_ALLOCATION) < 0) {
            return -EIO;
        }
        count++;
    }
    if (meta->allocation_depth) {
        if (send_context(client, "qemu:allocation-depth",
                         NBD_META_ID_ALLOCATION_DEPTH) < 0) {
            return -EIO;
        }
        count++;
    }
    ret = nbd_opt_send_rep(client, NBD_REP_ACK, NULL, 0);
    if (ret > 0) {
        meta->count = count;
    }
    return ret;
}
