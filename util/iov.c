/* Scatter/gather vectors. */
#include <stdlib.h>
#include <string.h>
#include <glib.h>
#include "strata/iov.h"

void iovec_init(IOVec *v, int hint)
{
    v->nalloc = hint > 0 ? hint : 1;
    v->iov = g_new(struct iovec, v->nalloc);
    v->niov = 0;
    v->size = 0;
}

void iovec_init_buf(IOVec *v, void *buf, size_t len)
{
    iovec_init(v, 1);
    iovec_add(v, buf, len);
}

void iovec_add(IOVec *v, void *base, size_t len)
{
    if (len == 0) {
        return;
    }
    if (v->niov == v->nalloc) {
        v->nalloc = 2 * v->nalloc + 1;
        v->iov = g_renew(struct iovec, v->iov, v->nalloc);
    }
    v->iov[v->niov].iov_base = base;
    v->iov[v->niov].iov_len = len;
    v->niov++;
    v->size += len;
}

void iovec_concat(IOVec *dst, const IOVec *src, size_t offset, size_t len)
{
    for (int i = 0; i < src->niov && len > 0; i++) {
        size_t l = src->iov[i].iov_len;
        if (offset >= l) {
            offset -= l;
            continue;
        }
        size_t n = MIN(l - offset, len);
        iovec_add(dst, (char *)src->iov[i].iov_base + offset, n);
        len -= n;
        offset = 0;
    }
}

void iovec_reset(IOVec *v)
{
    v->niov = 0;
    v->size = 0;
}

void iovec_destroy(IOVec *v)
{
    g_free(v->iov);
    v->iov = NULL;
    v->niov = v->nalloc = 0;
    v->size = 0;
}

size_t iov_from_buf(const struct iovec *iov, int niov, size_t offset,
                    const void *buf, size_t len)
{
    size_t done = 0;
    for (int i = 0; i < niov && done < len; i++) {
        if (offset >= iov[i].iov_len) {
            offset -= iov[i].iov_len;
            continue;
        }
        size_t n = MIN(iov[i].iov_len - offset, len - done);
        memcpy((char *)iov[i].iov_base + offset, (const char *)buf + done, n);
        done += n;
        offset = 0;
    }
    return done;
}

size_t iov_to_buf(const struct iovec *iov, int niov, size_t offset,
                  void *buf, size_t len)
{
    size_t done = 0;
    for (int i = 0; i < niov && done < len; i++) {
        if (offset >= iov[i].iov_len) {
            offset -= iov[i].iov_len;
            continue;
        }
        size_t n = MIN(iov[i].iov_len - offset, len - done);
        memcpy((char *)buf + done, (char *)iov[i].iov_base + offset, n);
        done += n;
        offset = 0;
    }
    return done;
}

size_t iov_memset(const struct iovec *iov, int niov, size_t offset, int c,
                  size_t len)
{
    size_t done = 0;
    for (int i = 0; i < niov && done < len; i++) {
        if (offset >= iov[i].iov_len) {
            offset -= iov[i].iov_len;
            continue;
        }
        size_t n = MIN(iov[i].iov_len - offset, len - done);
        memset((char *)iov[i].iov_base + offset, c, n);
        done += n;
        offset = 0;
    }
    return done;
}

int buffer_is_zero(const void *buf, size_t len)
{
    const unsigned char *p = buf;
    /* Check the head bytewise, then compare the buffer against itself
     * shifted by 16 bytes, which lets memcmp run at full vector speed. */
    size_t head = MIN(len, 16);
    for (size_t i = 0; i < head; i++) {
        if (p[i]) {
            return 0;
        }
    }
    if (len <= 16) {
        return 1;
    }
    return memcmp(p, p + 16, len - 16) == 0;
}

int iov_is_zero(const struct iovec *iov, int niov)
{
    for (int i = 0; i < niov; i++) {
        if (!buffer_is_zero(iov[i].iov_base, iov[i].iov_len)) {
            return 0;
        }
    }
    return 1;
}

void *aligned_alloc_buf(size_t align, size_t size)
{
    void *p = NULL;
    if (align < sizeof(void *)) {
        align = sizeof(void *);
    }
    if (posix_memalign(&p, align, size ? size : align)) {
        g_error("out of memory allocating %zu bytes", size);
    }
    return p;
}

void aligned_free(void *p)
{
    free(p);
}
