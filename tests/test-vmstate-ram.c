/*
 * Guest RAM through a qcow2 node's VM state area (strata/vmstate-ram.h):
 * what is saved comes back byte for byte (zero pages included, which are
 * never written), a state naming a block that is missing or of another
 * size changes no memory, and damaged headers and descriptors are refused
 * with a message.  Device state streams after the RAM (vmstate-
 * devices.c): round trips through pipes, a version 1 state, damaged or
 * unclaimed sections refused before anything is touched, back ends that
 * fail a save or a load.  Saves after a snapshot took a state: the image's
 * active table maps none of it, so no save copies one on write.
 */
#include <errno.h>
#include <fcntl.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <unistd.h>
#include <cmocka.h>
#include <zlib.h>
#include <glib.h>

#include "strata/backend.h"
#include "strata/block-ops.h"
#include "strata/coroutine.h"
#include "strata/device-state.h"
#include "strata/iov.h"
#include "strata/ram-block.h"
#include "strata/units.h"
#include "strata/vmstate-ram.h"
#include "../migration/vmstate-devices.h"
#include "../migration/vmstate-ram-int.h"
#include "support.h"

#define PAGE 4096


typedef struct Fixture {
    char *path;
    BlockBackend *blk;
    BlockNode *bs;
} Fixture;

