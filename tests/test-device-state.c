/*
 * Device state streams in the migration file (strata/device-state.h):
 * the sections' bytes, plain and iterative streams through pipes and
 * through descriptors that are not pipes (the buffered path), chunking of
 * a large state, and the faults: a back end that closes inside a record
 * or a round, a file cut at any byte of its device sections, and
 * registered / unregistered ids on restore; a restore's `bytes` counter
 * against what a slow back end has taken.
 */
#include <fcntl.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cmocka.h>

#include "strata/device-state.h"

#define RAM (1u << 20)

typedef struct Saved {
    int fd;                     /* memfd holding the file */
    uint64_t ram_end;           /* where the RAM section's end starts */
} Saved;

static uint8_t *ram(void)
{
    static uint8_t *p;
    if (!p) {
        p = g_malloc(RAM);
        for (unsigned i = 0; i < RAM; i++) {
            p[i] = (uint8_t)(i * 7 + i / 4096);
        }
    }
    return p;
}

/* Saves one RAM block and the streams of @ds; false with @errp set. */
static bool save(DsSet *ds, Saved *out, GError **errp)
{
    MrBlock b = { .id = (char *)"ram0", .used = RAM, .host = ram() };
    int fd = memfd_create("ds-test", MFD_CLOEXEC);
    int chan[1] = { fd };
    MrTarget t = { .fd = fd, .chan_fds = chan, .nb_chan = 1 };
    MrParams p = { .channels = 1, .devstate = ds };
    MrStats st = { 0 };
    atomic_bool cancel = false;

    assert_true(fd >= 0);
    out->fd = fd;
    out->ram_end = mr_layout(&b, 1, 0);
    return mr_save(&t, &b, 1, &p, &st, &cancel, errp);
}

static void write_all(int fd, const void *buf, size_t n)
{
    assert_int_equal(write(fd, buf, n), (ssize_t)n);
}

static void put_record(int fd, const char *s)
{
    uint32_t be = GUINT32_TO_BE((uint32_t)strlen(s));
    write_all(fd, &be, 4);
    write_all(fd, s, strlen(s));
}

static void end_round(int fd)
{
    uint32_t zero = 0;
    write_all(fd, &zero, 4);
}

static GByteArray *read_to_eof(int fd)
{
    GByteArray *b = g_byte_array_new();
    uint8_t buf[65536];
    ssize_t r;
    while ((r = read(fd, buf, sizeof(buf))) > 0) {
        g_byte_array_append(b, buf, (guint)r);
    }
    assert_int_equal(r, 0);
    return b;
}

static const uint8_t *file_bytes(Saved *s, size_t *len)
{
    static uint8_t *m;
    off_t size = lseek(s->fd, 0, SEEK_END);
    g_free(m);
    m = g_malloc((size_t)size);
    assert_int_equal(pread(s->fd, m, (size_t)size, 0), size);
    *len = (size_t)size;
    return m;
}

