/*
 * Dirty tracking of RAM blocks: a dirty bitmap shared with the VM monitor.
 *
 * The guest writes its RAM through the VM's own mapping, in another
 * process.  Nothing the daemon does to its own mapping sees those writes:
 * userfaultfd write-protection (and soft-dirty bits, and mprotect) act on
 * one process's page tables, so they would report only the daemon's own
 * writes.  The process that does see the guest's writes is the VM monitor
 * (KVM's dirty log, or its own device emulation), so the monitor records
 * them in a bitmap both processes map: one bit per page of the block, set
 * by the monitor after the page's new content is in memory.
 *
 * A sync takes every word with an atomic exchange against 0: a bit the
 * monitor sets concurrently is either in the word taken now or stays for
 * the next sync, never lost.  A monitor that sets bits with a plain
 * read-modify-write (one writer) can at worst put back bits that were just
 * taken: a page sent twice, never one missed.  Page content is written
 * before its bit, and the daemon reads pages after taking the bits, so a
 * page whose bit was taken is read at its new content or marked again.
 */
#include <errno.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <glib.h>

#include "strata/ram-block.h"

typedef struct DirtyLog {
    uint64_t *words;        /* the shared bitmap, or the daemon's own */
    size_t len;             /* bytes mapped; 0: the daemon's own (g_new) */
    uint64_t nwords;        /* words covering the block's pages */
    bool logging;
} DirtyLog;

static uint64_t words_for(const RamBlock *rb)
{
    return (ram_block_pages(rb) + 63) / 64;
}

bool ram_block_set_dirty_log(RamBlock *rb, int fd, GError **errp)
{
    uint64_t need = words_for(rb) * 8;
    struct stat st;

    if (rb->tracking) {
        error_setg(errp, "RAM block '%s' already has a dirty log", rb->id);
        return false;
    }
    if (fstat(fd, &st) < 0) {
        error_setg(errp, "dirty log of RAM block '%s': %s", rb->id,
                   g_strerror(errno));
        return false;
    }
    if ((uint64_t)st.st_size < need) {
        error_setg(errp, "dirty log of RAM block '%s' is %" G_GINT64_FORMAT
                   " bytes, it needs %" G_GUINT64_FORMAT " (one bit per %u "
                   "byte page, in 64-bit words)", rb->id,
                   (gint64)st.st_size, need, rb->page_size);
        return false;
    }
    void *p = mmap(NULL, need, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    if (p == MAP_FAILED) {
        error_setg(errp, "dirty log of RAM block '%s' cannot be mapped "
                   "shared and writable: %s", rb->id, g_strerror(errno));
        return false;
    }
    DirtyLog *log = g_new0(DirtyLog, 1);
    log->words = p;
    log->len = need;
    log->nwords = words_for(rb);
    rb->tracking = log;
    return true;
}

bool ram_block_set_private_dirty_log(RamBlock *rb, GError **errp)
{
    if (rb->tracking) {
        error_setg(errp, "RAM block '%s' already has a dirty log", rb->id);
        return false;
    }
    DirtyLog *log = g_new0(DirtyLog, 1);
    log->nwords = words_for(rb);
    log->words = g_new0(uint64_t, log->nwords);
    rb->tracking = log;
    return true;
}

bool ram_block_mark_dirty(RamBlock *rb, uint64_t offset, uint64_t length,
                          GError **errp)
{
    DirtyLog *log = rb->tracking;

    if (!log) {
        error_setg(errp, "RAM block '%s' has no dirty log", rb->id);
        return false;
    }
    if (offset > rb->size || length > rb->size - offset) {
        error_setg(errp, "range 0x%" G_GINT64_MODIFIER "x+0x%"
                   G_GINT64_MODIFIER "x is beyond the end of RAM block '%s' "
                   "(0x%" G_GINT64_MODIFIER "x bytes)", offset, length,
                   rb->id, rb->size);
        return false;
    }
    if (!length) {
        return true;
    }
    uint64_t first = offset / rb->page_size;
    uint64_t last = (offset + length - 1) / rb->page_size;
    for (uint64_t w = first / 64; w <= last / 64; w++) {
        uint64_t lo = w == first / 64 ? first % 64 : 0;
        uint64_t hi = w == last / 64 ? last % 64 : 63;
        uint64_t bits = (hi == 63 ? ~0ULL : (1ULL << (hi + 1)) - 1) &
                        ~((1ULL << lo) - 1);
        __atomic_fetch_or(&log->words[w], bits, __ATOMIC_RELEASE);
    }
    return true;
}

void ram_block_clear_dirty_log(RamBlock *rb)
{
    DirtyLog *log = rb->tracking;

    if (log && !log->len) {
        g_free(log->words);
        g_free(log);
        rb->tracking = NULL;
    } else if (log) {
        munmap(log->words, log->len);
        g_free(log);
        rb->tracking = NULL;
    }
}

bool ram_block_has_dirty_log(const RamBlock *rb)
{
    return rb->tracking != NULL;
}

bool ram_block_logging(const RamBlock *rb)
{
    const DirtyLog *log = rb->tracking;
    return log && log->logging;
}

bool ram_block_log_start(RamBlock *rb, GError **errp)
{
    DirtyLog *log = rb->tracking;

    if (!log) {
        error_setg(errp, "RAM block '%s' has no dirty log, so the daemon "
                   "cannot see the VM's writes to it (give the backend "
                   "x-strata-dirty-log or x-strata-dirty-qmp, see "
                   "docs/migration.md)", rb->id);
        return false;
    }
    /* what was marked before is covered by the first pass */
    for (uint64_t i = 0; i < log->nwords; i++) {
        __atomic_exchange_n(&log->words[i], 0, __ATOMIC_ACQ_REL);
    }
    log->logging = true;
    return true;
}

int64_t ram_block_log_sync(RamBlock *rb, unsigned long *bitmap,
                           GError **errp)
{
    DirtyLog *log = rb->tracking;
    uint64_t pages = ram_block_pages(rb);
    int64_t added = 0;
    const unsigned lbits = 8 * sizeof(unsigned long);

    if (!log || !log->logging) {
        error_setg(errp, "dirty tracking of RAM block '%s' is not on",
                   rb->id);
        return -1;
    }
    for (uint64_t i = 0; i < log->nwords; i++) {
        /* cheap read first: most words are clean */
        if (!__atomic_load_n(&log->words[i], __ATOMIC_RELAXED)) {
            continue;
        }
        uint64_t w = __atomic_exchange_n(&log->words[i], 0, __ATOMIC_ACQ_REL);
        if (i == log->nwords - 1 && pages % 64) {
            w &= (1ULL << (pages % 64)) - 1;   /* bits past the block */
        }
        while (w) {
            uint64_t page = i * 64 + (uint64_t)__builtin_ctzll(w);
            unsigned long bit = 1UL << (page % lbits);
            w &= w - 1;
            if (!(bitmap[page / lbits] & bit)) {
                bitmap[page / lbits] |= bit;
                added++;
            }
        }
    }
    return added;
}

void ram_block_log_stop(RamBlock *rb)
{
    DirtyLog *log = rb->tracking;

    if (log) {
        log->logging = false;
    }
}
