/*
 * Changing the backing file an image names (qemu-img rebase, and later
 * block-stream/commit): the driver's own state changes with the header, so
 * that later header rewrites (bitmaps stored at close, amend) keep it.
 */
#include <errno.h>
#include <string.h>

#include "qcow2.h"

int coroutine_fn qcow2_co_change_backing_file(BlockNode *bs, const char *file,
                                              const char *fmt)
{
    Qcow2State *s = bs->opaque;
    char *old_file = s->backing_file, *old_fmt = s->backing_format;
    int ret;

    /* A raw external data file is the whole disk: nothing can be below. */
    if (file && qcow2_data_file_is_raw(s)) {
        return -EINVAL;
    }
    if (file && strlen(file) > QCOW2_MAX_BACKING_NAME) {
        return -EINVAL;
    }
    s->backing_file = file ? g_strdup(file) : NULL;
    s->backing_format = fmt ? g_strdup(fmt) : NULL;
    ret = qcow2_update_header(bs);
    if (ret < 0) {
        g_free(s->backing_file);
        g_free(s->backing_format);
        s->backing_file = old_file;
        s->backing_format = old_fmt;
        return ret;
    }
    g_free(old_file);
    g_free(old_fmt);
    g_strlcpy(bs->backing_file, file ? file : "", sizeof(bs->backing_file));
    g_strlcpy(bs->backing_format, fmt ? fmt : "", sizeof(bs->backing_format));
    return 0;
}
