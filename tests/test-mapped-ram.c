/*
 * The mapped-ram file: strata's layout field by field, round trips over
 * channel counts and O_DIRECT, sparse zero pages, and files that must be
 * refused before any guest page is written.
 */
#include <fcntl.h>
#include <inttypes.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <linux/userfaultfd.h>

#include <cmocka.h>

#include "strata/mapped-ram.h"

static char path[] = "/tmp/strata-test-mapped-ram-XXXXXX";

static uint8_t *map_anon(uint64_t size)
{
    void *p = mmap(NULL, size, PROT_READ | PROT_WRITE,
                   MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    assert_true(p != MAP_FAILED);
    return p;
}

/* Every 8th page zero, the others random; some long zero stretches. */
static void fill(uint8_t *p, uint64_t size, unsigned seed)
{
    srand(seed);
    for (uint64_t pg = 0; pg < size / MR_PAGE_SIZE; pg++) {
        uint8_t *q = p + pg * MR_PAGE_SIZE;
        if (pg % 8 == 3 || (pg >= 700 && pg < 1100)) {
            memset(q, 0, MR_PAGE_SIZE);
            continue;
        }
        for (unsigned i = 0; i < MR_PAGE_SIZE; i += 512) {
            q[i] = (uint8_t)rand();
        }
        q[MR_PAGE_SIZE - 1] = (uint8_t)(pg | 1);
    }
}

typedef struct Files {
    MrTarget t;
    int fds[8];
} Files;

static void open_target(Files *f, const char *p, unsigned chans, bool direct,
                        bool create, uint64_t offset)
{
    int flags = create ? O_RDWR | O_CREAT | O_TRUNC : O_RDONLY;
    f->t.fd = open(p, flags, 0600);
    assert_true(f->t.fd >= 0);
    for (unsigned i = 0; i < chans; i++) {
        f->fds[i] = open(p, (create ? O_WRONLY : O_RDONLY) |
                         (direct ? O_DIRECT : 0));
        assert_true(f->fds[i] >= 0);
    }
    f->t.chan_fds = f->fds;
    f->t.nb_chan = chans;
    f->t.offset = offset;
}

static void close_target(Files *f)
{
    close(f->t.fd);
    for (unsigned i = 0; i < f->t.nb_chan; i++) {
        close(f->fds[i]);
    }
}

static bool save(MrBlock *b, unsigned n, unsigned chans, bool direct,
                 uint64_t offset, MrStats *st)
{
    Files f;
    MrParams p = { .channels = chans, .direct_io = direct };
    atomic_bool cancel = false;
    GError *err = NULL;

    open_target(&f, path, chans, direct, true, offset);
    bool ok = mr_save(&f.t, b, n, &p, st, &cancel, &err);
    if (err) {
        print_message("%s\n", err->message);
        g_error_free(err);
    }
    close_target(&f);
    return ok;
}

/* what the last load_fds counted: pages through the fd, pages stored */
static uint64_t last_load_via_fd, last_load_normal;

/* @fds: per block the memory's descriptor, or NULL: none */
static MrFileInfo *load_fds(uint8_t **hosts, const int *fds, unsigned chans,
                            bool direct, uint64_t offset, GError **errp)
{
    Files f;
    MrParams p = { .channels = chans, .direct_io = direct };
    atomic_bool cancel = false;
    MrStats st = { 0 };

    open_target(&f, path, chans, direct, false, offset);
    MrFileInfo *info = mr_file_parse(f.t.fd, offset, errp);
    if (info) {
        for (unsigned i = 0; i < info->nb_blocks; i++) {
            info->blocks[i].host = hosts[i];
            if (fds) {
                info->blocks[i].has_fd = true;
                info->blocks[i].fd = fds[i];
            }
        }
        bool ok = mr_load(&f.t, info, &p, &st, &cancel, errp);
        last_load_via_fd = st.via_fd;
        last_load_normal = st.normal;
        if (!ok) {
            mr_file_info_free(info);
            info = NULL;
        }
    }
    close_target(&f);
    return info;
}

static MrFileInfo *load(uint8_t **hosts, unsigned chans, bool direct,
                        uint64_t offset, GError **errp)
{
    return load_fds(hosts, NULL, chans, direct, offset, errp);
}

static void round_trip(unsigned chans, bool direct, uint64_t offset)
{
    uint64_t sizes[2] = { 8u << 20, 3u << 20 };
    const char *ids[2] = { "ram0", "/rom@etc/acpi/tables" };
    MrBlock b[2];
    uint8_t *dst[2];
    MrStats st = { 0 };
    GError *err = NULL;

    for (int i = 0; i < 2; i++) {
        b[i] = (MrBlock){ .id = (char *)ids[i], .used = sizes[i],
                          .host = map_anon(sizes[i]) };
        fill(b[i].host, sizes[i], 7 + i + chans);
        dst[i] = map_anon(sizes[i]);
        memset(dst[i], 0xee, sizes[i]);       /* old contents to replace */
    }
    assert_true(save(b, 2, chans, direct, offset, &st));
    assert_int_equal(st.normal + st.duplicate,
                     (sizes[0] + sizes[1]) / MR_PAGE_SIZE);
    MrFileInfo *info = load(dst, chans, direct, offset, &err);
    assert_null(err);
    assert_non_null(info);
    assert_true(info->reached_eof);
    assert_int_equal(info->nb_blocks, 2);
    assert_int_equal(info->unread->len, 0);
    for (int i = 0; i < 2; i++) {
        assert_string_equal(info->blocks[i].id, ids[i]);
        assert_int_equal(info->blocks[i].used, sizes[i]);
        assert_int_equal(info->blocks[i].pages_offset % MR_PAGES_ALIGN, 0);
        assert_memory_equal(dst[i], b[i].host, sizes[i]);
        munmap(b[i].host, sizes[i]);
        munmap(dst[i], sizes[i]);
    }
    mr_file_info_free(info);
}

static void test_round_trip_1(void **state)
{
    (void)state;
    round_trip(1, false, 0);
}

static void test_round_trip_4(void **state)
{
    (void)state;
    round_trip(4, false, 0);
}

static void test_round_trip_direct(void **state)
{
    (void)state;
    round_trip(3, true, 0);
}

static void test_round_trip_offset(void **state)
{
    (void)state;
    round_trip(2, false, 4096 * 3 + 17);
}

/* The blocking path channels take where the kernel refuses io_uring. */
static void test_round_trip_sync_io(void **state)
{
    (void)state;
    setenv("STRATA_MIGRATION_SYNC_IO", "1", 1);
    round_trip(2, false, 0);
    round_trip(3, true, 0);
    unsetenv("STRATA_MIGRATION_SYNC_IO");
}

/*
 * Runs of 16 pages between holes of 80: far more requests per batch than
 * a channel keeps in flight, so it waits for free ones on both sides.
 */
static void test_round_trip_many_runs(void **state)
{
    uint64_t size = 16u << 20;
    MrBlock b = { .id = "ram0", .used = size, .host = map_anon(size) };
    uint8_t *dst = map_anon(size);
    MrStats st = { 0 };
    GError *err = NULL;
    uint64_t stored = 0;
    (void)state;

    for (uint64_t pg = 0; pg < size / MR_PAGE_SIZE; pg++) {
        if (pg % 96 < 16) {
            memset(b.host + pg * MR_PAGE_SIZE, (int)(pg % 251) + 1,
                   MR_PAGE_SIZE);
            stored++;
        }
    }
    memset(dst, 0xee, size);
    assert_true(save(&b, 1, 1, true, 0, &st));
    assert_int_equal(st.normal, stored);
    MrFileInfo *info = load(&dst, 1, true, 0, &err);
    assert_null(err);
    assert_non_null(info);
    assert_memory_equal(dst, b.host, size);
    mr_file_info_free(info);
    munmap(b.host, size);
    munmap(dst, size);
}

/* Shared memory in a memfd, as a memory backend has it (@fd: its fd). */
static uint8_t *map_memfd(uint64_t size, int *fd)
{
    *fd = memfd_create("strata-test-ram", MFD_CLOEXEC);
    assert_true(*fd >= 0);
    assert_int_equal(ftruncate(*fd, (off_t)size), 0);
    void *p = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_SHARED, *fd, 0);
    assert_true(p != MAP_FAILED);
    return p;
}

