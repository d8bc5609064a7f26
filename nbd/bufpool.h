/*
 * Request buffers, reused.  A read or write buffer of a few hundred KiB
 * from malloc is a fresh mmap each time: the kernel zeroes and faults in
 * every page per request, which costs more than the copy itself.  Freed
 * buffers are kept by power-of-two size class (4 KiB aligned, for
 * O_DIRECT) up to a bound, so a busy export reuses the same memory.
 * Any thread (exports serve clients in iothreads).  Private to nbd/.
 */
#ifndef NBD_BUFPOOL_H
#define NBD_BUFPOOL_H

#include <stddef.h>

void *nbd_buf_get(size_t size);
void nbd_buf_put(void *buf, size_t size);

#endif
