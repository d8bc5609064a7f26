/*
 * Device state streams: copies between back ends' descriptors and the
 * migration file (strata/device-state.h, docs/migration.md "Device
 * state").
 *
 * File layout, after the RAM section's end and before QEMU_VM_EOF, per
 * stream with a section id of its own (2, 3, ...; RAM has 1):
 *   plain:     0x04 sid "x-strata-state:ID" instance 0 version 2,
 *              chunks (u32 length > 0, bytes), u32 0, u32 crc, footer 0x7e sid
 *   iterative: 0x01 sid name 0 2, u32 0, footer     (opens; no data)
 *              0x02 sid, one round's records, u32 0, u32 crc, footer
 *              0x03 sid, u32 0, footer              (after the back end's EOF)
 * An iterative stream's records are the back end's own (u32 length, bytes;
 * 0 ends a round), copied as they are: on restore the back end reads back
 * exactly the bytes it wrote.  crc: zlib's CRC-32 of the state bytes of a
 * plain section (the chunks' data, not their lengths), of the round's
 * bytes as the back end wrote them (records and the 0) of a part section;
 * a restore checks it before anything is handed back (mapped-ram.c).
 *
 * A save moves the state through a 256 KiB buffer (the CRC needs the
 * bytes; the stream's descriptor may be write-only, so they cannot be read
 * back from the file), a restore with splice(2) where one side is a pipe:
 * memory use does not depend on the size of a state.
 */
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <limits.h>
#include <stdio.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>
#include <zlib.h>

#include "strata/device-state.h"
#include "mr-internal.h"

#define FALLBACK_BUF (256u << 10)
#define POLL_MS 100
#define FIRST_SECTION_ID 2      /* 1 is the RAM section's */

typedef struct SaveStream {
    DsStream pub;
    uint32_t sid;
    bool opened;                /* iterative: START written */
    bool ended;
    uint32_t crc;               /* of the section being written */
} SaveStream;

struct DsSet {
    GPtrArray *streams;         /* SaveStream * */
    /* a save's state */
    int fd;
    uint64_t pos;               /* where the next section goes */
    MrStats *stats;
    atomic_bool *cancel;
    atomic_bool abort;          /* the save failed: give up mid-round */
    GThread *thread;            /* rounds while the pages are written */
    int stop_fd;                /* eventfd: the round thread stops */
    GError *thread_err;
    uint8_t *buf;               /* the fallback copy buffer, lazily */
};

/* ---- the set ---- */

DsSet *ds_set_new(void)
{
    DsSet *s = g_new0(DsSet, 1);
    s->streams = g_ptr_array_new();
    s->fd = -1;
    s->stop_fd = -1;
    return s;
}

DsStream *ds_set_add(DsSet *s, const char *id, int fd, bool iterative)
{
    SaveStream *st = g_new0(SaveStream, 1);
    st->pub.id = g_strdup(id);
    st->pub.fd = fd;
    st->pub.iterative = iterative;
    st->sid = FIRST_SECTION_ID + s->streams->len;
    g_ptr_array_add(s->streams, st);
    return &st->pub;
}

unsigned ds_set_count(const DsSet *s)
{
    return s->streams->len;
}

DsStream *ds_set_get(DsSet *s, unsigned i)
{
    return &((SaveStream *)s->streams->pdata[i])->pub;
}

void ds_set_free(DsSet *s)
{
    if (!s) {
        return;
    }
    ds_save_end(s);
    for (unsigned i = 0; i < s->streams->len; i++) {
        SaveStream *st = s->streams->pdata[i];
        g_free(st->pub.id);
        g_free(st);
    }
    g_ptr_array_unref(s->streams);
    g_free(s->buf);
    g_free(s);
}

/* ---- primitives ---- */

static bool stopped(DsSet *s, GError **errp)
{
    if (atomic_load(&s->abort) || (s->cancel && atomic_load(s->cancel))) {
        error_setg(errp, "Device state copy cancelled");
        return true;
    }
    return false;
}

/*
 * Waits until @fd is ready for @events, polling the cancel flags; with
 * @stop_fd >= 0 also returns 0 when it is readable (the round thread is
 * asked to stop at a round boundary).  1: ready, -1: error set.
 */