/* The bytes after the RAM section's end, field by field. */
static void test_layout(void **state)
{
    int plain[2], empty[2], iter[2];
    GError *err = NULL;
    DsSet *ds = ds_set_new();
    Saved s;

    assert_int_equal(pipe(plain), 0);
    assert_int_equal(pipe(empty), 0);
    assert_int_equal(pipe(iter), 0);
    write_all(plain[1], "hello", 5);
    close(plain[1]);
    close(empty[1]);
    put_record(iter[1], "abc");
    end_round(iter[1]);
    put_record(iter[1], "de");
    put_record(iter[1], "f");
    end_round(iter[1]);
    close(iter[1]);
    ds_set_add(ds, "dev0", plain[0], false);
    ds_set_add(ds, "e", empty[0], false);
    DsStream *it = ds_set_add(ds, "fs0", iter[0], true);
    assert_true(save(ds, &s, &err));
    assert_null(err);
    assert_int_equal(atomic_load(&it->rounds), 2);
    assert_int_equal(atomic_load(&it->bytes), 6);

    static const uint8_t want[] = {
        /* RAM: setup EOS + footer, END part + EOS + footer */
        0, 0, 0, 0, 0, 0, 0, 0x10, 0x7e, 0, 0, 0, 1,
        0x03, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0x10, 0x7e, 0, 0, 0, 1,
        /* fs0 (id 4): START (no data), two PARTs, END; version 2 */
        0x01, 0, 0, 0, 4, 18, 'x', '-', 's', 't', 'r', 'a', 't', 'a', '-',
        's', 't', 'a', 't', 'e', ':', 'f', 's', '0', 0, 0, 0, 0, 0, 0, 0, 2,
        0, 0, 0, 0, 0x7e, 0, 0, 0, 4,
        /* a round, then its CRC-32 (Python's zlib.crc32 of the round) */
        0x02, 0, 0, 0, 4, 0, 0, 0, 3, 'a', 'b', 'c', 0, 0, 0, 0,
        0x53, 0x67, 0x52, 0x92, 0x7e, 0, 0, 0, 4,
        0x02, 0, 0, 0, 4, 0, 0, 0, 2, 'd', 'e', 0, 0, 0, 1, 'f', 0, 0, 0, 0,
        0x31, 0x05, 0xe6, 0xbe, 0x7e, 0, 0, 0, 4,
        0x03, 0, 0, 0, 4, 0, 0, 0, 0, 0x7e, 0, 0, 0, 4,
        /* dev0 (id 2): FULL, one chunk, 0, CRC-32 of "hello", footer */
        0x04, 0, 0, 0, 2, 19, 'x', '-', 's', 't', 'r', 'a', 't', 'a', '-',
        's', 't', 'a', 't', 'e', ':', 'd', 'e', 'v', '0', 0, 0, 0, 0,
        0, 0, 0, 2, 0, 0, 0, 5, 'h', 'e', 'l', 'l', 'o', 0, 0, 0, 0,
        0x36, 0x10, 0xa6, 0x86, 0x7e, 0, 0, 0, 2,
        /* e (id 3): FULL, no chunk, CRC-32 of nothing (0) */
        0x04, 0, 0, 0, 3, 16, 'x', '-', 's', 't', 'r', 'a', 't', 'a', '-',
        's', 't', 'a', 't', 'e', ':', 'e', 0, 0, 0, 0, 0, 0, 0, 2,
        0, 0, 0, 0, 0, 0, 0, 0, 0x7e, 0, 0, 0, 3,
        /* QEMU_VM_EOF, then the description */
        0x00, 0x06,
    };
    size_t len;
    const uint8_t *f = file_bytes(&s, &len);
    assert_true(len > s.ram_end + sizeof(want));
    assert_memory_equal(f + s.ram_end, want, sizeof(want));
    const char *desc = (const char *)f + s.ram_end + sizeof(want) + 4;
    assert_non_null(g_strstr_len(desc, (gssize)(len - s.ram_end -
                                                sizeof(want) - 4),
                                 "\"name\": \"x-strata-state:fs0\""));

    /* the parse indexes the same */
    MrFileInfo *info = mr_file_parse(s.fd, 0, &err);
    assert_non_null(info);
    assert_int_equal(info->states->len, 3);
    MrDevState *d0 = info->states->pdata[0];
    assert_string_equal(d0->id, "fs0");
    assert_true(d0->iterative);
    assert_int_equal(d0->rounds->len, 2);
    assert_int_equal(d0->bytes, 6);
    MrDevState *d1 = info->states->pdata[1];
    assert_string_equal(d1->id, "dev0");
    assert_false(d1->iterative);
    assert_int_equal(d1->bytes, 5);

    /* restore: dev0 and fs0 registered, e not, "gone" not in the file */
    int rp[2], ri[2], rg[2];
    assert_int_equal(pipe(rp), 0);
    assert_int_equal(pipe(ri), 0);
    assert_int_equal(pipe(rg), 0);
    DsSet *back = ds_set_new();
    DsStream *sp = ds_set_add(back, "dev0", rp[1], false);
    DsStream *si = ds_set_add(back, "fs0", ri[1], true);
    DsStream *sg = ds_set_add(back, "gone", rg[1], false);
    GPtrArray *unread = g_ptr_array_new_with_free_func(g_free);
    MrStats st = { 0 };
    atomic_bool cancel = false;
    assert_true(ds_load(back, info, s.fd, &st, &cancel, unread, &err));
    assert_int_equal(unread->len, 1);
    assert_string_equal(unread->pdata[0], "x-strata-state:e");
    assert_int_equal(atomic_load(&sp->outcome), DS_DONE);
    assert_int_equal(sp->fd, -1);
    assert_int_equal(atomic_load(&si->outcome), DS_DONE);
    assert_int_equal(atomic_load(&sg->outcome), DS_NOT_IN_FILE);
    assert_int_equal(sg->fd, rg[1]);
    GByteArray *got = read_to_eof(rp[0]);
    assert_int_equal(got->len, 5);
    assert_memory_equal(got->data, "hello", 5);
    g_byte_array_unref(got);
    /* exactly the bytes the back end wrote, rounds in order */
    static const uint8_t rounds[] = {
        0, 0, 0, 3, 'a', 'b', 'c', 0, 0, 0, 0,
        0, 0, 0, 2, 'd', 'e', 0, 0, 0, 1, 'f', 0, 0, 0, 0,
    };
    got = read_to_eof(ri[0]);
    assert_int_equal(got->len, sizeof(rounds));
    assert_memory_equal(got->data, rounds, sizeof(rounds));
    g_byte_array_unref(got);

    g_ptr_array_unref(unread);
    mr_file_info_free(info);
    ds_set_free(back);
    ds_set_free(ds);
    close(rp[0]);
    close(ri[0]);
    close(rg[0]);
    close(rg[1]);
    close(plain[0]);
    close(empty[0]);
    close(iter[0]);
    close(s.fd);
}