static void *map_ram(size_t size)
{
    void *p = mmap(NULL, size, PROT_READ | PROT_WRITE,
                   MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    assert_true(p != MAP_FAILED);
    return p;
}

/* Page p of a block: zero for every third page, else a pattern of (id, p). */
static void pattern(uint8_t *host, size_t pages, int id)
{
    for (size_t p = 0; p < pages; p++) {
        uint8_t *pg = host + p * PAGE;
        if (p % 3 == 0) {
            memset(pg, 0, PAGE);
        } else {
            for (size_t i = 0; i < PAGE; i++) {
                pg[i] = (uint8_t)(id * 31 + p * 7 + i);
            }
        }
    }
}

static int setup(void **state)
{
    Fixture *f = g_new0(Fixture, 1);
    GError *err = NULL;
    f->path = test_path("vm.qcow2");
    json_t *o = json_pack("{s:I}", "size", (json_int_t)(16 * MiB));
    /* image_create takes the options' reference. */
    if (!image_create("qcow2", f->path, o, &err)) {
        fail_msg("create: %s", err->message);
    }
    f->blk = blk_new_open(f->path, json_pack("{s:s}", "driver", "qcow2"),
                          NODE_O_RDWR, &err);
    if (!f->blk) {
        fail_msg("open: %s", err->message);
    }
    f->bs = blk_node(f->blk);
    *state = f;
    return 0;
}

static int teardown(void **state)
{
    Fixture *f = *state;
    RamBlock *rb;
    while ((rb = ram_block_first())) {
        munmap(rb->host, rb->size);
        ram_block_unregister(rb);
    }
    blk_unref(f->blk);
    unlink(f->path);
    g_free(f->path);
    g_free(f);
    return 0;
}

static RamBlock *add_block(const char *id, size_t pages, int seed)
{
    GError *err = NULL;
    uint8_t *host = map_ram(pages * PAGE);
    pattern(host, pages, seed);
    RamBlock *rb = ram_block_register(id, host, pages * PAGE, PAGE, -1, NULL,
                                      &err);
    if (!rb) {
        fail_msg("register %s: %s", id, err->message);
    }
    return rb;
}

typedef struct Call {
    BlockNode *bs;
    bool save;
    int64_t size;
    DsSet *devs;                    /* device state streams, or NULL */
    atomic_bool *cancel;            /* job-cancel, or NULL */
    bool about_devices;
    int64_t ret;
    GError *err;
} Call;

static void coroutine_fn call_co(void *opaque)
{
    Call *c = opaque;
    c->ret = c->save ? vmstate_ram_save(c->bs, c->devs, c->cancel, &c->err)
                     : vmstate_ram_load(c->bs, c->size, c->devs, c->cancel,
                                        &c->about_devices, &c->err);
}

static int64_t save(BlockNode *bs, GError **errp)
{
    Call c = { .bs = bs, .save = true };
    co_run_sync(call_co, &c);
    if (c.err) {
        g_propagate_error(errp, c.err);
    }
    return c.ret;
}

static int load(BlockNode *bs, int64_t size, GError **errp)
{
    Call c = { .bs = bs, .size = size };
    co_run_sync(call_co, &c);
    if (c.err) {
        g_propagate_error(errp, c.err);
    }
    return (int)c.ret;
}

static void check_ram(RamBlock *rb, int seed)
{
    uint8_t *want = g_malloc(rb->size);
    pattern(want, ram_block_pages(rb), seed);
    for (uint64_t p = 0; p < ram_block_pages(rb); p++) {
        if (memcmp(want + p * PAGE, rb->host + p * PAGE, PAGE)) {
            fail_msg("%s: page %llu differs", rb->id, (unsigned long long)p);
        }
    }
    g_free(want);
}

static void test_roundtrip(void **state)
{
    Fixture *f = *state;
    GError *err = NULL;
    RamBlock *a = add_block("ram0", 1000, 1);
    RamBlock *b = add_block("ram1-with-a-longer-id", 37, 2);

    int64_t size = save(f->bs, &err);
    assert_null(err);
    assert_true(size > (int64_t)(a->size + b->size));

    /* Scribble everything, the zero pages too. */
    memset(a->host, 0xaa, a->size);
    memset(b->host, 0x55, b->size);
    assert_int_equal(load(f->bs, size, &err), 0);
    assert_null(err);
    check_ram(a, 1);
    check_ram(b, 2);
}

/* Take snapshot name with a VM state of size bytes (the job's part). */
static void take(BlockNode *bs, const char *name, int64_t size)
{
    NodeSnapshot sn = { .vm_state_size = (uint64_t)size,
                        .icount = UINT64_MAX };
    GError *err = NULL;

    g_strlcpy(sn.name, name, sizeof(sn.name));
    if (node_snapshot_create(bs, &sn, &err) < 0) {
        fail_msg("snapshot %s: %s", name, err->message);
    }
}

static void revert(BlockNode *bs, const char *name)
{
    GError *err = NULL;

    if (node_snapshot_goto(bs, name, &err) < 0) {
        fail_msg("goto %s: %s", name, err->message);
    }
}

static uint64_t be64_at(const uint8_t *p);

/*
 * Host clusters the file's active L1 table maps in the VM state area:
 * what the next save onto the image would have to copy on write.
 */
static unsigned active_vm_state_clusters(const char *path)
{
    int fd = open(path, O_RDONLY);
    uint8_t h[72];

    assert_true(fd >= 0);
    assert_int_equal(pread(fd, h, sizeof(h), 0), (ssize_t)sizeof(h));
    unsigned cbits = (unsigned)be64_at(h + 16) & 0xffffffffu;
    uint64_t size = be64_at(h + 24);
    uint32_t l1_size = (uint32_t)(be64_at(h + 32) & 0xffffffffu);
    uint64_t l1_offset = be64_at(h + 40);
    uint64_t cs = 1ull << cbits, span = cs * (cs / 8);
    uint64_t first = (size + span - 1) / span;
    uint8_t *l1 = g_malloc(l1_size * 8 + 1), *l2 = g_malloc(cs);
    unsigned mapped = 0;

    assert_int_equal(pread(fd, l1, l1_size * 8, (off_t)l1_offset),
                     (ssize_t)l1_size * 8);
    for (uint64_t i = first; i < l1_size; i++) {
        uint64_t l2_offset = be64_at(l1 + i * 8) & 0x00fffffffffffe00ull;
        if (!l2_offset) {
            continue;
        }
        assert_int_equal(pread(fd, l2, cs, (off_t)l2_offset), (ssize_t)cs);
        for (uint64_t j = 0; j < cs / 8; j++) {
            mapped += (be64_at(l2 + j * 8) & 0x00fffffffffffe00ull) != 0;
        }
    }
    g_free(l1);
    g_free(l2);
    close(fd);
    return mapped;
}

/*
 * Two saves, each kept by a snapshot: after each, the active table maps
 * none of the state (QEMU's qcow2_snapshot_create lets go of it too), and
 * both states load back whole.  Before, every cluster of the first stayed
 * shared, and the second save copied each one on write: a cluster, a read
 * of the parts the state leaves unwritten (every third page here is zero
 * and never written) and two syncs, per cluster.
 */
static void test_resave_copies_nothing(void **state)
{
    Fixture *f = *state;
    GError *err = NULL;
    RamBlock *rb = add_block("ram0", 1024, 1);     /* 4 MiB: 64 clusters */

    int64_t s1 = save(f->bs, &err);
    assert_null(err);
    take(f->bs, "s1", s1);
    assert_int_equal(blk_flush(f->blk), 0);
    assert_int_equal(active_vm_state_clusters(f->path), 0);

    pattern(rb->host, ram_block_pages(rb), 2);
    int64_t s2 = save(f->bs, &err);
    assert_null(err);
    take(f->bs, "s2", s2);
    assert_int_equal(blk_flush(f->blk), 0);
    assert_int_equal(active_vm_state_clusters(f->path), 0);

    /* the snapshots kept their states: nothing was dropped but the copy */
    revert(f->bs, "s1");
    assert_int_equal(load(f->bs, s1, &err), 0);
    check_ram(rb, 1);
    revert(f->bs, "s2");
    assert_int_equal(load(f->bs, s2, &err), 0);
    check_ram(rb, 2);
    /* a load maps the snapshot's state again (QEMU's goto does too) */
    assert_true(active_vm_state_clusters(f->path) > 0);
}

static void test_no_blocks(void **state)
{
    Fixture *f = *state;
    GError *err = NULL;
    int64_t size = save(f->bs, &err);
    assert_int_equal(size, 64);
    assert_int_equal(load(f->bs, size, &err), 0);
}

static void test_unknown_block(void **state)
{
    Fixture *f = *state;
    GError *err = NULL;
    RamBlock *a = add_block("ram0", 16, 1);
    RamBlock *b = add_block("gone", 16, 2);
    int64_t size = save(f->bs, &err);
    assert_true(size > 0);

    munmap(b->host, b->size);
    ram_block_unregister(b);
    memset(a->host, 0xaa, a->size);
    assert_int_equal(load(f->bs, size, &err), -EINVAL);
    assert_string_equal(err->message,
                        "Unknown ramblock \"gone\", cannot accept migration");
    g_clear_error(&err);
    /* Nothing changed before the refusal. */
    for (size_t i = 0; i < a->size; i++) {
        assert_int_equal(a->host[i], 0xaa);
    }
}

static void test_length_mismatch(void **state)
{
    Fixture *f = *state;
    GError *err = NULL;
    RamBlock *a = add_block("ram0", 16, 1);
    int64_t size = save(f->bs, &err);
    munmap(a->host, a->size);
    ram_block_unregister(a);
    add_block("ram0", 8, 1);
    assert_int_equal(load(f->bs, size, &err), -EINVAL);
    assert_string_equal(err->message, "Length mismatch: ram0: 0x10000 in != "
                        "0x8000: Invalid argument");
    g_clear_error(&err);
}

typedef struct AreaIO {
    BlockNode *bs;
    int64_t pos;
    IOVec v;
    bool write;
    int ret;
} AreaIO;

static void coroutine_fn area_io_co(void *opaque)
{
    AreaIO *x = opaque;
    x->ret = x->write ? node_co_save_vmstate(x->bs, &x->v, x->pos)
                      : node_co_load_vmstate(x->bs, &x->v, x->pos);
}

static void area_io(BlockNode *bs, int64_t pos, void *buf, size_t len,
                    bool write)
{
    AreaIO x = { .bs = bs, .pos = pos, .write = write };
    iovec_init_buf(&x.v, buf, len);
    co_run_sync(area_io_co, &x);
    iovec_destroy(&x.v);
    assert_int_equal(x.ret, 0);
}

static void put(BlockNode *bs, int64_t pos, const void *buf, size_t len)
{
    area_io(bs, pos, (void *)buf, len, true);
}

static void test_damaged(void **state)
{
    Fixture *f = *state;
    GError *err = NULL;
    add_block("ram0", 16, 1);
    int64_t size = save(f->bs, &err);

    /* A size beyond what the snapshot recorded. */
    assert_int_equal(load(f->bs, 63, &err), -EINVAL);
    assert_non_null(strstr(err->message, "not one strata saved"));
    g_clear_error(&err);

    /* Version (1 and 2 are known: test_old_layout). */
    uint8_t v3[4] = { 0, 0, 0, 3 };
    put(f->bs, 8, v3, 4);
    assert_int_equal(load(f->bs, size, &err), -EINVAL);
    assert_string_equal(err->message, "Unsupported VM state version 3");
    g_clear_error(&err);
    uint8_t v2[4] = { 0, 0, 0, 2 };
    put(f->bs, 8, v2, 4);

    /* A block count the state cannot hold. */
    uint8_t many[4] = { 0x7f, 0xff, 0xff, 0xff };
    put(f->bs, 12, many, 4);
    assert_int_equal(load(f->bs, size, &err), -EINVAL);
    assert_non_null(strstr(err->message, "header is damaged"));
    g_clear_error(&err);
    uint8_t one[4] = { 0, 0, 0, 1 };
    put(f->bs, 12, one, 4);

    /* A page region past the end. */
    uint8_t far[8] = { 0x7f, 0, 0, 0, 0, 0, 0, 0 };
    put(f->bs, 64 + 16, far, 8);
    assert_int_equal(load(f->bs, size, &err), -EINVAL);
    assert_string_equal(err->message,
                        "The VM state's block descriptors are damaged");
    g_clear_error(&err);
}

/* The parser alone, on every truncation of a good state's head. */
static void test_parse_truncated(void **state)
{
    Fixture *f = *state;
    GError *err = NULL;
    add_block("ram0", 16, 1);
    add_block("ram1", 4, 2);
    int64_t size = save(f->bs, &err);
    uint8_t head[256];
    area_io(f->bs, 0, head, sizeof(head), false);
    VmstateRamLayout *l = vmstate_ram_parse(head, sizeof(head), size, &err);
    assert_non_null(l);
    assert_int_equal(l->nblocks, 2);
    assert_string_equal(l->blocks[1].id, "ram1");
    vmstate_ram_layout_free(l);
    for (size_t len = 0; len < 64 + 40 + 40 - 1; len++) {
        l = vmstate_ram_parse(head, len, size, &err);
        assert_null(l);
        assert_non_null(err);
        g_clear_error(&err);
    }
}

/*
 * A header that claims 2^32-1 blocks in a 1 TiB area, in a buffer of 85
 * bytes: refused before anything is allocated for the blocks (it allocated
 * for all of them: 640 MB for the fuzzer's input, an abort here).
 */
static void test_parse_count_beyond_buffer(void **state)
{
    Fixture *f = *state;
    GError *err = NULL;
    add_block("ram0", 16, 1);
    int64_t size = save(f->bs, &err);
    assert_true(size > 0);
    uint8_t head[85];
    area_io(f->bs, 0, head, sizeof(head), false);
    const int64_t area = (int64_t)1 << 40;
    memset(head + 12, 0xff, 4);                 /* blocks */
    for (int i = 0; i < 8; i++) {               /* bytes: the whole area */
        head[16 + i] = (uint8_t)((uint64_t)area >> (56 - 8 * i));
    }
    VmstateRamLayout *l = vmstate_ram_parse(head, sizeof(head), area, &err);
    assert_null(l);
    assert_string_equal(err->message,
                        "The VM state's block descriptors are damaged");
    g_clear_error(&err);
}

/* ---- Device state streams after the RAM (vmstate-devices.c) ---- */

static uint8_t gen(int seed, uint64_t i)
{
    return (uint8_t)(i * 131 + (uint64_t)seed * 7 + (i >> 12));
}

/* A back end handing its state over: size bytes (gen or raw), then EOF. */
typedef struct Feeder {
    int fd;
    uint64_t size;
    int seed;
    const uint8_t *raw;
    GThread *thread;
} Feeder;

static gpointer feed_run(gpointer p)
{
    Feeder *f = p;
    uint8_t *buf = g_malloc(65536);
    uint64_t done = 0;

    while (done < f->size) {
        size_t n = MIN(65536, f->size - done);
        for (size_t k = 0; k < n; k++) {
            buf[k] = f->raw ? f->raw[done + k] : gen(f->seed, done + k);
        }
        for (size_t w = 0; w < n;) {
            ssize_t r = write(f->fd, buf + w, n - w);
            if (r <= 0) {
                goto out;
            }
            w += (size_t)r;
        }
        done += n;
    }
out:
    close(f->fd);
    g_free(buf);
    return NULL;
}

static DsStream *add_feeder(DsSet *set, const char *id, Feeder *f,
                            uint64_t size, int seed, const uint8_t *raw)
{
    int p[2];
    assert_int_equal(pipe2(p, O_CLOEXEC), 0);
    f->fd = p[1];
    f->size = size;
    f->seed = seed;
    f->raw = raw;
    f->thread = g_thread_new("feeder", feed_run, f);
    return ds_set_add(set, id, p[0], raw != NULL);
}

/* A back end getting its state back: counts and compares until EOF (or
 * closes after close_after bytes, as a back end that dies). */
typedef struct Drain {
    int fd;
    int seed;
    const uint8_t *raw;
    uint64_t close_after;           /* 0: never */
    uint64_t got;
    bool same;
    GThread *thread;
} Drain;

static gpointer drain_run(gpointer p)
{
    Drain *d = p;
    uint8_t *buf = g_malloc(65536);

    d->same = true;
    for (;;) {
        ssize_t r = read(d->fd, buf, 65536);
        if (r <= 0) {
            break;
        }
        for (ssize_t k = 0; k < r; k++) {
            uint8_t want = d->raw ? d->raw[d->got + k]
                                  : gen(d->seed, d->got + k);
            d->same &= buf[k] == want;
        }
        d->got += (uint64_t)r;
        if (d->close_after && d->got >= d->close_after) {
            break;
        }
    }
    close(d->fd);
    g_free(buf);
    return NULL;
}

static DsStream *add_drain(DsSet *set, const char *id, Drain *d, int seed,
                           const uint8_t *raw)
{
    int p[2];
    assert_int_equal(pipe2(p, O_CLOEXEC), 0);
    d->fd = p[0];
    d->seed = seed;
    d->raw = raw;
    d->thread = g_thread_new("drain", drain_run, d);
    return ds_set_add(set, id, p[1], raw != NULL);
}

/* The borrowed descriptors a save or load left open, then the set. */
static void set_free(DsSet *set)
{
    for (unsigned i = 0; i < ds_set_count(set); i++) {
        DsStream *st = ds_set_get(set, i);
        if (st->fd >= 0) {
            close(st->fd);
            st->fd = -1;
        }
    }
    ds_set_free(set);
}

static int64_t save_devs(BlockNode *bs, DsSet *devs, GError **errp)
{
    Call c = { .bs = bs, .save = true, .devs = devs };
    co_run_sync(call_co, &c);
    if (c.err) {
        g_propagate_error(errp, c.err);
    }
    return c.ret;
}

static int load_devs(BlockNode *bs, int64_t size, DsSet *devs,
                     bool *about, GError **errp)
{
    Call c = { .bs = bs, .size = size, .devs = devs };
    co_run_sync(call_co, &c);
    *about = c.about_devices;
    if (c.err) {
        g_propagate_error(errp, c.err);
    }
    return (int)c.ret;
}

/* An iterative back end's bytes: three rounds (the last one empty). */
static uint8_t *rounds_raw(size_t *len)
{
    static const uint32_t recs[] = { 5, 3000, 0, 1, 0, 0 };
    GByteArray *b = g_byte_array_new();
    for (size_t i = 0; i < G_N_ELEMENTS(recs); i++) {
        uint32_t be = GUINT32_TO_BE(recs[i]);
        g_byte_array_append(b, (const guint8 *)&be, 4);
        for (uint32_t k = 0; k < recs[i]; k++) {
            uint8_t v = (uint8_t)(i * 17 + k);
            g_byte_array_append(b, &v, 1);
        }
    }
    *len = b->len;
    return g_byte_array_free(b, false);
}

typedef struct MemState {
    uint8_t *buf;
    size_t len;
} MemState;

static int mem_read(void *opaque, void *buf, size_t len, uint64_t pos)
{
    MemState *m = opaque;
    if (pos > m->len || len > m->len - pos) {
        return -EIO;
    }
    memcpy(buf, m->buf + pos, len);
    return 0;
}

/* The state as the area holds it (size bytes). */
static MemState read_state(BlockNode *bs, int64_t size)
{
    MemState m = { g_malloc((size_t)size), (size_t)size };
    area_io(bs, 0, m.buf, m.len, false);
    return m;
}

static uint64_t be64_at(const uint8_t *p)
{
    uint64_t v = 0;
    for (int i = 0; i < 8; i++) {
        v = v << 8 | p[i];
    }
    return v;
}

#define BIG (3 * MiB + 5)

/*
 * Streams of 0 B, 1 B, 3 MiB + 5 (four chunks) and an iterative one
 * after a RAM block: every byte back, in the streams' order; the parser
 * finds them as they were saved.
 */
static void test_devices_roundtrip(void **state)
{
    Fixture *f = *state;
    GError *err = NULL;
    RamBlock *a = add_block("ram0", 64, 1);
    size_t raw_len;
    g_autofree uint8_t *raw = rounds_raw(&raw_len);
    static const char *ids[] = { "empty", "one", "big", "fs0" };
    const uint64_t sizes[] = { 0, 1, BIG, raw_len };
    Feeder feed[4] = { 0 };
    DsSet *set = ds_set_new();

    for (int i = 0; i < 4; i++) {
        add_feeder(set, ids[i], &feed[i], sizes[i], i + 5,
                   i == 3 ? raw : NULL);
    }
    int64_t size = save_devs(f->bs, set, &err);
    assert_null(err);
    assert_true(size > (int64_t)(a->size + BIG + raw_len));
    for (int i = 0; i < 4; i++) {
        g_thread_join(feed[i].thread);
        DsStream *st = ds_set_get(set, i);
        assert_int_equal(atomic_load(&st->outcome), DS_DONE);
        assert_int_equal(atomic_load(&st->bytes), sizes[i]);
    }
    assert_int_equal(atomic_load(&ds_set_get(set, 3)->rounds), 3);
    set_free(set);

    /* The parser on the state as stored. */
    MemState m = read_state(f->bs, size);
    VmstateRamLayout *l = vmstate_ram_parse(m.buf, 4096, size, &err);
    assert_non_null(l);
    assert_int_equal(l->version, 2);
    assert_int_equal(l->ndev, 4);
    GPtrArray *descs = vmstate_dev_parse(mem_read, &m, l->dev_offset,
                                         l->size, l->ndev, NULL, NULL, &err);
    assert_non_null(descs);
    for (int i = 0; i < 4; i++) {
        VmstateDevDesc *d = descs->pdata[i];
        assert_string_equal(d->id, ids[i]);
        assert_int_equal(d->bytes, sizes[i]);
        assert_int_equal(d->iterative, i == 3);
    }
    assert_int_equal(((VmstateDevDesc *)descs->pdata[3])->rounds, 3);
    g_ptr_array_free(descs, true);
    vmstate_ram_layout_free(l);
    g_free(m.buf);

    /* Back, into RAM that changed and back ends that wait for it. */
    memset(a->host, 0xaa, a->size);
    Drain drain[4] = { 0 };
    set = ds_set_new();
    for (int i = 3; i >= 0; i--) {      /* registered in another order */
        add_drain(set, ids[i], &drain[i], i + 5, i == 3 ? raw : NULL);
    }
    bool about;
    assert_int_equal(load_devs(f->bs, size, set, &about, &err), 0);
    assert_null(err);
    check_ram(a, 1);
    for (int i = 0; i < 4; i++) {
        g_thread_join(drain[i].thread);
        assert_int_equal(drain[i].got, sizes[i]);
        assert_true(drain[i].same);
        DsStream *st = ds_set_get(set, 3 - i);
        assert_int_equal(atomic_load(&st->outcome), DS_DONE);
        assert_int_equal(st->fd, -1);   /* closed: the back end saw EOF */
    }
    set_free(set);
}

/*
 * A state the writer before device state (layout version 1) wrote: its
 * head and bitmaps as that code wrote them for ram0 (4 pages, pattern 1)
 * and ram1 (3 pages, pattern 2), dumped from it.  It loads; a registered
 * stream is left alone (DS_NOT_IN_FILE).
 */
static const struct { uint16_t off; uint8_t v; } v1_head[] = {
    { 0, 0x53 }, { 1, 0x54 }, { 2, 0x52 }, { 3, 0x41 }, { 4, 0x54 },
    { 5, 0x41 }, { 6, 0x56 }, { 7, 0x4d }, { 11, 0x01 }, { 15, 0x02 },
    { 21, 0x20 }, { 22, 0x30 }, { 31, 0x40 }, { 70, 0x40 }, { 78, 0x10 },
    { 85, 0x10 }, { 90, 0x10 }, { 93, 0x04 }, { 96, 0x72 }, { 97, 0x61 },
    { 98, 0x6d }, { 99, 0x30 }, { 110, 0x30 }, { 118, 0x20 },
    { 125, 0x20 }, { 130, 0x10 }, { 133, 0x04 }, { 136, 0x72 },
    { 137, 0x61 }, { 138, 0x6d }, { 139, 0x31 }, { 4096, 0x06 },
    { 8192, 0x06 },
};
#define V1_SIZE 2109440

static void test_old_layout(void **state)
{
    Fixture *f = *state;
    GError *err = NULL;
    RamBlock *r0 = add_block("ram0", 4, 1);
    RamBlock *r1 = add_block("ram1", 3, 2);
    uint8_t *head = g_malloc0(8193);

    for (size_t i = 0; i < G_N_ELEMENTS(v1_head); i++) {
        head[v1_head[i].off] = v1_head[i].v;
    }
    put(f->bs, 0, head, 8193);
    g_free(head);
    /* the stored pages (1 and 2 of each), where version 1 put them */
    put(f->bs, (1 << 20) + PAGE, r0->host + PAGE, 2 * PAGE);
    put(f->bs, (2 << 20) + PAGE, r1->host + PAGE, 2 * PAGE);
    memset(r0->host, 0xaa, r0->size);
    memset(r1->host, 0x55, r1->size);

    Drain d = { 0 };
    DsSet *set = ds_set_new();
    DsStream *st = add_drain(set, "dev0", &d, 1, NULL);
    bool about;
    assert_int_equal(load_devs(f->bs, V1_SIZE, set, &about, &err), 0);
    assert_null(err);
    check_ram(r0, 1);
    check_ram(r1, 2);
    assert_int_equal(atomic_load(&st->outcome), DS_NOT_IN_FILE);
    assert_true(st->fd >= 0);
    set_free(set);                      /* the back end sees EOF now */
    g_thread_join(d.thread);
    assert_int_equal(d.got, 0);

    /* a load with no streams at all, too */
    memset(r0->host, 0xaa, r0->size);
    assert_int_equal(load_devs(f->bs, V1_SIZE, NULL, &about, &err), 0);
    check_ram(r0, 1);
}

static void ram_is(RamBlock *rb, uint8_t v)
{
    for (size_t i = 0; i < rb->size; i++) {
        if (rb->host[i] != v) {
            fail_msg("%s: byte %zu is 0x%02x, not 0x%02x", rb->id, i,
                     rb->host[i], v);
        }
    }
}

/* A refused load: RAM as it was, no back end got a byte or lost its fd. */
static void refused(Fixture *f, int64_t size, RamBlock *a, bool both,
                    const char *want)
{
    GError *err = NULL;
    Drain d[2] = { 0 };
    DsSet *set = ds_set_new();
    add_drain(set, "dev0", &d[0], 5, NULL);
    if (both) {
        add_drain(set, "dev1", &d[1], 6, NULL);
    }
    memset(a->host, 0xaa, a->size);
    bool about;
    assert_int_equal(load_devs(f->bs, size, set, &about, &err), -EINVAL);
    assert_true(about);
    if (!strstr(err->message, want)) {
        fail_msg("error '%s' lacks '%s'", err->message, want);
    }
    g_clear_error(&err);
    ram_is(a, 0xaa);
    for (unsigned i = 0; i < ds_set_count(set); i++) {
        DsStream *st = ds_set_get(set, i);
        assert_int_equal(atomic_load(&st->outcome), DS_PENDING);
        assert_true(st->fd >= 0);
    }
    set_free(set);
    for (int i = 0; i < (both ? 2 : 1); i++) {
        g_thread_join(d[i].thread);
        assert_int_equal(d[i].got, 0);
    }
}

/*
 * Device sections that are damaged, cut short or without a back end:
 * refused before guest memory or any back end is touched.
 */
static void test_device_refused(void **state)
{
    Fixture *f = *state;
    GError *err = NULL;
    RamBlock *a = add_block("ram0", 16, 1);
    Feeder feed[2] = { 0 };
    DsSet *set = ds_set_new();
    add_feeder(set, "dev0", &feed[0], 300, 5, NULL);
    add_feeder(set, "dev1", &feed[1], 10, 6, NULL);
    int64_t size = save_devs(f->bs, set, &err);
    assert_null(err);
    g_thread_join(feed[0].thread);
    g_thread_join(feed[1].thread);
    set_free(set);
    uint8_t h[64];
    area_io(f->bs, 0, h, sizeof(h), false);
    uint64_t dev_off = be64_at(h + 32);
    /* dev0's section: 8 + 4 (id), 4 (length), 300 bytes, 0, CRC */
    uint64_t data0 = dev_off + 12 + 4;

    refused(f, size, a, false, "device state 'dev1', and no back end is "
            "registered for it");

    uint8_t byte;
    area_io(f->bs, (int64_t)data0 + 100, &byte, 1, false);
    uint8_t flipped = byte ^ 0x10;
    put(f->bs, (int64_t)data0 + 100, &flipped, 1);
    refused(f, size, a, true, "device state 'dev0' is damaged: its CRC-32");
    put(f->bs, (int64_t)data0 + 100, &byte, 1);

    uint8_t three[4] = { 0, 0, 0, 3 };
    put(f->bs, 40, three, 4);
    refused(f, size, a, true, "device state section 3");
    uint8_t two[4] = { 0, 0, 0, 2 };
    put(f->bs, 40, two, 4);

    /* Cut anywhere (the header's size with it): never accepted. */
    MemState m = read_state(f->bs, size);
    for (uint64_t end = dev_off; end < (uint64_t)size; end++) {
        GPtrArray *d = vmstate_dev_parse(mem_read, &m, dev_off, end, 2, NULL,
                                         NULL, &err);
        assert_null(d);
        assert_non_null(err);
        g_clear_error(&err);
    }
    /* Every byte of the device part flipped: refused. */
    for (uint64_t pos = dev_off; pos < (uint64_t)size; pos++) {
        m.buf[pos] ^= 0x01;
        GPtrArray *d = vmstate_dev_parse(mem_read, &m, dev_off, size, 2, NULL,
                                         NULL, &err);
        if (d) {
            fail_msg("a flipped bit at %llu accepted",
                     (unsigned long long)(pos - dev_off));
        }
        g_clear_error(&err);
        m.buf[pos] ^= 0x01;
    }
    GPtrArray *d = vmstate_dev_parse(mem_read, &m, dev_off, size, 2, NULL,
                                     NULL, &err);
    assert_non_null(d);
    g_ptr_array_free(d, true);
    g_free(m.buf);

    /* and the state still loads whole */
    Drain back[2] = { 0 };
    set = ds_set_new();
    add_drain(set, "dev0", &back[0], 5, NULL);
    add_drain(set, "dev1", &back[1], 6, NULL);
    bool about;
    assert_int_equal(load_devs(f->bs, size, set, &about, &err), 0);
    check_ram(a, 1);
    set_free(set);
    for (int i = 0; i < 2; i++) {
        g_thread_join(back[i].thread);
        assert_true(back[i].same);
    }
    assert_int_equal(back[0].got, 300);
    assert_int_equal(back[1].got, 10);
}

/*
 * A back end that stops reading (EPIPE) in the middle of its state: the
 * load fails after the RAM, and the error says what each stream got.
 */
static void test_load_backend_dies(void **state)
{
    Fixture *f = *state;
    GError *err = NULL;
    RamBlock *a = add_block("ram0", 16, 1);
    static const char *ids[] = { "a", "b", "c" };
    const uint64_t sizes[] = { 1000, 2 * MiB, 5 };
    Feeder feed[3] = { 0 };
    DsSet *set = ds_set_new();
    for (int i = 0; i < 3; i++) {
        add_feeder(set, ids[i], &feed[i], sizes[i], i, NULL);
    }
    int64_t size = save_devs(f->bs, set, &err);
    assert_null(err);
    for (int i = 0; i < 3; i++) {
        g_thread_join(feed[i].thread);
    }
    set_free(set);

    memset(a->host, 0xaa, a->size);
    Drain d[3] = { 0 };
    d[1].close_after = 100 * 1024;
    set = ds_set_new();
    for (int i = 0; i < 3; i++) {
        add_drain(set, ids[i], &d[i], i, NULL);
    }
    /* registered, not in the state: the load failed, so it is not said
     * to be absent (no warning); it stays as it was */
    int spare[2];
    assert_int_equal(pipe2(spare, O_CLOEXEC), 0);
    DsStream *absent = ds_set_add(set, "absent", spare[1], false);
    bool about;
    assert_int_equal(load_devs(f->bs, size, set, &about, &err), -EPIPE);
    assert_int_equal(atomic_load(&absent->outcome), DS_PENDING);
    close(spare[0]);
    assert_true(about);
    assert_string_equal(err->message,
                        "Could not hand device state 'b' back to its back "
                        "end: Broken pipe; the guest RAM is the VM state's; "
                        "handed back: 'a'; 'b' only in part (its descriptor "
                        "closed); not handed back (still registered): 'c'");
    g_clear_error(&err);
    check_ram(a, 1);
    assert_int_equal(atomic_load(&ds_set_get(set, 0)->outcome), DS_DONE);
    assert_int_equal(atomic_load(&ds_set_get(set, 1)->outcome), DS_FAILED);
    assert_int_equal(ds_set_get(set, 1)->fd, -1);
    assert_int_equal(atomic_load(&ds_set_get(set, 2)->outcome), DS_PENDING);
    assert_true(ds_set_get(set, 2)->fd >= 0);
    set_free(set);
    for (int i = 0; i < 3; i++) {
        g_thread_join(d[i].thread);
    }
    assert_int_equal(d[0].got, 1000);
    assert_true(d[0].same && d[1].same);
    assert_int_equal(d[2].got, 0);
}

/*
 * Back ends failing a save: one closing inside a round, one whose socket
 * is reset.  The save fails, the stream is DS_FAILED, the ones before it
 * done, and no header names a state (the area's head is not "STRATAVM").
 */
static void test_save_backend_fails(void **state)
{
    Fixture *f = *state;
    GError *err = NULL;
    add_block("ram0", 4, 1);

    /* a record of 100 bytes announced, 10 sent, EOF */
    uint8_t half[14] = { 0, 0, 0, 100 };
    memset(half + 4, 7, 10);
    Feeder feed[2] = { 0 };
    DsSet *set = ds_set_new();
    add_feeder(set, "ok", &feed[0], 5000, 1, NULL);
    add_feeder(set, "fs0", &feed[1], sizeof(half), 0, half);
    assert_true(save_devs(f->bs, set, &err) < 0);
    assert_string_equal(err->message, "Device state 'fs0': the back end "
                        "closed its stream inside a round");
    g_clear_error(&err);
    assert_int_equal(atomic_load(&ds_set_get(set, 0)->outcome), DS_DONE);
    assert_int_equal(atomic_load(&ds_set_get(set, 1)->outcome), DS_FAILED);
    g_thread_join(feed[0].thread);
    g_thread_join(feed[1].thread);
    set_free(set);
    uint8_t magic[8];
    area_io(f->bs, 0, magic, 8, false);
    assert_false(memcmp(magic, "STRATAVM", 8) == 0);

    /* a socket reset under the read: the peer closes with data unread */
    int sv[2];
    assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv),
                     0);
    assert_int_equal(write(sv[0], "x", 1), 1);  /* unread by sv[1] */
    assert_int_equal(write(sv[1], "state", 5), 5);
    close(sv[1]);
    set = ds_set_new();
    ds_set_add(set, "sock", sv[0], false);
    assert_true(save_devs(f->bs, set, &err) < 0);
    assert_string_equal(err->message, "Could not read device state 'sock': "
                        "Connection reset by peer");
    g_clear_error(&err);
    assert_int_equal(atomic_load(&ds_set_get(set, 0)->outcome), DS_FAILED);
    set_free(set);
}

