/*
 * Guest RAM through a qcow2 node's VM state area (strata/vmstate-ram.h):
 * what is saved comes back byte for byte (zero pages included, which are
 * never written), a state naming a block that is missing or of another
 * size changes no memory, and damaged headers and descriptors are refused
 * with a message.
 */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>
#include <cmocka.h>
#include <glib.h>

#include "strata/backend.h"
#include "strata/block-ops.h"
#include "strata/coroutine.h"
#include "strata/iov.h"
#include "strata/ram-block.h"
#include "strata/units.h"
#include "strata/vmstate-ram.h"
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
    bool about_devices;
    int64_t ret;
    GError *err;
} Call;

static void coroutine_fn call_co(void *opaque)
{
    Call *c = opaque;
    c->ret = c->save ? vmstate_ram_save(c->bs, c->devs, NULL, &c->err)
                     : vmstate_ram_load(c->bs, c->size, c->devs, NULL,
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

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_roundtrip, setup, teardown),
        cmocka_unit_test_setup_teardown(test_no_blocks, setup, teardown),
        cmocka_unit_test_setup_teardown(test_unknown_block, setup, teardown),
        cmocka_unit_test_setup_teardown(test_length_mismatch, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_damaged, setup, teardown),
        cmocka_unit_test_setup_teardown(test_parse_truncated, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_parse_count_beyond_buffer,
                                        setup, teardown),
    };
    return cmocka_run_group_tests(tests, test_tmpdir_setup,
                                  test_tmpdir_teardown);
}
