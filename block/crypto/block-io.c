/*
 * Encrypted data stored in a child node, for the formats that encrypt (the
 * luks driver, qcow2): decrypted into and encrypted from the caller's
 * vector through a bounce buffer of our own, so that the caller's buffer
 * never holds cipher text, in pieces of at most 1 MiB (as QEMU bounds its
 * own bounce buffers).
 */
#include <errno.h>
#include "crypto.h"
#include "strata/block-driver.h"
#include "strata/iov.h"

#define CRYPTO_MAX_IO (1024 * 1024)

int coroutine_fn crypto_block_co_preadv(CryptoBlock *b, BlockChild *child,
                                        uint64_t offset, uint64_t iv_offset,
                                        uint64_t bytes, IOVec *qiov,
                                        size_t qoff)
{
    uint8_t *buf = g_try_malloc(MIN(bytes, CRYPTO_MAX_IO));
    int ret = 0;

    if (!buf) {
        return -ENOMEM;
    }
    for (uint64_t done = 0; done < bytes && ret >= 0;) {
        uint64_t n = MIN(bytes - done, CRYPTO_MAX_IO);

        ret = child_co_pread(child, (int64_t)(offset + done), (int64_t)n,
                             buf, 0);
        if (ret >= 0) {
            ret = crypto_block_decrypt(b, iv_offset + done, buf, n);
        }
        if (ret >= 0) {
            iov_from_buf(qiov->iov, qiov->niov, qoff + done, buf, n);
        }
        done += n;
    }
    g_free(buf);
    return ret < 0 ? ret : 0;
}

int coroutine_fn crypto_block_co_pwritev(CryptoBlock *b, BlockChild *child,
                                         uint64_t offset, uint64_t iv_offset,
                                         uint64_t bytes, IOVec *qiov,
                                         size_t qoff, int flags)
{
    uint8_t *buf = g_try_malloc(MIN(bytes, CRYPTO_MAX_IO));
    int ret = 0;

    if (!buf) {
        return -ENOMEM;
    }
    for (uint64_t done = 0; done < bytes && ret >= 0;) {
        uint64_t n = MIN(bytes - done, CRYPTO_MAX_IO);

        iov_to_buf(qiov->iov, qiov->niov, qoff + done, buf, n);
        ret = crypto_block_encrypt(b, iv_offset + done, buf, n);
        if (ret >= 0) {
            ret = child_co_pwrite(child, (int64_t)(offset + done), (int64_t)n,
                                  buf, flags);
        }
        done += n;
    }
    g_free(buf);
    return ret < 0 ? ret : 0;
}
