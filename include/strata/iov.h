/*
 * Scatter/gather vectors for the I/O path.
 */
#ifndef STRATA_IOV_H
#define STRATA_IOV_H

#include <stddef.h>
#include <stdint.h>
#include <sys/uio.h>

typedef struct IOVec {
    struct iovec *iov;
    int niov;
    int nalloc;
    size_t size;
} IOVec;

void iovec_init(IOVec *v, int hint);
/* A vector of one element over buf; nothing to free but iov itself. */
void iovec_init_buf(IOVec *v, void *buf, size_t len);
void iovec_add(IOVec *v, void *base, size_t len);
/* Append bytes [offset, offset+len) of src (referencing src's memory). */
void iovec_concat(IOVec *dst, const IOVec *src, size_t offset, size_t len);
void iovec_reset(IOVec *v);
void iovec_destroy(IOVec *v);

size_t iov_from_buf(const struct iovec *iov, int niov, size_t offset,
                    const void *buf, size_t len);
size_t iov_to_buf(const struct iovec *iov, int niov, size_t offset,
                  void *buf, size_t len);
size_t iov_memset(const struct iovec *iov, int niov, size_t offset, int c,
                  size_t len);
/* True if all bytes of the vector are zero. */
int iov_is_zero(const struct iovec *iov, int niov);
/* True if buf[0..len) is all zero (fast path for aligned buffers). */
int buffer_is_zero(const void *buf, size_t len);

/* Aligned allocation for O_DIRECT buffers; free with qemu-style blk_free. */
void *aligned_alloc_buf(size_t align, size_t size);
void aligned_free(void *p);

#endif