static int wait_fd(DsSet *s, int fd, short events, int stop_fd,
                   GError **errp)
{
    for (;;) {
        struct pollfd p[2] = {
            { .fd = fd, .events = events },
            { .fd = stop_fd, .events = POLLIN },
        };
        if (stopped(s, errp)) {
            return -1;
        }
        int r = poll(p, stop_fd >= 0 ? 2 : 1, POLL_MS);
        if (r < 0 && errno != EINTR) {
            error_setg_errno(errp, errno, "Could not wait for a device state "
                             "descriptor");
            return -1;
        }
        if (r > 0 && p[0].revents) {
            return 1;
        }
        if (r > 0 && stop_fd >= 0 && p[1].revents) {
            return 0;
        }
    }
}

/* Counted in the save's stats, when it keeps any. */
static bool pwrite_all(DsSet *s, int fd, const void *buf, size_t n,
                       uint64_t off, GError **errp)
{
    return mr_pwrite_all(fd, buf, n, off, s->stats, errp);
}

/* Appends @b (taken) at s->pos. */
static bool put(DsSet *s, GByteArray *b, GError **errp)
{
    bool ok = pwrite_all(s, s->fd, b->data, b->len, s->pos, errp);
    s->pos += b->len;
    g_byte_array_unref(b);
    return ok;
}

static void add_u8(GByteArray *b, uint8_t v)
{
    g_byte_array_append(b, &v, 1);
}

static void add_be32(GByteArray *b, uint32_t v)
{
    uint32_t be = GUINT32_TO_BE(v);
    g_byte_array_append(b, (const guint8 *)&be, 4);
}

static void add_footer(GByteArray *b, uint32_t sid)
{
    add_u8(b, MR_SEC_FOOTER);
    add_be32(b, sid);
}

static GByteArray *section_start(uint8_t type, SaveStream *st)
{
    GByteArray *b = g_byte_array_new();
    g_autofree char *name = g_strconcat(DS_SECTION_PREFIX, st->pub.id, NULL);

    add_u8(b, type);
    add_be32(b, st->sid);
    add_u8(b, (uint8_t)strlen(name));
    g_byte_array_append(b, (const guint8 *)name, strlen(name));
    add_be32(b, 0);                     /* instance */
    add_be32(b, DS_SECTION_VERSION);
    return b;
}

static uint8_t *fallback_buf(DsSet *s)
{
    if (!s->buf) {
        s->buf = g_malloc(FALLBACK_BUF);
    }
    return s->buf;
}

/* ---- writing to a back end without blocking ---- */

void ds_writer_init(DsWriter *w, int fd)
{
    struct stat sb;

    w->fd = fd;
    w->own = -1;
    w->kind = DS_WRITER_PLAIN;
    if (fstat(fd, &sb) < 0) {
        return;
    }
    if (S_ISSOCK(sb.st_mode)) {
        w->kind = DS_WRITER_SOCKET;
    } else if (S_ISFIFO(sb.st_mode)) {
        /*
         * The back end passed its own open file description: O_NONBLOCK
         * on it would change its end too.  A pipe opened again through
         * /proc is a description of the daemon's own.
         */
        char path[64];
        snprintf(path, sizeof(path), "/proc/self/fd/%d", fd);
        w->own = open(path, O_WRONLY | O_NONBLOCK | O_CLOEXEC);
        w->kind = w->own >= 0 ? DS_WRITER_OWN : DS_WRITER_PIPE_BUF;
    }
}

ssize_t ds_writer_write(DsWriter *w, const void *buf, size_t n)
{
    switch (w->kind) {
    case DS_WRITER_SOCKET:
        return send(w->fd, buf, n, MSG_DONTWAIT | MSG_NOSIGNAL);
    case DS_WRITER_OWN:
        return write(w->own, buf, n);
    case DS_WRITER_PIPE_BUF:
        /* after POLLOUT a pipe has a free buffer: a page fits whole */
        return write(w->fd, buf, MIN(n, (size_t)PIPE_BUF));
    default:
        return write(w->fd, buf, n);
    }
}

void ds_writer_close(DsWriter *w)
{
    if (w->own >= 0) {
        close(w->own);
        w->own = -1;
    }
}

static void crc_add(SaveStream *st, const void *buf, size_t n)
{
    st->crc = (uint32_t)crc32(st->crc, buf, (uInt)n);
}

/*
 * Moves up to @max bytes from the back end's @src into the file at *off,
 * through the buffer, adding them to the section's CRC.  Returns the bytes
 * moved, 0 at EOF, -1 with @errp set.  Waits for data (cancellable).
 */