typedef struct Writer {
    int fd;
    uint64_t size;
} Writer;

static uint8_t gen(uint64_t i)
{
    return (uint8_t)(i * 131 + (i >> 12));
}

static gpointer writer(gpointer opaque)
{
    Writer *w = opaque;
    uint8_t buf[100000];
    uint64_t done = 0;
    while (done < w->size) {
        size_t n = MIN(sizeof(buf), w->size - done);
        for (size_t i = 0; i < n; i++) {
            buf[i] = gen(done + i);
        }
        write_all(w->fd, buf, n);
        done += n;
    }
    close(w->fd);
    return NULL;
}

static gpointer read_to_eof_thread(gpointer fd)
{
    return read_to_eof(GPOINTER_TO_INT(fd));
}

/*
 * 8 MiB + 3 bytes through a pipe (splice) and through a socket (the
 * buffered path): chunks of at most 1 MiB, restored byte for byte.
 */
static void big_round_trip(bool use_pipe)
{
    const uint64_t size = (8u << 20) + 3;
    int in[2], out[2];
    GError *err = NULL;
    Saved s;

    if (use_pipe) {
        assert_int_equal(pipe(in), 0);
        assert_int_equal(pipe(out), 0);
    } else {
        assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM, 0, in), 0);
        assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM, 0, out), 0);
    }
    Writer w = { .fd = in[1], .size = size };
    GThread *th = g_thread_new("writer", writer, &w);
    DsSet *ds = ds_set_new();
    DsStream *st = ds_set_add(ds, "big", in[0], false);
    assert_true(save(ds, &s, &err));
    g_thread_join(th);
    assert_int_equal(atomic_load(&st->bytes), size);

    MrFileInfo *info = mr_file_parse(s.fd, 0, &err);
    assert_non_null(info);
    MrDevState *d = info->states->pdata[0];
    assert_int_equal(d->bytes, size);
    /* 8 full chunks and the 3 bytes: walk them */
    uint64_t off = g_array_index(d->rounds, uint64_t, 0);
    unsigned chunks = 0;
    for (;;) {
        uint32_t be;
        assert_int_equal(pread(s.fd, &be, 4, (off_t)off), 4);
        uint32_t len = GUINT32_FROM_BE(be);
        if (!len) {
            break;
        }
        assert_true(len <= DS_CHUNK_MAX);
        off += 4 + len;
        chunks++;
    }
    assert_true(chunks >= 9);

    DsSet *back = ds_set_new();
    ds_set_add(back, "big", out[1], false);
    GPtrArray *unread = g_ptr_array_new_with_free_func(g_free);
    MrStats mst = { 0 };
    atomic_bool cancel = false;
    /* the reader runs beside the load: a pipe holds far less than 8 MiB */
    GByteArray *got = NULL;
    GThread *rd = g_thread_new("reader", read_to_eof_thread,
                               GINT_TO_POINTER(out[0]));
    assert_true(ds_load(back, info, s.fd, &mst, &cancel, unread, &err));
    got = g_thread_join(rd);
    assert_int_equal(got->len, size);
    for (uint64_t i = 0; i < size; i++) {
        if (got->data[i] != gen(i)) {
            fail_msg("byte %" G_GUINT64_FORMAT " differs", i);
        }
    }
    g_byte_array_unref(got);
    g_ptr_array_unref(unread);
    mr_file_info_free(info);
    ds_set_free(back);
    ds_set_free(ds);
    close(in[0]);
    close(out[0]);
    close(s.fd);
}

