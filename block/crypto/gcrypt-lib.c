/*
 * Loading libgcrypt on demand (gcrypt-lib.h says why).  Opened by its
 * soname, as the dynamic linker would have, and never closed: cipher
 * handles and libgcrypt's own state live as long as the process.
 */
#include <dlfcn.h>
#include "strata/error.h"
#include "gcrypt-lib.h"

/* libgcrypt's soname since 1.6; its ABI is kept compatible within it. */
#define LIBGCRYPT_SONAME "libgcrypt.so.20"

GcryptLib gcry;

bool gcrypt_lib_load(GError **errp)
{
    void *h = dlopen(LIBGCRYPT_SONAME, RTLD_NOW | RTLD_LOCAL);
    if (!h) {
        error_setg(errp, "%s", dlerror());
        return false;
    }
#define GCRYPT_LIB_BIND(fn)                                                   \
    gcry.fn = (__typeof__(gcry.fn))dlsym(h, "gcry_" #fn);                     \
    if (!gcry.fn) {                                                           \
        error_setg(errp, "%s has no gcry_" #fn, LIBGCRYPT_SONAME);            \
        dlclose(h);                                                           \
        return false;                                                         \
    }
    GCRYPT_LIB_FUNCTIONS(GCRYPT_LIB_BIND)
#undef GCRYPT_LIB_BIND
    return true;
}