static ssize_t move_in(DsSet *s, SaveStream *st, uint64_t *off, size_t max,
                       GError **errp)
{
    int src = st->pub.fd;

    for (;;) {
        if (wait_fd(s, src, POLLIN, -1, errp) < 0) {
            return -1;
        }
        ssize_t r = read(src, fallback_buf(s), MIN(max, FALLBACK_BUF));
        if (r < 0 && (errno == EINTR || errno == EAGAIN)) {
            continue;
        }
        if (r < 0) {
            error_setg_errno(errp, errno, "Could not read device state '%s'",
                             st->pub.id);
            return -1;
        }
        if (r > 0 && !pwrite_all(s, s->fd, s->buf, (size_t)r, *off, errp)) {
            return -1;
        }
        crc_add(st, s->buf, (size_t)r);
        *off += (uint64_t)r;    /* counted by pwrite_all */
        return r;
    }
}

/* The section's CRC, then its footer. */
static void add_crc_footer(GByteArray *b, SaveStream *st)
{
    add_be32(b, st->crc);
    add_footer(b, st->sid);
}

/* Reads exactly @n bytes of framing from the back end; *eof when it
 * closed before the first byte. */
static bool read_exact(DsSet *s, SaveStream *st, void *buf, size_t n,
                       bool *eof, GError **errp)
{
    uint8_t *p = buf;
    size_t got = 0;

    *eof = false;
    while (got < n) {
        if (wait_fd(s, st->pub.fd, POLLIN, -1, errp) < 0) {
            return false;
        }
        ssize_t r = read(st->pub.fd, p + got, n - got);
        if (r < 0 && (errno == EINTR || errno == EAGAIN)) {
            continue;
        }
        if (r < 0) {
            error_setg_errno(errp, errno, "Could not read device state '%s'",
                             st->pub.id);
            return false;
        }
        if (r == 0) {
            if (got == 0) {
                *eof = true;
                return true;
            }
            error_setg(errp, "Device state '%s': the back end closed its "
                       "stream inside a record header", st->pub.id);
            return false;
        }
        got += (size_t)r;
    }
    return true;
}

/* ---- save ---- */

/* A plain stream: one full section, chunks of up to DS_CHUNK_MAX. */
static bool save_plain(DsSet *s, SaveStream *st, GError **errp)
{
    bool eof = false;

    atomic_store(&st->pub.outcome, DS_FAILED);
    st->crc = (uint32_t)crc32(0, NULL, 0);
    if (!put(s, section_start(MR_SEC_FULL, st), errp)) {
        return false;
    }
    while (!eof) {
        uint64_t hdr = s->pos;
        uint64_t data = hdr + 4, off = data;
        while (off - data < DS_CHUNK_MAX) {
            ssize_t r = move_in(s, st, &off, DS_CHUNK_MAX - (off - data),
                                errp);
            if (r < 0) {
                return false;
            }
            if (r == 0) {
                eof = true;
                break;
            }
            atomic_fetch_add(&st->pub.bytes, (uint64_t)r);
        }
        if (off > data) {
            uint32_t be = GUINT32_TO_BE((uint32_t)(off - data));
            if (!pwrite_all(s, s->fd, &be, 4, hdr, errp)) {
                return false;
            }
            s->pos = off;
        }
    }
    GByteArray *end = g_byte_array_new();
    add_be32(end, 0);
    add_crc_footer(end, st);
    if (!put(s, end, errp)) {
        return false;
    }
    st->ended = true;
    atomic_store(&st->pub.outcome, DS_DONE);
    return true;
}

/*
 * An iterative stream's next round, the back end's records as they come;
 * at EOF on a round boundary, the END section.
 */