/* How many pages of [p, p + size) this process has mapped (page tables). */
static uint64_t pages_mapped(const uint8_t *p, uint64_t size)
{
    uint64_t n = size / MR_PAGE_SIZE, count = 0;
    uint64_t *ent = g_new(uint64_t, n);
    int fd = open("/proc/self/pagemap", O_RDONLY);
    assert_true(fd >= 0);
    assert_int_equal(pread(fd, ent, n * 8, (off_t)((uintptr_t)p /
                                                    MR_PAGE_SIZE * 8)),
                     (ssize_t)(n * 8));
    close(fd);
    for (uint64_t i = 0; i < n; i++) {
        count += ent[i] >> 63;
    }
    g_free(ent);
    return count;
}

/*
 * A load into shared memory with its descriptor: the pages are written
 * through the descriptor (the mapping gets no page of its own: the
 * kernel never clears pages for it), the zero pages inside runs (every
 * 8th) and outside them (a long stretch) read as zero over old contents,
 * whatever the piece size, the channel count, direct-io or not.  With a
 * read-only descriptor the mapping is filled, as without one.
 */
typedef enum {
    ALL_FD,         /* every channel goes through the fd */
    ALL_MAPPED,     /* none does */
    EITHER,         /* some do: which batches they take is the scheduler's */
} FdPath;

