/*
 * Debug events: the names blkdebug rules use, and the hook drivers call.
 *
 * The name table is generated from the X-macro in debug-event.h, so the
 * enum, the names and their order cannot drift apart (they follow QEMU's
 * BlkdebugEvent, which QEMU's own rule files and QMP clients rely on).
 *
 * An event goes to the node directly below the signalling driver and stops
 * there, as in QEMU: a node whose driver does not handle events swallows
 * them.  Passing events further down would make blkdebug see one event twice
 * under a stack such as raw -> raw -> blkdebug (both raw nodes signal), which
 * changes what set-state rules do compared to QEMU.
 */
#include <stdarg.h>
#include <string.h>

#include "strata/block-driver.h"
#include "strata/debug-event.h"

const char *const blkdbg_event_names[BLKDBG__MAX + 1] = {
#define BLKDBG_NAME(id, name) [BLKDBG_##id] = name,
    BLKDBG_EVENTS(BLKDBG_NAME)
#undef BLKDBG_NAME
    [BLKDBG__MAX] = NULL,
};

int blkdbg_event_from_name(const char *name)
{
    if (!name) {
        return -1;
    }
    for (int i = 0; i < BLKDBG__MAX; i++) {
        if (strcmp(blkdbg_event_names[i], name) == 0) {
            return i;
        }
    }
    return -1;
}

void coroutine_fn child_debug_event(BlockChild *c, BlkdebugEvent event)
{
    BlockNode *bs = c ? c->bs : NULL;

    if (!bs || !bs->drv || !bs->drv->debug_event) {
        return;
    }
    bs->drv->debug_event(bs, event);
}

static BlkdebugNoticeFunc *notice_func;

void blkdbg_set_notice_func(BlkdebugNoticeFunc *fn)
{
    notice_func = fn;
}

void blkdbg_notice(const char *fmt, ...)
{
    va_list ap;
    char *line;

    if (!notice_func) {
        return;
    }
    va_start(ap, fmt);
    line = g_strdup_vprintf(fmt, ap);
    va_end(ap);
    notice_func(line);
    g_free(line);
}
