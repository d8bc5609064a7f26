/* Image creation through a driver's create callback. */
#include <errno.h>
#include <string.h>
#include "block-int.h"

typedef struct {
    const BlockDriver *drv;
    const char *filename;
    json_t *options;
    GError *err;
    int ret;
} CreateCo;

static void create_co(void *opaque)
{
    CreateCo *c = opaque;
    c->ret = c->drv->create(c->filename, c->options, &c->err);
}

bool image_create(const char *fmt, const char *filename, json_t *options,
                  GError **errp)
{
    const BlockDriver *drv = driver_find(fmt);
    /*
     * A format creates its storage as "file"; QEMU's bdrv_create_file()
     * means the protocol the name gives ("nbd://..."), if any.
     */
    size_t plen = strcspn(filename, ":/");
    if (drv && !strcmp(fmt, "file") && filename[plen] == ':') {
        char *proto = g_strndup(filename, plen);
        const BlockDriver *p = driver_find_protocol(proto);
        g_free(proto);
        if (p) {
            drv = p;
        }
    }
    if (!options) {
        options = json_object();
    }
    if (!drv) {
        error_setg(errp, "Unknown file format '%s'", fmt);
        json_decref(options);
        return false;
    }
    if (!drv->create) {
        error_setg(errp, "Format driver '%s' does not support image creation",
                   drv->format_name);
        json_decref(options);
        return false;
    }
    /* Creation may do I/O through the graph: run it as a coroutine. */
    CreateCo c = { .drv = drv, .filename = filename, .options = options };
    if (in_coroutine()) {
        create_co(&c);          /* a format creating its file, say */
    } else {
        co_run_sync(create_co, &c);
    }
    json_decref(options);
    if (c.ret < 0) {
        if (!c.err) {
            error_setg_errno(&c.err, -c.ret, "Could not create '%s'", filename);
        }
        g_propagate_error(errp, c.err);
        return false;
    }
    g_clear_error(&c.err);
    return true;
}

const char *const prealloc_mode_names[PREALLOC__MAX + 1] = {
    [PREALLOC_OFF] = "off",
    [PREALLOC_METADATA] = "metadata",
    [PREALLOC_FALLOC] = "falloc",
    [PREALLOC_FULL] = "full",
    [PREALLOC__MAX] = NULL,
};