static void test_big_pipe(void **state)
{
    big_round_trip(true);
}

static void test_big_socket(void **state)
{
    big_round_trip(false);
}

/* A back end that stops in the middle: the save fails and says why. */
static void test_backend_faults(void **state)
{
    static const struct {
        const char *bytes;
        size_t len;
        const char *msg;
    } cases[] = {
        { "\0\0", 2, "inside a record header" },
        { "\0\0\0\5ab", 6, "inside a round" },
        { "\0\0\0\2ab", 6, "inside a round" },
    };
    for (unsigned i = 0; i < G_N_ELEMENTS(cases); i++) {
        int p[2];
        GError *err = NULL;
        Saved s;
        assert_int_equal(pipe(p), 0);
        write_all(p[1], cases[i].bytes, cases[i].len);
        close(p[1]);
        DsSet *ds = ds_set_new();
        DsStream *st = ds_set_add(ds, "fs0", p[0], true);
        assert_false(save(ds, &s, &err));
        assert_non_null(err);
        assert_non_null(strstr(err->message, cases[i].msg));
        assert_non_null(strstr(err->message, "'fs0'"));
        assert_int_equal(atomic_load(&st->outcome), DS_FAILED);
        g_error_free(err);
        ds_set_free(ds);
        close(p[0]);
        close(s.fd);
    }
}

/*
 * The file the damage tests spoil: a plain state "a" ("state bytes") and
 * an iterative one "b" (one round holding the record "r1").
 */
typedef struct TwoStates {
    int p[2], q[2];
    DsSet *ds;
    Saved s;
} TwoStates;

static void two_states_save(TwoStates *t)
{
    GError *err = NULL;

    assert_int_equal(pipe(t->p), 0);
    assert_int_equal(pipe(t->q), 0);
    write_all(t->p[1], "state bytes", 11);
    close(t->p[1]);
    put_record(t->q[1], "r1");
    end_round(t->q[1]);
    close(t->q[1]);
    t->ds = ds_set_new();
    ds_set_add(t->ds, "a", t->p[0], false);
    ds_set_add(t->ds, "b", t->q[0], true);
    assert_true(save(t->ds, &t->s, &err));
}

static void two_states_free(TwoStates *t)
{
    ds_set_free(t->ds);
    close(t->p[0]);
    close(t->q[0]);
    close(t->s.fd);
}

