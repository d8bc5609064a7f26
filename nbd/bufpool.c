/*
 * A bounded cache of request buffers (see bufpool.h).  One cache for the
 * process, under a lock: exports serve clients in iothreads, so several
 * threads take and return buffers at once (and a buffer may come back in
 * another thread than the one that took it).  The lock is pthread's, which
 * ThreadSanitizer sees, and is held for a list operation only.
 */
#include <pthread.h>
#include <glib.h>
#include "strata/iov.h"
#include "bufpool.h"

#define MIN_SHIFT 12                    /* 4 KiB */
#define MAX_SHIFT 25                    /* 32 MiB, NBD's largest request */
#define NCLASSES (MAX_SHIFT - MIN_SHIFT + 1)
#define CACHE_LIMIT (64u << 20)         /* bytes kept at most */

static GSList *free_bufs[NCLASSES];
static size_t cached_bytes;
static pthread_mutex_t pool_lock = PTHREAD_MUTEX_INITIALIZER;

static int size_class(size_t size)
{
    int c = 0;
    while (((size_t)1 << (MIN_SHIFT + c)) < size) {
        c++;
    }
    return c;
}

void *nbd_buf_get(size_t size)
{
    if (size == 0 || size > ((size_t)1 << MAX_SHIFT)) {
        return size ? aligned_alloc_buf(4096, size) : NULL;
    }
    int c = size_class(size);
    pthread_mutex_lock(&pool_lock);
    if (free_bufs[c]) {
        void *buf = free_bufs[c]->data;
        free_bufs[c] = g_slist_delete_link(free_bufs[c], free_bufs[c]);
        cached_bytes -= (size_t)1 << (MIN_SHIFT + c);
        pthread_mutex_unlock(&pool_lock);
        return buf;
    }
    pthread_mutex_unlock(&pool_lock);
    return aligned_alloc_buf(4096, (size_t)1 << (MIN_SHIFT + c));
}

void nbd_buf_put(void *buf, size_t size)
{
    if (!buf) {
        return;
    }
    if (size > ((size_t)1 << MAX_SHIFT)) {
        aligned_free(buf);
        return;
    }
    int c = size_class(size);
    size_t bytes = (size_t)1 << (MIN_SHIFT + c);
    pthread_mutex_lock(&pool_lock);
    if (cached_bytes + bytes > CACHE_LIMIT) {
        pthread_mutex_unlock(&pool_lock);
        aligned_free(buf);
        return;
    }
    free_bufs[c] = g_slist_prepend(free_bufs[c], buf);
    cached_bytes += bytes;
    pthread_mutex_unlock(&pool_lock);
}