static bool save_round(DsSet *s, SaveStream *st, GError **errp)
{
    uint32_t be;
    bool eof;

    atomic_store(&st->pub.outcome, DS_FAILED);
    if (!read_exact(s, st, &be, 4, &eof, errp)) {
        return false;
    }
    if (!st->opened) {
        GByteArray *b = section_start(MR_SEC_START, st);
        add_be32(b, 0);
        add_footer(b, st->sid);
        if (!put(s, b, errp)) {
            return false;
        }
        st->opened = true;
    }
    GByteArray *b = g_byte_array_new();
    add_u8(b, eof ? MR_SEC_END : MR_SEC_PART);
    add_be32(b, st->sid);
    if (!put(s, b, errp)) {
        return false;
    }
    st->crc = (uint32_t)crc32(0, NULL, 0);
    while (!eof) {
        uint32_t len = GUINT32_FROM_BE(be);
        if (!pwrite_all(s, s->fd, &be, 4, s->pos, errp)) {
            return false;
        }
        crc_add(st, &be, 4);
        s->pos += 4;
        if (len == 0) {
            break;
        }
        uint64_t off = s->pos;
        while (off - s->pos < len) {
            ssize_t r = move_in(s, st, &off, len - (off - s->pos), errp);
            if (r < 0) {
                return false;
            }
            if (r == 0) {
                error_setg(errp, "Device state '%s': the back end closed its "
                           "stream inside a round", st->pub.id);
                return false;
            }
            atomic_fetch_add(&st->pub.bytes, (uint64_t)r);
        }
        s->pos = off;
        if (!read_exact(s, st, &be, 4, &eof, errp)) {
            return false;
        }
        if (eof) {
            error_setg(errp, "Device state '%s': the back end closed its "
                       "stream inside a round", st->pub.id);
            return false;
        }
    }
    b = g_byte_array_new();
    if (eof) {
        add_be32(b, 0);
        add_footer(b, st->sid);
    } else {
        add_crc_footer(b, st);
    }
    if (!put(s, b, errp)) {
        return false;
    }
    if (eof) {
        st->ended = true;
        atomic_store(&st->pub.outcome, DS_DONE);
    } else {
        atomic_fetch_add(&st->pub.rounds, 1);
    }
    return true;
}

/*
 * While the pages are written: a round of an iterative stream is taken as
 * soon as its first record header arrives, so a back end never waits for
 * the end of the save to go on with its next round.
 */
static gpointer round_thread(gpointer opaque)
{
    DsSet *s = opaque;
    unsigned n = s->streams->len;
    g_autofree struct pollfd *p = g_new0(struct pollfd, n + 1);
    g_autofree SaveStream **who = g_new0(SaveStream *, n);

    for (;;) {
        unsigned k = 0;
        for (unsigned i = 0; i < n; i++) {
            SaveStream *st = s->streams->pdata[i];
            if (st->pub.iterative && !st->ended) {
                p[k].fd = st->pub.fd;
                p[k].events = POLLIN;
                who[k++] = st;
            }
        }
        p[k].fd = s->stop_fd;
        p[k].events = POLLIN;
        if (stopped(s, &s->thread_err)) {
            return NULL;
        }
        int r = poll(p, k + 1, POLL_MS);
        if (r < 0 && errno != EINTR) {
            error_setg_errno(&s->thread_err, errno, "Could not wait for "
                             "device state");
            return NULL;
        }
        if (r <= 0) {
            continue;
        }
        if (p[k].revents) {
            return NULL;
        }
        for (unsigned i = 0; i < k; i++) {
            if (p[i].revents && !save_round(s, who[i], &s->thread_err)) {
                return NULL;
            }
        }
    }
}

bool ds_save_begin(DsSet *s, int fd, uint64_t ram_end, MrStats *stats,
                   atomic_bool *cancel, GError **errp)
{
    GByteArray *ram_tail = mr_stream_ram_end();
    bool iterative = false;

    s->fd = fd;
    s->pos = ram_end + ram_tail->len;
    s->stats = stats;
    s->cancel = cancel;
    g_byte_array_unref(ram_tail);
    for (unsigned i = 0; i < s->streams->len; i++) {
        SaveStream *st = s->streams->pdata[i];
        iterative |= st->pub.iterative;
        /* a larger pipe means fewer wake-ups; the kernel may refuse */
        fcntl(st->pub.fd, F_SETPIPE_SZ, 1 << 20);
    }
    if (!iterative) {
        return true;
    }
    s->stop_fd = eventfd(0, EFD_CLOEXEC);
    if (s->stop_fd < 0) {
        error_setg_errno(errp, errno, "Could not create an eventfd");
        return false;
    }
    s->thread = g_thread_new("strata-devstate", round_thread, s);
    return true;
}

static bool stop_thread(DsSet *s, GError **errp)
{
    if (s->thread) {
        uint64_t one = 1;
        if (write(s->stop_fd, &one, sizeof(one)) < 0) {
            atomic_store(&s->abort, true);
        }
        g_thread_join(s->thread);
        s->thread = NULL;
    }
    if (s->stop_fd >= 0) {
        close(s->stop_fd);
        s->stop_fd = -1;
    }
    if (s->thread_err) {
        g_propagate_error(errp, s->thread_err);
        s->thread_err = NULL;
        return false;
    }
    return true;
}

