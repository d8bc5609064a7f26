/*
 * The RAM block registry (strata/ram-block.h).
 */
#include <string.h>

#include <glib.h>

#include "strata/ram-block.h"

static GList *blocks;   /* RamBlock *, registration order */

RamBlock *ram_block_register(const char *id, void *host, uint64_t size,
                             uint32_t page_size, int fd, void *opaque,
                             GError **errp)
{
    RamBlock *rb;

    if (!id || !*id || strlen(id) > RAM_BLOCK_MAX_ID) {
        error_setg(errp, "RAM block id must be 1 to %d characters",
                   RAM_BLOCK_MAX_ID);
        return NULL;
    }
    if (ram_block_find(id)) {
        error_setg(errp, "RAM block '%s' already exists", id);
        return NULL;
    }
    if (page_size == 0 || (page_size & (page_size - 1)) ||
        size == 0 || size % page_size) {
        error_setg(errp, "RAM block '%s': size %" G_GUINT64_FORMAT
                   " is not a multiple of its page size %u", id, size,
                   page_size);
        return NULL;
    }
    rb = g_new0(RamBlock, 1);
    rb->id = g_strdup(id);
    rb->host = host;
    rb->size = size;
    rb->page_size = page_size;
    rb->fd = fd;
    rb->opaque = opaque;
    blocks = g_list_append(blocks, rb);
    return rb;
}

void ram_block_unregister(RamBlock *rb)
{
    g_assert(!rb->busy);
    g_assert(!rb->tracking);   /* the owner stops tracking first */
    blocks = g_list_remove(blocks, rb);
    g_free(rb->id);
    g_free(rb);
}

RamBlock *ram_block_find(const char *id)
{
    for (GList *l = blocks; l; l = l->next) {
        RamBlock *rb = l->data;
        if (strcmp(rb->id, id) == 0) {
            return rb;
        }
    }
    return NULL;
}

RamBlock *ram_block_first(void)
{
    return blocks ? blocks->data : NULL;
}

RamBlock *ram_block_next(RamBlock *rb)
{
    GList *l = g_list_find(blocks, rb);
    return l && l->next ? l->next->data : NULL;
}

unsigned ram_block_count(void)
{
    return g_list_length(blocks);
}

void ram_block_ref(RamBlock *rb)
{
    rb->busy++;
}

void ram_block_unref(RamBlock *rb)
{
    g_assert(rb->busy > 0);
    rb->busy--;
}