/* A file cut at any byte of its device sections or after is refused. */
static void test_truncated_everywhere(void **state)
{
    GError *err = NULL;
    TwoStates t;
    two_states_save(&t);
    Saved s = t.s;
    size_t len;
    const uint8_t *f = file_bytes(&s, &len);
    g_autofree uint8_t *copy = g_memdup2(f, len);
    /* the EOF byte is followed by the description, which may go */
    size_t last = 0;
    for (size_t i = len - 6; i > s.ram_end; i--) {
        uint32_t be;
        memcpy(&be, copy + i + 2, 4);
        if (copy[i] == 0 && copy[i + 1] == 6 &&
            GUINT32_FROM_BE(be) == len - (i + 6)) {
            last = i;
            break;
        }
    }
    assert_true(last > s.ram_end);
    for (size_t cut = s.ram_end; cut <= last; cut++) {
        int fd = memfd_create("cut", MFD_CLOEXEC);
        write_all(fd, copy, cut);
        MrFileInfo *info = mr_file_parse(fd, 0, &err);
        if (info) {
            fail_msg("a file cut at %zu (of %zu) parsed", cut, len);
        }
        assert_non_null(err);
        g_clear_error(&err);
        close(fd);
    }
    two_states_free(&t);
}

/*
 * A flipped bit anywhere in a state's bytes, a round's bytes or their
 * CRC-32s fails the parse, before anything is handed back (only the
 * framing used to be checked: such a file restored the damaged bytes).
 */
static void test_flipped_everywhere(void **state)
{
    GError *err = NULL;
    TwoStates t;
    two_states_save(&t);
    Saved s = t.s;
    size_t len;
    const uint8_t *f = file_bytes(&s, &len);
    g_autofree uint8_t *copy = g_memdup2(f, len);
    const uint8_t *plain = memmem(copy + s.ram_end, len - s.ram_end,
                                  "state bytes", 11);
    const uint8_t *rec = memmem(copy + s.ram_end, len - s.ram_end,
                                "\0\0\0\2r1", 6);
    assert_non_null(plain);
    assert_non_null(rec);
    /* "state bytes", its 0, its CRC; the round: record, 0, CRC */
    struct { size_t at, n; } spans[] = {
        { (size_t)(plain - copy), 11 + 4 + 4 },
        { (size_t)(rec - copy), 6 + 4 + 4 },
    };
    for (unsigned k = 0; k < 2; k++) {
        for (size_t i = spans[k].at; i < spans[k].at + spans[k].n; i++) {
            for (unsigned bit = 0; bit < 8; bit += 7) {
                copy[i] ^= 1u << bit;
                int fd = memfd_create("flip", MFD_CLOEXEC);
                write_all(fd, copy, len);
                MrFileInfo *info = mr_file_parse(fd, 0, &err);
                if (info) {
                    fail_msg("a file with bit %u of byte %zu flipped parsed",
                             bit, i);
                }
                assert_non_null(err);
                g_clear_error(&err);
                close(fd);
                copy[i] ^= 1u << bit;
            }
        }
    }
    /* and the file as written parses */
    int fd = memfd_create("good", MFD_CLOEXEC);
    write_all(fd, copy, len);
    MrFileInfo *info = mr_file_parse(fd, 0, &err);
    assert_non_null(info);
    mr_file_info_free(info);
    close(fd);
    two_states_free(&t);
}

static gpointer cancel_soon(gpointer flag)
{
    g_usleep(300 * 1000);
    atomic_store((atomic_bool *)flag, true);
    return NULL;
}

/*
 * A restore into a back end that never reads (its end open, nothing
 * read): the copy never blocks in a splice or write, so the cancel ends
 * it (migrate-incoming's and x-strata-machine-restore's path); the
 * description the back end passed stays blocking.
 */
