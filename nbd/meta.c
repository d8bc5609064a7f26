/*
 * Meta contexts: NBD_OPT_LIST_META_CONTEXT and NBD_OPT_SET_META_CONTEXT.
 * The contexts are base:allocation (always), qemu:allocation-depth (when
 * the export offers it) and qemu:dirty-bitmap:NAME for each bitmap the
 * export offers.  Queries are matched as QEMU matches them: an exact name
 * selects it; for LIST, an empty query or a bare namespace ("base:",
 * "qemu:", "qemu:dirty-bitmap:") lists what it has; anything else is
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

void nbd_meta_reset(NbdMeta *meta)
{
    g_free(meta->bitmaps);
    memset(meta, 0, sizeof(*meta));
}

static void select_all_bitmaps(NbdMeta *meta)
{
    for (size_t i = 0; i < meta->exp->nr_bitmaps; i++) {
        meta->bitmaps[i] = true;
    }
}

static void match_query(NbdClient *client, NbdMeta *meta, const char *q)
{
    bool list = client->opt == NBD_OPT_LIST_META_CONTEXT;

    if (shift(&q, "base:")) {
        if ((!*q && list) || strcmp(q, "allocation") == 0) {
            meta->base_allocation = true;
        }
    } else if (shift(&q, "qemu:")) {
        if (!*q && list) {
            meta->allocation_depth = meta->exp->allocation_depth;
            select_all_bitmaps(meta);
        } else if (strcmp(q, "allocation-depth") == 0) {
            meta->allocation_depth = meta->exp->allocation_depth;
        } else if (shift(&q, "dirty-bitmap:")) {
            if (!*q) {
                if (list) {
                    select_all_bitmaps(meta);
                }
                return;
            }
            for (size_t i = 0; i < meta->exp->nr_bitmaps; i++) {
                if (!strcmp(dirty_bitmap_name(meta->exp->bitmaps[i]), q)) {
                    meta->bitmaps[i] = true;
                    return;
                }
            }
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
        nbd_meta_reset(meta);
    }

    ret = nbd_opt_read_name(client, &export_name, NULL);
    if (ret <= 0) {
        return ret;
    }
    meta->exp = nbd_export_find_name(export_name);
    if (!meta->exp) {
        g_autofree char *sane = nbd_sanitize_name(export_name);
        ret = nbd_opt_drop(client, NBD_REP_ERR_UNKNOWN,
                           "export '%s' not present", sane);
        goto out;
    }
    meta->bitmaps = g_new0(bool, meta->exp->nr_bitmaps);
    ret = nbd_opt_read(client, be, 4, false);
    if (ret <= 0) {
        goto out;
    }
    uint32_t nq = nbd_get32(be);
    if (client->opt == NBD_OPT_LIST_META_CONTEXT && nq == 0) {
        meta->base_allocation = true;
        meta->allocation_depth = meta->exp->allocation_depth;
        select_all_bitmaps(meta);
    }
    for (; nq; nq--) {
        ret = nbd_opt_read(client, be, 4, false);
        if (ret <= 0) {
            goto out;
        }
        uint32_t len = nbd_get32(be);
        if (len > NBD_MAX_STRING_SIZE) {
            /* Too long to be one of ours: skipped, not an error. */
            ret = nbd_opt_skip(client, len);
            if (ret <= 0) {
                goto out;
            }
            continue;
        }
        g_autofree char *q = g_malloc(len + 1);
        ret = nbd_opt_read(client, q, len, true);
        if (ret <= 0) {
            goto out;
        }
        q[len] = '\0';
        match_query(client, meta, q);
    }

    unsigned count = 0;
    ret = -EIO;
    if (meta->base_allocation) {
        if (send_context(client, "base:allocation",
                         NBD_META_ID_BASE_ALLOCATION) < 0) {
            goto out;
        }
        count++;
    }
    if (meta->allocation_depth) {
        if (send_context(client, "qemu:allocation-depth",
                         NBD_META_ID_ALLOCATION_DEPTH) < 0) {
            goto out;
        }
        count++;
    }
    for (size_t i = 0; i < meta->exp->nr_bitmaps; i++) {
        if (!meta->bitmaps[i]) {
            continue;
        }
        g_autofree char *name = g_strdup_printf(
            "qemu:dirty-bitmap:%s", dirty_bitmap_name(meta->exp->bitmaps[i]));
        if (send_context(client, name, NBD_META_ID_DIRTY_BITMAP + i) < 0) {
            goto out;
        }
        count++;
    }
    ret = nbd_opt_send_rep(client, NBD_REP_ACK, NULL, 0);
    if (ret > 0) {
        meta->count = count;
    }
out:
    if (meta == &local) {
        nbd_meta_reset(&local);
    }
    return ret;
}