/* A reader over a state in memory that counts its calls. */
typedef struct Counted {
    MemState m;
    unsigned reads;
} Counted;

static int counted_read(void *opaque, void *buf, size_t len, uint64_t pos)
{
    Counted *c = opaque;
    c->reads++;
    return mem_read(&c->m, buf, len, pos);
}

/* n sections of no data, ids d0, d1, ... (the last one's id @last). */
static MemState tiny_sections(unsigned n, const char *last)
{
    GByteArray *b = g_byte_array_new();
    for (unsigned i = 0; i < n; i++) {
        char id[32];
        int l = i + 1 == n && last ? snprintf(id, sizeof(id), "%s", last)
                                   : snprintf(id, sizeof(id), "d%u", i);
        uint8_t s[16 + 32];
        s[0] = 0x53; s[1] = 0x44; s[2] = 0x45; s[3] = 0x56;
        s[4] = 0; s[5] = (uint8_t)l; s[6] = 0; s[7] = 0;
        memcpy(s + 8, id, (size_t)l);
        memset(s + 8 + l, 0, 4);
        uint32_t crc = (uint32_t)crc32(0, s, (uInt)(12 + l));
        for (int k = 0; k < 4; k++) {
            s[12 + l + k] = (uint8_t)(crc >> (24 - 8 * k));
        }
        g_byte_array_append(b, s, (guint)(16 + l));
    }
    MemState m = { .len = b->len };
    m.buf = g_byte_array_free(b, false);
    return m;
}