void ds_save_end(DsSet *s)
{
    if (s && s->thread) {
        atomic_store(&s->abort, true);
        stop_thread(s, NULL);
    }
}

static char *vmdesc(DsSet *s)
{
    GString *j = g_string_new("{\"page_size\": 4096, \"devices\": [");

    for (unsigned i = 0; s && i < s->streams->len; i++) {
        SaveStream *st = s->streams->pdata[i];
        /* QEMU's fields; the ids are checked id names (no quoting) */
        g_string_append_printf(j, "%s{\"name\": \"%s%s\", \"instance_id\": 0, "
                               "\"vmsd_name\": \"x-strata-state\", "
                               "\"version\": %u, \"section_id\": %u}",
                               i ? ", " : "", DS_SECTION_PREFIX, st->pub.id,
                               DS_SECTION_VERSION, st->sid);
    }
    g_string_append(j, "]}");
    return g_string_free(j, false);
}

bool ds_save_tail(DsSet *s, int fd, uint64_t ram_end, MrStats *stats,
                  atomic_bool *cancel, GError **errp)
{
    DsSet none = { 0 };
    bool ok;

    if (!s) {
        s = &none;
    }
    if (s->fd < 0 || s == &none) {
        /* ds_save_begin was not called: nothing is running yet */
        GByteArray *ram_tail = mr_stream_ram_end();
        s->fd = fd;
        s->pos = ram_end + ram_tail->len;
        s->stats = stats;
        s->cancel = cancel;
        g_byte_array_unref(ram_tail);
    }
    GByteArray *ram_tail = mr_stream_ram_end();
    ok = pwrite_all(s, fd, ram_tail->data, ram_tail->len, ram_end, errp);
    g_byte_array_unref(ram_tail);
    if (!ok || (s != &none && !stop_thread(s, errp))) {
        return false;
    }
    for (unsigned i = 0; s->streams && i < s->streams->len; i++) {
        SaveStream *st = s->streams->pdata[i];
        while (st->pub.iterative && !st->ended) {
            if (!save_round(s, st, errp)) {
                return false;
            }
        }
    }
    for (unsigned i = 0; s->streams && i < s->streams->len; i++) {
        SaveStream *st = s->streams->pdata[i];
        if (!st->pub.iterative && !save_plain(s, st, errp)) {
            return false;
        }
    }
    g_autofree char *desc = vmdesc(s == &none ? NULL : s);
    return put(s, mr_stream_eof(desc), errp);
}

/* ---- restore ---- */

static bool get_be32_at(int fd, uint64_t off, uint32_t *v, GError **errp)
{
    uint32_t be;
    if (pread(fd, &be, 4, (off_t)off) != 4) {
        error_setg(errp, "Could not read the migration file at offset %"
                   G_GUINT64_FORMAT, off);
        return false;
    }
    *v = GUINT32_FROM_BE(be);
    return true;
}

/*
 * Where the record length words are in an iterative round being handed
 * back: `bytes` counts the records' data only, as a save counts it.
 */
typedef struct Records {
    uint64_t next;              /* file offset of the next length word */
} Records;

/*
 * Counts the state bytes among the file's bytes [@from, @to), which the
 * back end has just taken: all of them for a plain chunk (@rec NULL), the
 * records' data for a round.  Counting as the back end takes them keeps
 * `bytes` at what it has received while a slow back end takes a chunk
 * in several writes.
 */
static bool count_taken(DsStream *st, Records *rec, int file, uint64_t from,
                        uint64_t to, GError **errp)
{
    uint64_t n = 0;

    if (!rec) {
        atomic_fetch_add(&st->bytes, to - from);
        return true;
    }
    while (from < to) {
        if (from < rec->next) {
            uint64_t end = MIN(to, rec->next);
            n += end - from;
            from = end;
        } else if (to >= rec->next + 4) {
            uint32_t len;
            if (!get_be32_at(file, rec->next, &len, errp)) {
                return false;
            }
            from = rec->next + 4;
            rec->next = from + len;
        } else {
            break;              /* inside a length word */
        }
    }
    atomic_fetch_add(&st->bytes, n);
    return true;
}