static void fd_round_trip(unsigned chans, bool direct, bool rdonly_fd,
                          FdPath path_taken)
{
    uint64_t size = 8u << 20;
    MrBlock b = { .id = "ram0", .used = size, .host = map_anon(size) };
    MrStats st = { 0 };
    GError *err = NULL;
    int fd, ro = -1;
    uint8_t *dst = map_memfd(size, &fd);

    fill(b.host, size, 11 + chans);
    memset(dst, 0xee, size);                  /* old contents to replace */
    assert_true(save(&b, 1, chans, direct, 0, &st));
    /* the old contents, written through the mapping, unmapped again */
    assert_int_equal(madvise(dst, size, MADV_DONTNEED), 0);
    assert_int_equal(pages_mapped(dst, size), 0);
    if (rdonly_fd) {
        char *proc = g_strdup_printf("/proc/self/fd/%d", fd);
        ro = open(proc, O_RDONLY);
        g_free(proc);
        assert_true(ro >= 0);
    }
    MrFileInfo *info = load_fds(&dst, rdonly_fd ? &ro : &fd, chans, direct,
                                0, &err);
    assert_null(err);
    assert_non_null(info);
    assert_memory_equal(dst, b.host, size);
    mr_file_info_free(info);
    /* the compare above mapped every page: unmap, then load again */
    assert_int_equal(madvise(dst, size, MADV_DONTNEED), 0);
    memset(dst + 3 * MR_PAGE_SIZE, 0xee, 900 * MR_PAGE_SIZE);
    assert_int_equal(madvise(dst, size, MADV_DONTNEED), 0);
    info = load_fds(&dst, rdonly_fd ? &ro : &fd, chans, direct, 0, &err);
    assert_null(err);
    assert_non_null(info);
    mr_file_info_free(info);
    uint64_t mapped = pages_mapped(dst, size);
    if (path_taken == ALL_FD) {
        assert_int_equal(mapped, 0);
    } else if (path_taken == ALL_MAPPED) {
        /* the runs' pages (all but the long zero stretch and its edges) */
        assert_true(mapped > size / MR_PAGE_SIZE / 2);
    }
    assert_memory_equal(dst, b.host, size);
    if (ro >= 0) {
        close(ro);
    }
    close(fd);
    munmap(dst, size);
    munmap(b.host, size);
}

static void test_round_trip_memfd(void **state)
{
    (void)state;
    /* any channel count: through the fd (a writer per block) */
    fd_round_trip(1, true, false, ALL_FD);
    fd_round_trip(1, false, false, ALL_FD);
    fd_round_trip(3, true, false, ALL_FD);
    fd_round_trip(2, false, false, ALL_FD);
    setenv("STRATA_MIGRATION_LOAD_VIA_MAP", "1", 1);
    fd_round_trip(3, true, false, ALL_MAPPED);
    unsetenv("STRATA_MIGRATION_LOAD_VIA_MAP");
    /* pieces of 16 pages: piece ends fall on zero pages and data pages */
    setenv("STRATA_MIGRATION_LOAD_PIECE", "16", 1);
    fd_round_trip(2, true, false, ALL_FD);
    unsetenv("STRATA_MIGRATION_LOAD_PIECE");
    setenv("STRATA_MIGRATION_SYNC_IO", "1", 1);
    fd_round_trip(2, true, false, ALL_FD);
    unsetenv("STRATA_MIGRATION_SYNC_IO");
}