static void stalled_restore(bool use_pipe)
{
    const uint64_t size = (2u << 20) + 1;
    int in[2], out[2];
    GError *err = NULL;
    Saved s;

    assert_int_equal(pipe(in), 0);
    if (use_pipe) {
        assert_int_equal(pipe(out), 0);
    } else {
        assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM, 0, out), 0);
    }
    Writer w = { .fd = in[1], .size = size };
    GThread *th = g_thread_new("writer", writer, &w);
    DsSet *ds = ds_set_new();
    ds_set_add(ds, "dev", in[0], false);
    assert_true(save(ds, &s, &err));
    g_thread_join(th);
    MrFileInfo *info = mr_file_parse(s.fd, 0, &err);
    assert_non_null(info);

    DsSet *back = ds_set_new();
    DsStream *st = ds_set_add(back, "dev", out[1], false);
    GPtrArray *unread = g_ptr_array_new_with_free_func(g_free);
    MrStats mst = { 0 };
    atomic_bool cancel = false;
    GThread *c = g_thread_new("cancel", cancel_soon, &cancel);
    assert_false(ds_load(back, info, s.fd, &mst, &cancel, unread, &err));
    g_thread_join(c);
    assert_string_equal(err->message, "Device state copy cancelled");
    g_clear_error(&err);
    assert_true(atomic_load(&st->bytes) < size);
    assert_false(fcntl(out[1], F_GETFL) & O_NONBLOCK);
    g_ptr_array_unref(unread);
    mr_file_info_free(info);
    ds_set_free(back);
    ds_set_free(ds);
    close(in[0]);
    close(out[0]);
    close(out[1]);
    close(s.fd);
}

static void test_stalled_restore_pipe(void **state)
{
    stalled_restore(true);
}

static void test_stalled_restore_socket(void **state)
{
    stalled_restore(false);
}

/* Writes @b (taken) into @fd, then closes it: a back end saving. */
typedef struct Feed {
    int fd;
    GByteArray *b;
} Feed;

static gpointer feed(gpointer opaque)
{
    Feed *f = opaque;
    write_all(f->fd, f->b->data, f->b->len);
    close(f->fd);
    g_byte_array_unref(f->b);
    return NULL;
}

/*
 * The state bytes among the first @x bytes a back end reads back: all of
 * them for a plain state (@framed NULL), the records' data of the rounds
 * @framed (what `bytes` counts, not the length words).
 */
static uint64_t state_bytes_in(const GByteArray *framed, uint64_t x)
{
    uint64_t n = 0, p = 0;

    if (!framed) {
        return x;
    }
    while (p < x && p + 4 <= framed->len) {
        uint32_t be;
        memcpy(&be, framed->data + p, 4);
        uint64_t data = p + 4, len = GUINT32_FROM_BE(be);
        if (x > data) {
            n += MIN(x - data, len);
        }
        p = data + len;
    }
    return n;
}

typedef struct Load {
    DsSet *set;
    MrFileInfo *info;
    int fd;
    bool ok;
    GError *err;
} Load;

static gpointer load_thread(gpointer opaque)
{
    Load *l = opaque;
    GPtrArray *unread = g_ptr_array_new_with_free_func(g_free);
    MrStats st = { 0 };
    atomic_bool cancel = false;

    l->ok = ds_load(l->set, l->info, l->fd, &st, &cancel, unread, &l->err);
    g_ptr_array_unref(unread);
    return NULL;
}

/*
 * A restore's `bytes` is what the back end has taken, at every moment:
 * the back end here (a one-page pipe, or a socket with a small send
 * buffer) takes a chunk or a round in many partial writes, and reads
 * 1000 bytes at a time; after each read, the counter must never exceed
 * what it has received (read, plus what waits in its pipe or socket) and
 * must settle at it.  The counter used to move by a whole chunk after it
 * was handed back (plain) or a whole round before (iterative).
 */