/*
 * Moves @n bytes at file offset @off into the back end's descriptor,
 * counting the state bytes among them as they go (@rec: see count_taken).
 */
static bool move_out(DsSet *s, DsStream *st, Records *rec, int file,
                     uint64_t off, uint64_t n, GError **errp)
{
    DsWriter w = { .fd = -1, .own = -1 };
    bool ok = false;

    while (n) {
        if (wait_fd(s, st->fd, POLLOUT, -1, errp) < 0) {
            goto out;
        }
        loff_t o = (loff_t)off;
        /* never blocks on the pipe: a back end that stops reading must
         * not hold the restore past job-cancel or quit */
        ssize_t r = splice(file, &o, st->fd, NULL, MIN(n, DS_CHUNK_MAX),
                           SPLICE_F_MOVE | SPLICE_F_NONBLOCK);
        if (r < 0 && errno == EINVAL) {
            ssize_t k = pread(file, fallback_buf(s), MIN(n, FALLBACK_BUF),
                              (off_t)off);
            if (k <= 0) {
                error_setg_errno(errp, k < 0 ? errno : EIO, "Could not read "
                                 "device state '%s' from the migration file",
                                 st->id);
                goto out;
            }
            if (w.fd < 0) {
                ds_writer_init(&w, st->fd);
            }
            /* a short write: the rest is read from the file again */
            r = ds_writer_write(&w, s->buf, (size_t)k);
        }
        if (r < 0 && (errno == EINTR || errno == EAGAIN)) {
            continue;
        }
        if (r <= 0) {
            error_setg_errno(errp, r < 0 ? errno : EIO, "Could not hand "
                             "device state '%s' back to its back end",
                             st->id);
            goto out;
        }
        if (!count_taken(st, rec, file, off, off + (uint64_t)r, errp)) {
            goto out;
        }
        off += (uint64_t)r;
        n -= (uint64_t)r;
        if (s->stats) {
            atomic_fetch_add(&s->stats->transferred, (uint64_t)r);
        }
    }
    ok = true;
out:
    ds_writer_close(&w);
    return ok;
}

static bool load_one(DsSet *s, DsStream *st, const MrDevState *d, int file,
                     GError **errp)
{
    atomic_store(&st->outcome, DS_FAILED);
    for (unsigned r = 0; r < d->rounds->len; r++) {
        uint64_t off = g_array_index(d->rounds, uint64_t, r);
        uint64_t start = off;
        Records rec = { .next = start };
        uint32_t len;
        for (;;) {
            if (!get_be32_at(file, off, &len, errp)) {
                return false;
            }
            if (!d->iterative && len &&
                !move_out(s, st, NULL, file, off + 4, len, errp)) {
                return false;
            }
            off += 4 + (uint64_t)len;
            if (!len) {
                break;
            }
        }
        /* an iterative round goes back framed, as the back end wrote it */
        if (d->iterative) {
            if (!move_out(s, st, &rec, file, start, off - start, errp)) {
                return false;
            }
            atomic_fetch_add(&st->rounds, 1);
        }
    }
    close(st->fd);
    st->fd = -1;
    atomic_store(&st->outcome, DS_DONE);
    return true;
}

bool ds_load(DsSet *s, const MrFileInfo *info, int fd, MrStats *stats,
             atomic_bool *cancel, GPtrArray *unread, GError **errp)
{
    DsSet none = { 0 };

    if (!s) {
        s = &none;
    }
    s->stats = stats;
    s->cancel = cancel;
    for (unsigned i = 0; info->states && i < info->states->len; i++) {
        const MrDevState *d = info->states->pdata[i];
        DsStream *st = NULL;
        for (unsigned k = 0; s->streams && k < s->streams->len; k++) {
            if (strcmp(ds_set_get(s, k)->id, d->id) == 0) {
                st = ds_set_get(s, k);
            }
        }
        if (!st) {
            g_ptr_array_add(unread, g_strconcat(DS_SECTION_PREFIX, d->id,
                                                NULL));
            continue;
        }
        if (!load_one(s, st, d, fd, errp)) {
            return false;
        }
    }
    for (unsigned k = 0; s->streams && k < s->streams->len; k++) {
        DsStream *st = ds_set_get(s, k);
        if (atomic_load(&st->outcome) == DS_PENDING) {
            atomic_store(&st->outcome, DS_NOT_IN_FILE);
        }
    }
    return true;
}
