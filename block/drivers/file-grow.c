/*
 * The file driver's growing ahead (preallocating past the end of the file
 * an O_DIRECT writer appends to, with the list of ranges written since,
 * so that zero writes to the rest can be skipped) and its cache of the last
 * data extent block status found.  FileState (file-int.h) says why.
 */
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>
#include "strata/loop.h"
#include "strata/units.h"
#include "file-int.h"

void file_data_cache_forget(FileState *s)
{
    s->data_start = s->data_end = 0;
}

/* Brackets an operation that may make holes (see data_start). */
void file_hole_op_begin(FileState *s)
{
    s->hole_ops++;
    file_data_cache_forget(s);
}

void file_hole_op_end(FileState *s)
{
    s->hole_ops--;
    file_data_cache_forget(s);
}

/* Stop growing ahead: the file gets the length its writes gave it. */
void file_grow_ahead_end(FileState *s)
{
    file_data_cache_forget(s);
    if (s->len >= 0 && s->phys_len > s->len && s->fd >= 0) {
        if (ftruncate(s->fd, s->len) < 0) {
            /* Only a longer file, which reads as zeroes past len. */
        }
    }
    s->len = -1;
    if (s->written) {
        g_array_free(s->written, TRUE);
        s->written = NULL;
    }
}

typedef struct Range {
    int64_t start, end;
} Range;

/* Appending writes keep this short; random ones give up the skipping. */
#define MAX_WRITTEN_RANGES 256

void file_mark_written(FileState *s, int64_t start, int64_t end)
{
    GArray *w = s->written;
    guint i = 0;

    if (!w || end <= s->zero_base) {
        return;
    }
    start = MAX(start, s->zero_base);
    /* Skip the ranges wholly before; merge every one that touches. */
    while (i < w->len && g_array_index(w, Range, i).end < start) {
        i++;
    }
    while (i < w->len && g_array_index(w, Range, i).start <= end) {
        Range *r = &g_array_index(w, Range, i);
        start = MIN(start, r->start);
        end = MAX(end, r->end);
        g_array_remove_index(w, i);
    }
    Range n = { start, end };
    g_array_insert_val(w, i, n);
    if (w->len > MAX_WRITTEN_RANGES) {
        g_array_free(w, TRUE);
        s->written = NULL;
    }
}

bool file_never_written(FileState *s, int64_t start, int64_t end)
{
    if (s->len < 0 || !s->written || start < s->zero_base ||
        end > s->phys_len) {
        return false;
    }
    for (guint i = 0; i < s->written->len; i++) {
        Range *r = &g_array_index(s->written, Range, i);
        if (r->start < end && start < r->end) {
            return false;
        }
    }
    return true;
}

typedef struct GrowJob {
    int fd;
    int64_t from, to;
} GrowJob;

static int job_grow(void *opaque)
{
    GrowJob *j = opaque;
    int ret = file_fallocate(j->fd, 0, j->from, j->to - j->from);

    if (ret < 0 && ftruncate(j->fd, j->to) < 0) {
        return -errno;
    }
    return 0;
}

static bool grow_ahead_allowed(BlockNode *bs)
{
    FileState *s = bs->opaque;

    return (s->open_flags & O_DIRECT) && !s->is_device &&
           (bs->cum_perm & BLK_PERM_RESIZE) &&
           !(bs->cum_shared & (BLK_PERM_WRITE | BLK_PERM_RESIZE));
}

/*
 * Before a write that ends at end: make the file long enough if it would
 * be extended.  Failing to grow ahead is not an error: the write then
 * extends the file itself.
 */
void coroutine_fn file_grow_ahead(BlockNode *bs, int64_t end)
{
    FileState *s = bs->opaque;

    if (s->len < 0) {
        if (!grow_ahead_allowed(bs)) {
            return;
        }
        /* From now on writes are compared with phys_len: no system call. */
        off_t cur = lseek(s->fd, 0, SEEK_END);
        struct stat st;
        if (cur < 0 || fstat(s->fd, &st) < 0 || !S_ISREG(st.st_mode)) {
            return;
        }
        s->len = s->phys_len = s->zero_base = cur;
        s->written = g_array_new(FALSE, FALSE, sizeof(Range));
    }
    if (end <= s->phys_len) {
        return;
    }
    co_mutex_lock(&s->grow_lock);
    if (end > s->phys_len && s->len >= 0) {
        /* Steps of half the file, 1 to 128 MiB, whole MiB. */
        int64_t step = MIN(MAX(s->phys_len / 2, (int64_t)MiB),
                           (int64_t)(128 * MiB));
        GrowJob j = { s->fd, s->phys_len,
                      ROUND_UP(end + step, (int64_t)MiB) };
        if (thread_pool_co_run(job_grow, &j) == 0) {
            s->phys_len = j.to;
        }
    }
    co_mutex_unlock(&s->grow_lock);
}

/* After a write or zero write that ended at end. */
void file_grew(FileState *s, int64_t end)
{
    if (s->len >= 0 && end > s->len) {
        s->len = end;
        s->phys_len = MAX(s->phys_len, end);
    }
}