static void test_round_trip_memfd_rdonly(void **state)
{
    (void)state;
    fd_round_trip(1, true, true, ALL_MAPPED);
}

/*
 * max-bandwidth is one limit for all channels together: 16 MiB of RAM at
 * 32 MiB/s take about 0.4 s over 4 channels (a limit per channel would
 * let them finish in a quarter of that).  Only the lower bound is
 * checked: a loaded machine can only be slower.
 */
static void bandwidth_total(bool direct)
{
    uint64_t size = 16u << 20, bw = 32u << 20;
    MrBlock b = { .id = "ram0", .used = size, .host = map_anon(size) };
    MrParams p = { .channels = 4, .direct_io = direct, .max_bandwidth = bw };
    MrStats st = { 0 };
    atomic_bool cancel = false;
    GError *err = NULL;
    Files f;

    fill(b.host, size, 3);
    open_target(&f, path, 4, direct, true, 0);
    gint64 t0 = g_get_monotonic_time();
    assert_true(mr_save(&f.t, &b, 1, &p, &st, &cancel, &err));
    double secs = (double)(g_get_monotonic_time() - t0) / 1e6;
    close_target(&f);
    assert_null(err);
    double least = 0.9 * (double)(st.normal * MR_PAGE_SIZE) / (double)bw;
    if (secs < least) {
        print_message("%.3f s, the limit allows no less than %.3f s\n",
                      secs, least / 0.9);
    }
    assert_true(secs >= least);
    munmap(b.host, size);
}

static void test_bandwidth_total(void **state)
{
    (void)state;
    bandwidth_total(false);
    bandwidth_total(true);
}

static uint64_t be64_at(const uint8_t *p)
{
    uint64_t v;
    memcpy(&v, p, 8);
    return GUINT64_FROM_BE(v);
}

static uint32_t be32_at(const uint8_t *p)
{
    uint32_t v;
    memcpy(&v, p, 4);
    return GUINT32_FROM_BE(v);
}

/* The bytes QEMU's loader expects, and zero pages left as holes. */
static void test_layout(void **state)
{
    uint64_t size = 4u << 20;
    MrBlock b = { .id = "ram0", .used = size, .host = map_anon(size) };
    MrStats st = { 0 };
    uint8_t head[128];
    struct stat s;
    (void)state;

    memset(b.host, 0, size);
    memset(b.host + 5 * MR_PAGE_SIZE, 0x5a, MR_PAGE_SIZE);
    assert_true(save(&b, 1, 2, false, 0, &st));
    int fd = open(path, O_RDONLY);
    assert_int_equal(pread(fd, head, sizeof(head), 0), sizeof(head));
    assert_int_equal(be32_at(head), 0x5145564d);
    assert_int_equal(be32_at(head + 4), 3);
    assert_int_equal(head[8], MR_SEC_START);
    assert_int_equal(head[13], 3);
    assert_memory_equal(head + 14, "ram", 3);
    assert_int_equal(be32_at(head + 17), 0);        /* instance */
    assert_int_equal(be32_at(head + 21), 4);        /* version */
    assert_int_equal(be64_at(head + 25), size | MR_RAM_MEM_SIZE);
    assert_int_equal(head[33], 4);
    assert_memory_equal(head + 34, "ram0", 4);
    assert_int_equal(be64_at(head + 38), size);
    assert_int_equal(be32_at(head + 46), 1);
    assert_int_equal(be64_at(head + 50), 4096);
    assert_int_equal(be64_at(head + 58), 74);       /* bitmap offset */
    assert_int_equal(be64_at(head + 66), 0x100000); /* pages offset */
    assert_int_equal(head[74], 1 << 5);             /* page 5 stored */
    assert_int_equal(st.normal, 1);
    uint8_t page[MR_PAGE_SIZE];
    assert_int_equal(pread(fd, page, sizeof(page), 0x100000 + 5 * 4096),
                     sizeof(page));
    assert_int_equal(page[0], 0x5a);
    assert_int_equal(fstat(fd, &s), 0);
    assert_int_equal(s.st_size, 0x100000 + size + 8 + 5 + 5 + 8 + 5 + 1 + 5 +
                     strlen("{\"page_size\": 4096, \"devices\": []}"));
    /* one page and the header's block: far from 5 MiB */
    assert_true(s.st_blocks * 512 < 64 * 1024);
    close(fd);
    munmap(b.host, size);
}

