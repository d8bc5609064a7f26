/*
 * Digests and PBKDF2 (libgcrypt), and the benchmark that turns a wanted
 * time into an iteration count.
 */
#include <errno.h>
#include <string.h>
#include <time.h>
#include "gcrypt-lib.h"
#include "strata/error.h"
#include "crypto.h"

static const char *const hash_names[CRYPTO_HASH__MAX] = {
    "md5", "sha1", "sha224", "sha256", "sha384", "sha512", "ripemd160",
};

static const int gcry_md[CRYPTO_HASH__MAX] = {
    GCRY_MD_MD5, GCRY_MD_SHA1, GCRY_MD_SHA224, GCRY_MD_SHA256,
    GCRY_MD_SHA384, GCRY_MD_SHA512, GCRY_MD_RMD160,
};

const char *crypto_hash_alg_name(CryptoHashAlg alg)
{
    return hash_names[alg];
}

int crypto_hash_alg_lookup(const char *name)
{
    for (int i = 0; name && i < CRYPTO_HASH__MAX; i++) {
        if (!strcmp(hash_names[i], name)) {
            return i;
        }
    }
    return -1;
}

size_t crypto_hash_digest_len(CryptoHashAlg alg)
{
    crypto_init();
    return gcry.md_get_algo_dlen(gcry_md[alg]);
}

bool crypto_hash_supports(CryptoHashAlg alg)
{
    crypto_init();
    return (unsigned)alg < CRYPTO_HASH__MAX &&
           gcry.md_algo_info(gcry_md[alg], GCRYCTL_TEST_ALGO, NULL,
                             NULL) == 0;
}

/* The digest of the concatenation of n buffers. */
void crypto_hash_bytes(CryptoHashAlg alg, const uint8_t *const *bufs,
                       const size_t *lens, size_t n, uint8_t *digest)
{
    gcry_md_hd_t md;

    crypto_init();
    /* Cannot fail for an algorithm crypto_hash_supports() accepted. */
    if (gcry.md_open(&md, gcry_md[alg], 0)) {
        g_error("cannot open hash %s", hash_names[alg]);
    }
    for (size_t i = 0; i < n; i++) {
        gcry.md_write(md, bufs[i], lens[i]);
    }
    memcpy(digest, gcry.md_read(md, 0), crypto_hash_digest_len(alg));
    gcry.md_close(md);
}

int crypto_pbkdf2(CryptoHashAlg hash, const uint8_t *key, size_t nkey,
                  const uint8_t *salt, size_t nsalt, uint64_t iterations,
                  uint8_t *out, size_t nout, GError **errp)
{
    static const uint8_t empty[1];
    gcry_error_t err;

    crypto_init();
    if (!crypto_hash_supports(hash)) {
        error_setg(errp, "PBKDF does not support hash algorithm %s",
                   hash_names[hash]);
        return -1;
    }
    if (iterations > ULONG_MAX) {
        error_setg_errno(errp, ERANGE, "PBKDF iterations %llu must be less "
                         "than %lu", (unsigned long long)iterations,
                         ULONG_MAX);
        return -1;
    }
    /* gcrypt wants a non-NULL passphrase even when it is empty. */
    err = gcry.kdf_derive(nkey ? key : empty, nkey, GCRY_KDF_PBKDF2,
                          gcry_md[hash], salt, nsalt,
                          (unsigned long)iterations, nout, out);
    if (err) {
        error_setg(errp, "Cannot derive password: %s", gcry.strerror(err));
        return -1;
    }
    return 0;
}

static uint64_t thread_cpu_us(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
    return (uint64_t)ts.tv_sec * 1000000 + (uint64_t)ts.tv_nsec / 1000;
}

/*
 * As QEMU: run PBKDF2 with a growing count until one run takes more than
 * half a second of this thread's CPU time, then scale to one second.
 * CPU time rather than wall time, so that a busy machine does not make
 * the count (and so the protection) smaller.
 */
uint64_t crypto_pbkdf2_count_iters(CryptoHashAlg hash, const uint8_t *key,
                                   size_t nkey, const uint8_t *salt,
                                   size_t nsalt, size_t nout, GError **errp)
{
    uint8_t *out = g_malloc(nout);
    uint64_t iterations = 1 << 15;
    uint64_t delta;
    int still = 0;

    for (;;) {
        uint64_t start = thread_cpu_us();
        if (crypto_pbkdf2(hash, key, nkey, salt, nsalt, iterations, out,
                          nout, errp) < 0) {
            g_free(out);
            return 0;
        }
        /*
         * Microseconds, where QEMU counts milliseconds, and a reading that
         * stood still is retried with more work before it is an error:
         * once, in a fresh-machine run of qmp-iothread-amend-transaction
         * at high load, a 32768-iteration run (about 17 ms of CPU here)
         * read 0 ms and the create failed.  The cause is not proven (a
         * VM's stolen time is taken out of a thread's CPU time); a clock
         * that never moves still fails, as QEMU's does.
         */
        delta = thread_cpu_us() - start;
        if (delta == 0 && ++still < 3) {
            iterations *= 10;
            continue;
        }
        if (delta == 0) {
            /* As QEMU (Debian's 7.2): a clock too coarse to scale by. */
            error_setg(errp, "Unable to get accurate CPU usage");
            g_free(out);
            return 0;
        } else if (delta > 500000) {
            break;
        } else if (delta < 100000) {
            iterations *= 10;
        } else {
            iterations = iterations * 1000000 / delta;
        }
    }
    memset(out, 0, nout);
    g_free(out);
    return iterations * 1000000 / delta;
}
