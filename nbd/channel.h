/*
 * A non-blocking stream socket read and written from coroutines: a call
 * that would block yields until the loop sees the socket ready, so one
 * client never holds up the loop.  Reads are buffered (small requests
 * arrive many to a packet); large payloads go straight to the caller's
 * buffer.  Private to nbd/.
 */
#ifndef NBD_CHANNEL_H
#define NBD_CHANNEL_H

#include <stdbool.h>
#include <stddef.h>
#include <sys/uio.h>
#include "strata/coroutine.h"

typedef struct NbdChannel NbdChannel;

/* Takes ownership of fd (made non-blocking here). */
NbdChannel *nbd_channel_new(int fd);
/* Closes the socket; no coroutine may be waiting on it. */
void nbd_channel_free(NbdChannel *ch);

/*
 * Read exactly len bytes: 1 on success, 0 on end of file before the first
 * byte, -EIO on error, end of file part way, or shutdown.
 */
int coroutine_fn nbd_channel_read(NbdChannel *ch, void *buf, size_t len);
/* Read and throw away len bytes: 0 or -EIO. */
int coroutine_fn nbd_channel_skip(NbdChannel *ch, size_t len);
/*
 * Write every byte of iov: 0 or -EIO.  Callers that may write at the
 * same time serialise themselves (the transmission phase has a lock).
 */
int coroutine_fn nbd_channel_writev(NbdChannel *ch, const struct iovec *iov,
                                    int niov);
int coroutine_fn nbd_channel_write(NbdChannel *ch, const void *buf,
                                   size_t len);
/*
 * For writers that bypass nbd_channel_writev (sendfile): the socket, and
 * a wait until it takes more (0, or -EIO once shut down).
 */
int nbd_channel_fd(const NbdChannel *ch);
int coroutine_fn nbd_channel_wait_writable(NbdChannel *ch);
/*
 * Stop all traffic: waiting and later reads and writes fail with -EIO.
 * Safe from any code in the loop's thread.
 */
void nbd_channel_shutdown(NbdChannel *ch);
/*
 * From a thread other than the channel's: only the socket is shut down;
 * the coroutines waiting on it see the hang-up in their own thread.
 */
void nbd_channel_shutdown_remote(NbdChannel *ch);
/*
 * Hand the socket to another thread (a client whose export runs in an
 * iothread): the thread watching it detaches it, the new one attaches it
 * to its own loop, so that no watch is ever dispatched in two threads.
 * No coroutine may be waiting on it.
 */
void nbd_channel_detach(NbdChannel *ch);
void nbd_channel_attach_here(NbdChannel *ch);
/*
 * Bytes, end of file or an error wait in the socket, not yet read: the
 * peer said something the loop has not handled.  Any thread.
 */
bool nbd_channel_input_pending(const NbdChannel *ch);
bool nbd_channel_is_shut_down(const NbdChannel *ch);
/*
 * A request read from the channel is in flight until its reply is sent:
 * while one of another channel is, this one does not busy-wait (spin.h).
 */
void nbd_channel_request_begin(NbdChannel *ch);
void nbd_channel_request_end(NbdChannel *ch);

#endif