static void save_small(void)
{
    uint64_t size = 1u << 20;
    MrBlock b = { .id = "ram0", .used = size, .host = map_anon(size) };
    MrStats st = { 0 };
    fill(b.host, size, 3);
    assert_true(save(&b, 1, 1, false, 0, &st));
    munmap(b.host, size);
}

static void patch(off_t off, const void *bytes, size_t n)
{
    int fd = open(path, O_WRONLY);
    assert_int_equal(pwrite(fd, bytes, n, off), (ssize_t)n);
    close(fd);
}

/* A bad file is refused and the memory it would fill keeps its bytes. */
static void expect_refused(const char *msg)
{
    uint64_t size = 1u << 20;
    uint8_t *dst = map_anon(size);
    GError *err = NULL;

    memset(dst, 0xee, size);
    MrFileInfo *info = load(&dst, 1, false, 0, &err);
    assert_null(info);
    assert_non_null(err);
    if (!strstr(err->message, msg)) {
        print_message("got: %s\n", err->message);
        fail();
    }
    g_error_free(err);
    for (uint64_t i = 0; i < size; i++) {
        if (dst[i] != 0xee) {
            fail_msg("guest byte %" PRIu64 " written", i);
        }
    }
    munmap(dst, size);
}

static void test_bad_files(void **state)
{
    uint8_t v;
    uint32_t be;
    (void)state;

    save_small();
    patch(0, "QEVN", 4);
    expect_refused("Not a migration stream");

    save_small();
    be = GUINT32_TO_BE(2);
    patch(4, &be, 4);
    expect_refused("Unsupported migration stream version");

    save_small();
    be = GUINT32_TO_BE(2);
    patch(46, &be, 4);                  /* mapped-ram header version */
    expect_refused("header version 2 not supported");

    save_small();
    uint64_t ps = GUINT64_TO_BE(65536);
    patch(50, &ps, 8);
    expect_refused("page size 65536");

    save_small();
    v = 0x42;
    patch(8, &v, 1);
    expect_refused("unknown section type 0x42");

    /* cut inside the pages: the stream's end is gone */
    save_small();
    assert_int_equal(truncate(path, 0x100000 + 4096 * 10), 0);
    expect_refused("truncated");
}

/*
 * A file as QEMU writes it: strata's RAM section, then a device section
 * strata cannot step over, @junk bytes of its contents, QEMU_VM_EOF and
 * (unless @desc is NULL) QEMU's JSON description, @cut bytes short of it
 * or @extra bytes after it.
 */
static void qemu_tail(size_t junk, const char *desc, size_t cut, size_t extra)
{
    static const char strata_desc[] = "{\"page_size\": 4096, \"devices\": []}";
    struct stat s;
    GByteArray *b = g_byte_array_new();
    uint32_t be;
    uint8_t v;

    save_small();
    assert_int_equal(stat(path, &s), 0);
    /* strata's QEMU_VM_EOF, 0x06, length, description */
    assert_int_equal(truncate(path, s.st_size - 6 - strlen(strata_desc)), 0);
    v = MR_SEC_FULL;
    g_byte_array_append(b, &v, 1);
    be = GUINT32_TO_BE(2);
    g_byte_array_append(b, (uint8_t *)&be, 4);
    v = 5;
    g_byte_array_append(b, &v, 1);
    g_byte_array_append(b, (const uint8_t *)"timer", 5);
    be = 0;
    g_byte_array_append(b, (uint8_t *)&be, 4);
    be = GUINT32_TO_BE(2);
    g_byte_array_append(b, (uint8_t *)&be, 4);
    /* device contents full of would-be markers: 0x00 0x06 and '{' */
    for (size_t i = 0; i < junk; i++) {
        v = (uint8_t[]){ 0, 6, 0, 0, 0, 9, '{', 0x7e }[i % 8];
        g_byte_array_append(b, &v, 1);
    }
    v = MR_SEC_EOF;
    g_byte_array_append(b, &v, 1);
    if (desc) {
        v = MR_SEC_VMDESCRIPTION;
        g_byte_array_append(b, &v, 1);
        be = GUINT32_TO_BE((uint32_t)strlen(desc));
        g_byte_array_append(b, (uint8_t *)&be, 4);
        g_byte_array_append(b, (const uint8_t *)desc, strlen(desc) - cut);
        for (size_t i = 0; i < extra; i++) {
            g_byte_array_append(b, (const uint8_t *)" ", 1);
        }
    }
    int fd = open(path, O_WRONLY | O_APPEND);
    assert_int_equal(write(fd, b->data, b->len), (ssize_t)b->len);
    close(fd);
    g_byte_array_unref(b);
}