/*
 * 100000 tiny sections and two back ends: refused at once, the message
 * naming a few streams without one, after reading a handful of sections
 * (each stream needs a back end: a load of this state can never work).
 * The same state parsed without a bound (a hash, not a scan per id)
 * still finds every section, and a duplicate at its very end.
 */
static void test_device_many_sections(void **state)
{
    enum { N = 100000 };
    GError *err = NULL;
    Counted c = { tiny_sections(N, NULL), 0 };
    DsSet *two = ds_set_new();
    ds_set_add(two, "d0", -1, false);
    ds_set_add(two, "d1", -1, false);

    GPtrArray *d = vmstate_dev_parse(counted_read, &c, 0, c.m.len, N, two,
                                     NULL, &err);
    assert_null(d);
    assert_string_equal(err->message, "The VM state holds 100000 device "
                        "states, more than the 2 back ends registered "
                        "(x-strata-device-state-add); none for 'd2', 'd3', "
                        "'d4' and at least 99995 more; guest RAM and every "
                        "back end untouched");
    g_clear_error(&err);
    /* 5 sections, 3 reads each */
    assert_true(c.reads <= 5 * 3);

    c.reads = 0;
    d = vmstate_dev_parse(counted_read, &c, 0, c.m.len, N, NULL, NULL, &err);
    assert_non_null(d);
    assert_int_equal(d->len, N);
    g_ptr_array_free(d, true);
    g_free(c.m.buf);

    c.m = tiny_sections(N, "d7");
    d = vmstate_dev_parse(counted_read, &c, 0, c.m.len, N, NULL, NULL, &err);
    assert_null(d);
    assert_string_equal(err->message, "The VM state has device state 'd7' "
                        "twice");
    g_clear_error(&err);

    /* a cancelled load stops the walk before the next section */
    atomic_bool cancel = true;
    c.reads = 0;
    d = vmstate_dev_parse(counted_read, &c, 0, c.m.len, N, NULL, &cancel,
                          &err);
    assert_null(d);
    assert_non_null(strstr(err->message, "cancelled"));
    assert_int_equal(c.reads, 0);
    g_clear_error(&err);
    g_free(c.m.buf);
    ds_set_free(two);
}

