/*
 * Loading libnbd on demand (nbd-lib.h says why).
 *
 * The library is opened by its soname, as the dynamic linker would have,
 * and never closed: handles may outlive any one node and libnbd keeps its
 * error strings in thread-local storage that must stay mapped.
 */
#include <dlfcn.h>
#include "strata/error.h"
#include "nbd-lib.h"

/* libnbd's soname since 1.0; its ABI is kept compatible within it. */
#define LIBNBD_SONAME "libnbd.so.0"

NbdLib nbd_lib;

static GMutex load_lock;
static bool loaded;

bool nbd_lib_load(GError **errp)
{
    /*
     * The file to load instead, for the iotest that checks what a missing
     * libnbd looks like; nothing else sets it.
     */
    const char *name = g_getenv("STRATA_LIBNBD") ?: LIBNBD_SONAME;
    bool ok = false;

    g_mutex_lock(&load_lock);
    if (loaded) {
        g_mutex_unlock(&load_lock);
        return true;
    }
    void *h = dlopen(name, RTLD_NOW | RTLD_LOCAL);
    if (!h) {
        error_setg(errp, "The nbd driver needs libnbd, which could not be "
                   "loaded: %s", dlerror());
        goto out;
    }
    NbdLib lib;
#define NBD_LIB_BIND(fn)                                                      \
    lib.fn = (__typeof__(lib.fn))dlsym(h, "nbd_" #fn);                        \
    if (!lib.fn) {                                                            \
        error_setg(errp, "The nbd driver needs libnbd, which could not be "   \
                   "loaded: %s has no nbd_" #fn, name);                       \
        dlclose(h);                                                           \
        goto out;                                                             \
    }
    NBD_LIB_FUNCTIONS(NBD_LIB_BIND)
#undef NBD_LIB_BIND
    nbd_lib = lib;
    loaded = ok = true;
out:
    g_mutex_unlock(&load_lock);
    return ok;
}
