/*
 * Device state streams in a migration file (docs/migration.md "Device
 * state").
 *
 * A back end (a vhost-user daemon, a device model) hands its state to the
 * daemon over a file descriptor, usually the read end of a pipe it writes
 * into, and gets it back the same way (the write end of a pipe it reads)
 * on restore, as vhost-user's SET_DEVICE_STATE_FD does.  In the file each
 * stream is a section named "x-strata-state:ID" after the RAM section and
 * before QEMU_VM_EOF, its bytes in chunks (u32 length, bytes; 0 ends).
 *
 * Streams:
 *  - plain: the back end writes its state and closes; the daemon copies
 *    until EOF into one full section.
 *  - iterative: the back end writes rounds while the VM runs, each round
 *    framed as records (u32 big-endian length > 0, bytes) ended by a u32 0,
 *    and closes after its last round (written once the VM is paused).  The
 *    daemon copies each round into a part section as soon as it starts to
 *    arrive, and on restore writes back exactly the bytes the back end
 *    wrote, rounds in order, then closes.
 *
 * Copies go through splice(2) where one side is a pipe, else a bounded
 * buffer: no stream is ever held in memory.
 *
 * The save side runs in the thread that writes the file (mr_save): begin
 * before the pages (rounds of iterative streams are taken by a thread of
 * their own while the pages are written), tail after them.  machine
 * snapshots call the same functions.
 */
#ifndef STRATA_DEVICE_STATE_H
#define STRATA_DEVICE_STATE_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <sys/types.h>

#include <glib.h>

#include "strata/error.h"
#include "strata/mapped-ram.h"

#define DS_SECTION_PREFIX "x-strata-state:"
#define DS_SECTION_VERSION 2u     /* 2: sections with data carry a CRC-32 */
/* the section name is a u8-length string: prefix + id */
#define DS_ID_MAX (255u - (sizeof(DS_SECTION_PREFIX) - 1))
/* data bytes per chunk a save writes (a round's records keep their size) */
#define DS_CHUNK_MAX (1u << 20)

/* How one stream of one migration ended (DsStream.outcome). */
typedef enum DsOutcome {
    DS_PENDING,         /* not reached (yet) */
    DS_DONE,            /* saved, or restored and the descriptor closed */
    DS_NOT_IN_FILE,     /* restore: the file has no state of this id */
    DS_FAILED,          /* the copy started and failed */
} DsOutcome;

typedef struct DsStream {
    char *id;
    int fd;                     /* borrowed: the caller closes it */
    bool iterative;
    /* updated by the migration threads, read by anyone */
    _Atomic uint64_t bytes;     /* state bytes copied (framing excluded) */
    _Atomic unsigned rounds;    /* iterative: rounds copied */
    _Atomic int outcome;        /* DsOutcome */
} DsStream;

/* The streams of one save or restore. */
typedef struct DsSet DsSet;

DsSet *ds_set_new(void);
/* @fd is borrowed until ds_set_free; returns the stream (for its counters). */
DsStream *ds_set_add(DsSet *s, const char *id, int fd, bool iterative);
unsigned ds_set_count(const DsSet *s);
DsStream *ds_set_get(DsSet *s, unsigned i);
/* Stops a round thread that still runs (after a failed save). */
void ds_set_free(DsSet *s);

/*
 * Save, step 1 (before the pages): iterative streams start to be copied
 * from @ram_end (where mr_layout's RAM part ends) on, by a thread; rounds
 * are written after the RAM section's end marker, which ds_save_tail
 * writes.  @cancel stops it.
 */
bool ds_save_begin(DsSet *s, int fd, uint64_t ram_end, MrStats *stats,
                   atomic_bool *cancel, GError **errp);
/*
 * Save, step 2 (after the pages and bitmaps; in a live save, after the VM
 * paused): the RAM section's end, the rest of every stream until its EOF,
 * QEMU_VM_EOF and the JSON description naming the streams.  Without
 * streams (@s NULL) this is exactly mr_save's usual tail.
 */
bool ds_save_tail(DsSet *s, int fd, uint64_t ram_end, MrStats *stats,
                  atomic_bool *cancel, GError **errp);
/*
 * Save, always last (mr_save's way out, success or not): stops the round
 * thread if it still runs (a failed save: mid-round it gives up) and
 * joins it.  Idempotent; @s may be NULL.
 */
void ds_save_end(DsSet *s);

/*
 * Restore, after the pages: for every stream of @info whose id is in @s,
 * its bytes into the stream's descriptor, which is then closed (fd set to
 * -1); streams of the file not in @s are appended to @unread as their
 * section names; streams of @s not in the file get DS_NOT_IN_FILE.  @s
 * may be NULL (nothing registered).  The file's structure was checked by
 * mr_file_parse before any of this.
 */
bool ds_load(DsSet *s, const MrFileInfo *info, int fd, MrStats *stats,
             atomic_bool *cancel, GPtrArray *unread, GError **errp);

/*
 * The registry of the QMP commands (qapi/cmd-device-state.c): the streams
 * the monitor registered.  begin takes every registered stream into the
 * save or restore that starts (*out NULL: none registered), after
 * checking each descriptor can be read (save) or written (restore); @cmd
 * ("migrate", "snapshot-load") and @job (NULL: none) name the holder in
 * messages.  One set at a time holds streams: begin fails while another
 * holds any (a caller that would take none is not refused).  end gives
 * back the streams of @set only (NULL: nothing) and frees it: spent
 * streams are closed.
 */
bool ds_registry_begin(bool incoming, const char *cmd, const char *job,
                       DsSet **out, GError **errp);
void ds_registry_end(DsSet *set);
/*
 * The same for the streams named in @ids (char *; NULL: every registered
 * one), as x-strata-machine-snapshot's 'devices' argument: an id that is
 * not registered (or whose descriptor was spent) or is named twice fails.
 */
bool ds_registry_begin_ids(bool incoming, const char *cmd, const char *job,
                           const GPtrArray *ids, DsSet **out,
                           GError **errp);
/*
 * How x-strata-device-state-add takes a descriptor passed with getfd:
 * @take returns the one named @name in the calling QMP session, removed
 * from it (the caller owns it), or -1 if there is none.  Set by the
 * program that runs the QMP server (strata-daemon); without it only
 * /dev/fdset/N names are found.
 */
void ds_registry_set_named_fds(int (*take)(const char *name));

/*
 * Writes into a back end's descriptor that never block (after poll said
 * POLLOUT), so that a back end that stops reading cannot hold a restore
 * past job-cancel or quit: a socket with MSG_DONTWAIT, a pipe through a
 * description of the daemon's own opened O_NONBLOCK (the back end may
 * share the one it passed; failing that, PIPE_BUF bytes at a time, which
 * a free pipe buffer takes whole), anything else as it is.  write: bytes
 * written, or -1 with errno (EAGAIN: nothing fits now).  close releases
 * the daemon's own description (not @fd).
 */
enum { DS_WRITER_PLAIN, DS_WRITER_SOCKET, DS_WRITER_OWN, DS_WRITER_PIPE_BUF };
typedef struct DsWriter {
    int fd;
    int own;                    /* the pipe opened again, or -1 */
    int kind;
} DsWriter;

void ds_writer_init(DsWriter *w, int fd);
ssize_t ds_writer_write(DsWriter *w, const void *buf, size_t n);
void ds_writer_close(DsWriter *w);

#endif