static void counted_as_taken(bool iterative, bool use_pipe)
{
    int in[2], out[2];
    GError *err = NULL;
    Saved s;
    GByteArray *state = g_byte_array_new();
    uint64_t total = 0;

    /* plain: 300001 bytes; iterative: two rounds of uneven records */
    static const uint32_t records[] = { 70000, 1, 3000, 0, 100000, 5, 0 };
    for (unsigned i = 0; i < (iterative ? G_N_ELEMENTS(records) : 1); i++) {
        uint32_t len = iterative ? records[i] : 300001;
        if (iterative) {
            uint32_t be = GUINT32_TO_BE(len);
            g_byte_array_append(state, (const guint8 *)&be, 4);
        }
        for (uint32_t k = 0; k < len; k++) {
            uint8_t c = gen(total + k);
            g_byte_array_append(state, &c, 1);
        }
        total += len;
    }
    assert_int_equal(pipe(in), 0);
    Feed f = { .fd = in[1], .b = g_byte_array_ref(state) };
    GThread *th = g_thread_new("feed", feed, &f);
    DsSet *ds = ds_set_new();
    DsStream *saved = ds_set_add(ds, "dev", in[0], iterative);
    assert_true(save(ds, &s, &err));
    g_thread_join(th);
    assert_int_equal(atomic_load(&saved->bytes), total);
    MrFileInfo *info = mr_file_parse(s.fd, 0, &err);
    assert_non_null(info);

    if (use_pipe) {
        assert_int_equal(pipe(out), 0);
        assert_int_equal(fcntl(out[1], F_SETPIPE_SZ, 4096), 4096);
    } else {
        int small = 4096;
        assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM, 0, out), 0);
        assert_int_equal(setsockopt(out[1], SOL_SOCKET, SO_SNDBUF, &small,
                                    sizeof(small)), 0);
    }
    DsSet *back = ds_set_new();
    DsStream *st = ds_set_add(back, "dev", out[1], iterative);
    Load l = { .set = back, .info = info, .fd = s.fd };
    th = g_thread_new("load", load_thread, &l);
    GByteArray *got = g_byte_array_new();
    unsigned mid = 0;
    for (;;) {
        uint8_t buf[1000];
        ssize_t r = read(out[0], buf, sizeof(buf));
        assert_true(r >= 0);
        if (r == 0) {
            break;
        }
        g_byte_array_append(got, buf, (guint)r);
        gint64 deadline = g_get_monotonic_time() + 10 * G_USEC_PER_SEC;
        for (;;) {
            uint64_t c = atomic_load(&st->bytes);
            int queued;
            assert_int_equal(ioctl(out[0], FIONREAD, &queued), 0);
            uint64_t taken = state_bytes_in(iterative ? state : NULL,
                                            got->len + (uint64_t)queued);
            if (c > taken) {
                fail_msg("bytes is %" G_GUINT64_FORMAT ", the back end has "
                         "taken %" G_GUINT64_FORMAT " state bytes", c, taken);
            }
            if (c == taken) {
                mid += c > 0 && c < total;
                break;
            }
            if (g_get_monotonic_time() > deadline) {
                fail_msg("bytes stays at %" G_GUINT64_FORMAT ", the back end "
                         "has taken %" G_GUINT64_FORMAT " state bytes", c,
                         taken);
            }
            g_usleep(100);
        }
    }
    g_thread_join(th);
    assert_true(l.ok);
    assert_true(mid > 100);
    assert_int_equal(atomic_load(&st->bytes), total);
    if (iterative) {
        assert_int_equal(got->len, state->len);
        assert_memory_equal(got->data, state->data, state->len);
        assert_int_equal(atomic_load(&st->rounds), 2);
    } else {
        assert_int_equal(got->len, total);
        assert_memory_equal(got->data, state->data, total);
    }
    g_byte_array_unref(got);
    g_byte_array_unref(state);
    mr_file_info_free(info);
    ds_set_free(back);
    ds_set_free(ds);
    close(in[0]);
    close(out[0]);
    close(s.fd);
}

static void test_counted_plain_pipe(void **state)
{
    counted_as_taken(false, true);
}

static void test_counted_plain_socket(void **state)
{
    counted_as_taken(false, false);
}

static void test_counted_rounds_pipe(void **state)
{
    counted_as_taken(true, true);
}

static void test_counted_rounds_socket(void **state)
{
    counted_as_taken(true, false);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_layout),
        cmocka_unit_test(test_big_pipe),
        cmocka_unit_test(test_big_socket),
        cmocka_unit_test(test_backend_faults),
        cmocka_unit_test(test_truncated_everywhere),
        cmocka_unit_test(test_flipped_everywhere),
        cmocka_unit_test(test_stalled_restore_pipe),
        cmocka_unit_test(test_stalled_restore_socket),
        cmocka_unit_test(test_counted_plain_pipe),
        cmocka_unit_test(test_counted_plain_socket),
        cmocka_unit_test(test_counted_rounds_pipe),
        cmocka_unit_test(test_counted_rounds_socket),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
