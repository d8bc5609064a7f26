/*
 * Image locking at QEMU's byte offsets (private to block/).
 *
 * QEMU 7.2's file-posix driver publishes the permissions a process uses on
 * an image as shared (read) fcntl locks on single bytes of the image file:
 *
 *   byte 100 + i   held: this process takes permission bit i
 *   byte 200 + i   held: this process does NOT share permission bit i
 *
 * for the four permissions consistent-read (bit 0), write (1),
 * write-unchanged (2) and resize (3).  Nobody ever takes an exclusive lock;
 * a conflict is found by asking F_OFD_GETLK whether an exclusive lock on a
 * byte *could* be taken.  To take perm P we check that no one holds 200+P;
 * to refuse sharing P we check that no one holds 100+P.  Locks are taken
 * first and checked second, so two processes racing to open an image both
 * see each other and at worst both fail.
 *
 * Open file description (OFD) locks belong to the open file, not to the
 * process, so two fds of one process conflict with each other like two
 * processes do, and closing one fd does not drop the other's locks.  Where
 * OFD locks are missing the POSIX ones are used (locking=on only), as QEMU
 * does; those are per process and are lost when any fd of the file closes.
 *
 * Byte-for-byte interoperable with QEMU 7.2 in both directions (verified
 * against qemu-io in tests/test-locks.c).
 */
#ifndef STRATA_BLOCK_LOCKS_H
#define STRATA_BLOCK_LOCKS_H

#include <glib.h>
#include <stdbool.h>
#include <stdint.h>

#define LOCK_PERM_BASE 100
#define LOCK_SHARED_BASE 200

/* Whether the kernel has OFD locks (probed once). */
bool lock_has_ofd(void);

/* Single-byte-range primitives: 0 or -errno (-EAGAIN/-EACCES: conflict). */
int lock_fd(int fd, int64_t start, int64_t len, bool exclusive);
int lock_fd_unlock(int fd, int64_t start, int64_t len);
/* 0 if a lock of that kind could be taken now, -EAGAIN if someone holds one. */
int lock_fd_test(int fd, int64_t start, int64_t len, bool exclusive);

/* The bytes one fd currently holds (permission bit masks). */
typedef struct LockBytes {
    uint64_t perm;     /* 100 + i held */
    uint64_t unshared; /* 200 + i held */
} LockBytes;

/*
 * Take the bytes for perm_bits (at 100+i) and unshared_bits (at 200+i) on
 * fd; with unlock, also release held bytes not in the masks.  held tracks
 * what fd holds and is updated as bytes change; NULL means "unknown": lock
 * every requested byte, and with unlock release every other one.
 * Fails with "Failed to lock byte N" when a byte is locked exclusively
 * elsewhere (never by QEMU).  On failure the bytes taken so far stay taken
 * (and are recorded in held): the caller restores its previous state.
 */
int lock_apply(int fd, LockBytes *held, uint64_t perm_bits,
               uint64_t unshared_bits, bool unlock, GError **errp);

/*
 * Check that someone else's locks allow taking perm and sharing only
 * shared: "Failed to get \"write\" lock" when another user refuses to
 * share a permission we take, "Failed to get shared \"write\" lock" when
 * another user takes one we refuse to share.  With filename, QEMU's hint
 * "Is another process using the image [filename]?" follows on a new line.
 */
int lock_check(int fd, uint64_t perm, uint64_t shared, const char *filename,
               GError **errp);

/*
 * The permission state machine of one image fd, as QEMU's file driver runs
 * it: prepare takes and checks what a new (perm, shared) needs while keeping
 * what the current one holds; commit settles on the new state; abort goes
 * back to the old one.  Commit and abort only release bytes and cannot fail
 * in a way that matters (errors are ignored, as in QEMU).
 */
typedef struct ImageLock {
    int fd;
    bool enabled;         /* locking=off: every call succeeds, locks nothing */
    uint64_t perm;        /* committed permissions */
    uint64_t shared;
    LockBytes held;
} ImageLock;

void image_lock_init(ImageLock *il, int fd, bool enabled);
int image_lock_prepare(ImageLock *il, uint64_t perm, uint64_t shared,
                       const char *filename, GError **errp);
void image_lock_commit(ImageLock *il, uint64_t perm, uint64_t shared);
void image_lock_abort(ImageLock *il);

/* Take (perm, shared) and check them in one go, for a short-lived fd (create). */
int image_lock_take_checked(int fd, uint64_t perm, uint64_t shared,
                            const char *filename, GError **errp);
/* Release every lock byte on fd. */
void image_lock_release_all(int fd);

#endif