/*
 * Five streams in the state, five back ends of other ids: the message
 * names three and counts the rest.
 */
static void test_device_match_names_few(void **state)
{
    GError *err = NULL;
    MemState m = tiny_sections(5, NULL);
    DsSet *five = ds_set_new();
    for (int i = 0; i < 5; i++) {
        char id[8];
        snprintf(id, sizeof(id), "x%d", i);
        ds_set_add(five, id, -1, false);
    }
    GPtrArray *d = vmstate_dev_parse(mem_read, &m, 0, m.len, 5, five, NULL,
                                     &err);
    assert_non_null(d);
    assert_false(vmstate_dev_match(d, five, &err));
    assert_string_equal(err->message, "The VM state holds device state "
                        "'d0', 'd1', 'd2' and 2 more, and no back end is "
                        "registered for them (x-strata-device-state-add); "
                        "guest RAM and every back end untouched");
    g_clear_error(&err);
    g_ptr_array_free(d, true);
    ds_set_free(five);
    g_free(m.buf);
}

typedef struct Canceller {
    atomic_bool cancel;
    DsStream *st;
    uint64_t bytes_seen;            /* the stream's bytes when cancelled */
    int flags_seen;                 /* the back end's descriptor's, then */
} Canceller;

static gpointer cancel_later(gpointer p)
{
    Canceller *c = p;
    g_usleep(300 * 1000);
    c->bytes_seen = atomic_load(&c->st->bytes);
    c->flags_seen = fcntl(c->st->fd, F_GETFL);
    atomic_store(&c->cancel, true);
    return NULL;
}