static MrFileInfo *parse_file(GError **errp)
{
    int fd = open(path, O_RDONLY);
    MrFileInfo *info = mr_file_parse(fd, 0, errp);
    close(fd);
    return info;
}

/*
 * QEMU's device sections cannot be stepped over, so only the description
 * at the end of the file says that the file is whole: with it the
 * sections are named, without it (a file cut or damaged after the RAM)
 * the file is refused before any page is written.
 */
static void test_qemu_device_sections(void **state)
{
    const char *desc = "{\"page_size\": 4096, \"devices\": [{\"name\": "
                       "\"timer\", \"instance_id\": 0}, {\"name\": \"apic\", "
                       "\"instance_id\": 0}]}";
    GError *err = NULL;
    (void)state;

    qemu_tail(3000, desc, 0, 0);
    MrFileInfo *info = parse_file(&err);
    assert_null(err);
    assert_non_null(info);
    assert_int_equal(info->unread->len, 2);
    assert_string_equal(info->unread->pdata[0], "timer");
    assert_string_equal(info->unread->pdata[1], "apic");
    mr_file_info_free(info);

    /* a description longer than the 1 MiB the search reads at a time,
     * behind 3 MiB of device contents */
    GString *big = g_string_new("{\"devices\": [{\"name\": \"timer\"}, "
                                "{\"name\": \"big\"}], \"pad\": \"");
    for (unsigned i = 0; i < (5u << 19); i++) {
        g_string_append_c(big, 'x');
    }
    g_string_append(big, "\"}");
    qemu_tail(3u << 20, big->str, 0, 0);
    info = parse_file(&err);
    assert_null(err);
    assert_non_null(info);
    assert_int_equal(info->unread->len, 2);
    assert_string_equal(info->unread->pdata[1], "big");
    mr_file_info_free(info);
    g_string_free(big, true);

    qemu_tail(3u << 20, NULL, 0, 0);
    expect_refused("does not end with QEMU's description");
    qemu_tail(3000, desc, 1, 0);
    expect_refused("does not end with QEMU's description");
    qemu_tail(3000, desc, 0, 1);
    expect_refused("does not end with QEMU's description");
    qemu_tail(0, "{\"devices\": {}}", 0, 0);
    expect_refused("(the first: 'timer')");
}

/*
 * Multifd restores into a new memfd go through its descriptor, all of
 * them: each channel reads into bounce buffers and the block's writer
 * writes them (via_fd counts every stored page, so a fallback to the
 * mapping fails here), the memory ends byte-identical, the daemon's
 * mapping got no page of its own, and the zero pages stayed holes (the
 * memfd holds no more than the stored pages).  Two blocks, so that two
 * writers run; two bounce buffers over four channels make channels wait
 * for the writers.
 */
static bool uffd_expected;

static void writers_round_trip(unsigned chans, bool direct)
{
    uint64_t sizes[2] = { 32u << 20, 3u << 20 };
    MrBlock b[2];
    uint8_t *dst[2];
    int fds[2];
    MrStats st = { 0 };
    GError *err = NULL;

    for (int i = 0; i < 2; i++) {
        b[i] = (MrBlock){ .id = i ? "vram" : "ram0", .used = sizes[i],
                          .host = map_anon(sizes[i]) };
        fill(b[i].host, sizes[i], 23 + i + chans);
        dst[i] = map_memfd(sizes[i], &fds[i]);
    }
    assert_true(save(b, 2, chans, direct, 0, &st));
    MrFileInfo *info = load_fds(dst, fds, chans, direct, 0, &err);
    assert_null(err);
    assert_non_null(info);
    mr_file_info_free(info);
    assert_int_equal(last_load_normal, st.normal);
    assert_int_equal(last_load_via_fd, st.normal);
    for (int i = 0; i < 2; i++) {
        struct stat sb;
        uint64_t stored = 0;
        for (uint64_t pg = 0; pg < sizes[i] / MR_PAGE_SIZE; pg++) {
            const uint8_t *q = b[i].host + pg * MR_PAGE_SIZE;
            stored += q[0] || memcmp(q, q + 1, MR_PAGE_SIZE - 1);
        }
        /* UFFDIO_COPY maps what it copies; the writer's pwrite does not */
        uint64_t mapped = pages_mapped(dst[i], sizes[i]);
        if (uffd_expected) {
            assert_int_equal(mapped, stored);
        } else {
            assert_int_equal(mapped, 0);
        }
        assert_int_equal(fstat(fds[i], &sb), 0);
        assert_int_equal((uint64_t)sb.st_blocks * 512, stored * MR_PAGE_SIZE);
        assert_memory_equal(dst[i], b[i].host, sizes[i]);
        close(fds[i]);
        munmap(dst[i], sizes[i]);
        munmap(b[i].host, sizes[i]);
    }
}

static void test_round_trip_memfd_writers(void **state)
{
    (void)state;
    writers_round_trip(2, true);
    writers_round_trip(4, true);
    writers_round_trip(4, false);
    setenv("STRATA_MIGRATION_LOAD_BUFFERS", "2", 1);
    writers_round_trip(4, true);
    unsetenv("STRATA_MIGRATION_LOAD_BUFFERS");
    /* reads into buffers not registered with io_uring (not root) */
    setenv("STRATA_MIGRATION_NO_FIXED", "1", 1);
    writers_round_trip(4, true);
    unsetenv("STRATA_MIGRATION_NO_FIXED");
}

/*
 * The experiment STRATA_MIGRATION_LOAD_UFFD=1: channels copy the pages
 * into new memory with UFFDIO_COPY.  Where the kernel refuses a
 * userfaultfd (no permission, too old) the writer takes over: skipped.
 */
static void test_round_trip_memfd_uffd(void **state)
{
    (void)state;
    int fd = (int)syscall(SYS_userfaultfd, O_CLOEXEC | UFFD_USER_MODE_ONLY);
    if (fd < 0) {
        skip();
    }
    close(fd);
    setenv("STRATA_MIGRATION_LOAD_UFFD", "1", 1);
    uffd_expected = true;
    writers_round_trip(4, true);
    writers_round_trip(2, false);
    uffd_expected = false;
    unsetenv("STRATA_MIGRATION_LOAD_UFFD");
}

/* The counter can fail: a load forced through the mapping counts none. */
static void test_round_trip_memfd_via_map(void **state)
{
    uint64_t size = 8u << 20;
    MrBlock b = { .id = "ram0", .used = size, .host = map_anon(size) };
    MrStats st = { 0 };
    GError *err = NULL;
    int fd;
    uint8_t *dst = map_memfd(size, &fd);
    (void)state;

    fill(b.host, size, 5);
    assert_true(save(&b, 1, 4, true, 0, &st));
    setenv("STRATA_MIGRATION_LOAD_VIA_MAP", "1", 1);
    MrFileInfo *info = load_fds(&dst, &fd, 4, true, 0, &err);
    unsetenv("STRATA_MIGRATION_LOAD_VIA_MAP");
    assert_null(err);
    assert_non_null(info);
    mr_file_info_free(info);
    assert_int_equal(last_load_normal, st.normal);
    assert_int_equal(last_load_via_fd, 0);
    assert_memory_equal(dst, b.host, size);
    close(fd);
    munmap(dst, size);
    munmap(b.host, size);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_layout),
        cmocka_unit_test(test_round_trip_1),
        cmocka_unit_test(test_round_trip_4),
        cmocka_unit_test(test_round_trip_direct),
        cmocka_unit_test(test_round_trip_sync_io),
        cmocka_unit_test(test_round_trip_many_runs),
        cmocka_unit_test(test_round_trip_offset),
        cmocka_unit_test(test_round_trip_memfd),
        cmocka_unit_test(test_round_trip_memfd_rdonly),
        cmocka_unit_test(test_bandwidth_total),
        cmocka_unit_test(test_bad_files),
        cmocka_unit_test(test_qemu_device_sections),
        cmocka_unit_test(test_round_trip_memfd_writers),
        cmocka_unit_test(test_round_trip_memfd_via_map),
        cmocka_unit_test(test_round_trip_memfd_uffd),
    };
    int fd = mkstemp(path);
    if (fd < 0) {
        return 1;
    }
    close(fd);
    int rc = cmocka_run_group_tests(tests, NULL, NULL);
    unlink(path);
    return rc;
}