/*
 * A back end that never reads what a load hands it (its pipe's read end
 * open, nothing read): job-cancel ends the load, which never blocks in a
 * write; the bytes the pipe took are counted as they went.
 */
static void test_load_backend_stalls(void **state)
{
    Fixture *f = *state;
    GError *err = NULL;
    add_block("ram0", 16, 1);
    Feeder feed = { 0 };
    DsSet *set = ds_set_new();
    add_feeder(set, "dev", &feed, 2 * MiB, 3, NULL);
    int64_t size = save_devs(f->bs, set, &err);
    assert_null(err);
    g_thread_join(feed.thread);
    set_free(set);

    int p[2];
    assert_int_equal(pipe2(p, O_CLOEXEC), 0);
    set = ds_set_new();
    Canceller c = { .st = ds_set_add(set, "dev", p[1], false) };
    GThread *t = g_thread_new("cancel", cancel_later, &c);
    Call call = { .bs = f->bs, .size = size, .devs = set,
                  .cancel = &c.cancel };
    co_run_sync(call_co, &call);
    g_thread_join(t);
    assert_int_equal(call.ret, -ECANCELED);
    assert_non_null(strstr(call.err->message, "the load was cancelled"));
    g_clear_error(&call.err);
    /* the pipe took what fits (64 KiB by default), counted at once */
    int cap = fcntl(p[0], F_GETPIPE_SZ);
    assert_true(c.bytes_seen > 0);
    assert_true(c.bytes_seen <= (uint64_t)cap);
    assert_int_equal(atomic_load(&c.st->bytes), c.bytes_seen);
    /* the description the back end passed stayed blocking: the daemon
     * wrote through one of its own */
    assert_true(c.flags_seen >= 0);
    assert_false(c.flags_seen & O_NONBLOCK);
    set_free(set);
    close(p[0]);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_roundtrip, setup, teardown),
        cmocka_unit_test_setup_teardown(test_resave_copies_nothing, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_no_blocks, setup, teardown),
        cmocka_unit_test_setup_teardown(test_unknown_block, setup, teardown),
        cmocka_unit_test_setup_teardown(test_length_mismatch, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_damaged, setup, teardown),
        cmocka_unit_test_setup_teardown(test_parse_truncated, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_parse_count_beyond_buffer,
                                        setup, teardown),
        cmocka_unit_test_setup_teardown(test_devices_roundtrip, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_old_layout, setup, teardown),
        cmocka_unit_test_setup_teardown(test_device_refused, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_load_backend_dies, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_save_backend_fails, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_device_many_sections, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_device_match_names_few, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_load_backend_stalls, setup,
                                        teardown),
    };
    /* a back end that stops reading must fail a write, not the test */
    signal(SIGPIPE, SIG_IGN);
    return cmocka_run_group_tests(tests, test_tmpdir_setup,
                                  test_tmpdir_teardown);
}
