/*
 * Live saves (migration/live-save.c): when the pass loop stops iterating,
 * what a later pass does to pages written before (rewritten in place, or
 * zero now: bit cleared and bytes gone), and whole live saves whose
 * "guest" writes between passes, restored and compared.
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
#include <unistd.h>

#include <cmocka.h>

#include "live-save.h"

#define PAGE MR_PAGE_SIZE
#define MiB (1ull << 20)

/* ---- the stopping rule ---- */

static void plan_converges_within_the_limit(void **state)
{
    LivePlan p;

    live_plan_init(&p, 300);
    assert_int_equal(p.expected_ms, 300);
    /* 1 GiB in 2.1 s: 2 ns a byte; 200 MiB dirty would take 420 ms */
    assert_int_equal(live_plan_after_pass(&p, 1ull << 30, 2147483648,
                                          200 * MiB), LIVE_ITERATE);
    assert_int_equal(p.expected_ms, 420);
    /* 200 MiB in 0.5 s: 2.5 ns a byte; 100 MiB: 263 ms, within 300 */
    assert_int_equal(live_plan_after_pass(&p, 200 * MiB, 524288000,
                                          100 * MiB),
                     LIVE_SWITCHOVER_CONVERGED);
    assert_int_equal(p.expected_ms, 263);
    assert_int_equal(p.passes, 2);
}

/* The first pass writes in order: its cost a byte is not the last's. */
static void plan_never_trusts_the_first_pass(void **state)
{
    LivePlan p;

    live_plan_init(&p, 300);
    assert_int_equal(live_plan_after_pass(&p, 1ull << 30, 1000000000, MiB),
                     LIVE_ITERATE);
    assert_int_equal(p.expected_ms, 1);
    assert_int_equal(live_plan_after_pass(&p, MiB, 1000000, MiB / 2),
                     LIVE_SWITCHOVER_CONVERGED);
}

static void plan_nothing_dirty_switches_over(void **state)
{
    LivePlan p;

    live_plan_init(&p, 0);
    assert_int_equal(live_plan_after_pass(&p, 64 * MiB, 100000000, 0),
                     LIVE_SWITCHOVER_CONVERGED);
    assert_int_equal(p.expected_ms, 0);
}

static void plan_stops_when_not_shrinking(void **state)
{
    LivePlan p;

    live_plan_init(&p, 0);
    assert_int_equal(live_plan_after_pass(&p, 64 * MiB, 100000000, 8 * MiB),
                     LIVE_ITERATE);
    /* one pass that does not shrink is not enough to give up */
    assert_int_equal(live_plan_after_pass(&p, 8 * MiB, 100000000, 8 * MiB),
                     LIVE_ITERATE);
    /* shrinking again resets the count */
    assert_int_equal(live_plan_after_pass(&p, 8 * MiB, 100000000, 7 * MiB),
                     LIVE_ITERATE);
    assert_int_equal(live_plan_after_pass(&p, 7 * MiB, 100000000, 9 * MiB),
                     LIVE_ITERATE);
    assert_int_equal(live_plan_after_pass(&p, 9 * MiB, 100000000, 9 * MiB),
                     LIVE_SWITCHOVER_STALLED);
    assert_int_equal(p.passes, 5);
}

static void plan_caps_the_passes(void **state)
{
    LivePlan p;
    uint64_t dirty = 512 * MiB;
    LiveDecision d = LIVE_ITERATE;
    unsigned n = 0;

    live_plan_init(&p, 1);
    /* shrinking slowly, never within 1 ms */
    while (d == LIVE_ITERATE) {
        d = live_plan_after_pass(&p, dirty, 1000000000, dirty - MiB);
        dirty -= MiB;
        n++;
    }
    assert_int_equal(d, LIVE_SWITCHOVER_CAP);
    assert_int_equal(n, LIVE_MAX_PASSES);
}

/* ---- the pass writer ---- */

static char path[] = "/tmp/strata-test-live-save-XXXXXX";
/* the channels on O_DIRECT descriptors, with direct_io: writes in flight */
static bool direct;

typedef struct Target {
    MrTarget t;
    int fds[2];
} Target;

static void open_target(Target *f, unsigned chans)
{
    f->t.fd = open(path, O_RDWR | O_CREAT | O_TRUNC, 0600);
    assert_true(f->t.fd >= 0);
    for (unsigned i = 0; i < chans; i++) {
        f->fds[i] = open(path, O_WRONLY | (direct ? O_DIRECT : 0));
        assert_true(f->fds[i] >= 0);
    }
    f->t.chan_fds = f->fds;
    f->t.nb_chan = chans;
    f->t.offset = 0;
}

static void close_target(Target *f)
{
    close(f->t.fd);
    for (unsigned i = 0; i < f->t.nb_chan; i++) {
        close(f->fds[i]);
    }
}

static uint8_t *map_anon(uint64_t size)
{
    void *p = mmap(NULL, size, PROT_READ | PROT_WRITE,
                   MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    assert_true(p != MAP_FAILED);
    return p;
}

static void fill_page(uint8_t *p, uint64_t page, unsigned gen)
{
    for (unsigned i = 0; i < PAGE; i += 8) {
        uint64_t v = page * 1000003u + gen * 7919u + i + 1;
        memcpy(p + i, &v, 8);
    }
}

static bool bit(const unsigned long *bm, uint64_t i)
{
    return (bm[i / (8 * sizeof(long))] >> (i % (8 * sizeof(long)))) & 1;
}

static void read_page(int fd, const MrBlock *b, uint64_t i, uint8_t *out)
{
    assert_int_equal(pread(fd, out, PAGE, (off_t)(b->pages_offset +
                                                  i * PAGE)), PAGE);
}

/*
 * Pass 1 stores every non-zero page; pass 2 gets pages that changed:
 * rewritten in place, zero now (bit cleared, bytes gone, whether alone or
 * inside a run), data where there was a hole.  The file keeps its size.
 */
static void pass_rewrites_in_place(void **state)
{
    const uint64_t pages = 2048;
    MrBlock b = { .id = (char *)"ram0", .used = pages * PAGE,
                  .host = map_anon(pages * PAGE) };
    uint64_t bm_bytes = mr_bitmap_bytes(pages);
    unsigned long *set = g_malloc0(bm_bytes), *stored = g_malloc0(bm_bytes);
    MrParams p = { .channels = 2, .direct_io = direct };
    MrStats st = { 0 };
    atomic_bool cancel = false;
    LivePassResult res;
    GError *err = NULL;
    Target f;
    uint8_t buf[PAGE];
    struct stat s1, s2;

    for (uint64_t i = 0; i < pages; i++) {
        if (i % 8 != 3) {
            fill_page(b.host + i * PAGE, i, 0);
        }
    }
    uint64_t end = mr_layout(&b, 1, 0);
    open_target(&f, 2);
    assert_int_equal(ftruncate(f.t.fd, (off_t)end), 0);
    memset(set, 0xff, bm_bytes);
    assert_true(live_write_pass(&f.t, &b, 1, &set, &stored, &p, false, &st,
                                &cancel, NULL, &res, &err));
    assert_null(err);
    assert_int_equal(res.pages, pages);
    assert_int_equal(res.written, pages - pages / 8);
    for (uint64_t i = 0; i < pages; i++) {
        assert_int_equal(bit(stored, i), i % 8 != 3);
    }
    assert_int_equal(fstat(f.t.fd, &s1), 0);

    /* what the guest did since */
    memset(set, 0, bm_bytes);
    uint64_t changed[] = { 10, 11, 12, 100, 400, 403, 1500, 1501, 1502 };
    memset(b.host + 10 * PAGE, 0, PAGE);        /* zero, inside a run */
    fill_page(b.host + 11 * PAGE, 11, 1);
    fill_page(b.host + 12 * PAGE, 12, 1);
    memset(b.host + 100 * PAGE, 0, PAGE);       /* zero, alone */
    fill_page(b.host + 400 * PAGE, 400, 1);
    fill_page(b.host + 403 * PAGE, 403, 1);     /* was a hole */
    memset(b.host + 1500 * PAGE, 0, 3 * PAGE);  /* a zero stretch */
    for (unsigned k = 0; k < G_N_ELEMENTS(changed); k++) {
        set[changed[k] / 64] |= 1ul << (changed[k] % 64);
    }
    /* a page written after its bit was taken would wait for the next pass:
     * one outside the set keeps what pass 1 stored */
    fill_page(b.host + 700 * PAGE, 700, 9);
    assert_true(live_write_pass(&f.t, &b, 1, &set, &stored, &p, false, &st,
                                &cancel, NULL, &res, &err));
    assert_null(err);
    assert_int_equal(res.pages, G_N_ELEMENTS(changed));
    assert_int_equal(res.zeroed, 5);
    assert_int_equal(res.written, 4);
    for (uint64_t i = 0; i < pages; i++) {
        bool zero = (i % 8 == 3 && i != 403 && i != 11) || i == 10 || i == 100 ||
                    (i >= 1500 && i <= 1502);
        if (bit(stored, i) == zero) {
            fail_msg("page %" PRIu64 ": bit %d", i, bit(stored, i));
        }
        read_page(f.t.fd, &b, i, buf);
        if (zero) {
            for (unsigned k = 0; k < PAGE; k++) {
                assert_int_equal(buf[k], 0);
            }
        } else if (i == 700) {
            uint8_t old[PAGE];
            fill_page(old, 700, 0);
            assert_memory_equal(buf, old, PAGE);
        } else {
            assert_memory_equal(buf, b.host + i * PAGE, PAGE);
        }
    }
    assert_int_equal(fstat(f.t.fd, &s2), 0);
    assert_int_equal(s1.st_size, s2.st_size);
    close_target(&f);
    unlink(path);
    g_free(set);
    g_free(stored);
    munmap(b.host, pages * PAGE);
}

/* ---- whole saves ---- */

typedef struct Guest {
    RamBlock *rb;
    uint8_t *host;
    uint64_t pages;
    unsigned passes_seen;
    uint64_t last_pass;
    bool cancel_at_switchover;
    bool paused;
} Guest;

/* Between passes the guest writes the same pages: it never converges. */
static void guest_pass(void *opaque, uint64_t n)
{
    Guest *g = opaque;
    GError *err = NULL;

    assert_int_equal(n, g->last_pass + 1);
    g->last_pass = n;
    g->passes_seen++;
    if (g->paused) {
        return;
    }
    for (uint64_t i = 5; i < 15; i++) {
        fill_page(g->host + i * PAGE, i, (unsigned)n + 10);
        assert_true(ram_block_mark_dirty(g->rb, i * PAGE, PAGE, &err));
    }
    /* a page that becomes zero, and one written once, late */
    memset(g->host + 40 * PAGE, 0, PAGE);
    assert_true(ram_block_mark_dirty(g->rb, 40 * PAGE, PAGE, &err));
}

static bool guest_switchover(void *opaque)
{
    Guest *g = opaque;
    GError *err = NULL;

    /* the last writes before the monitor pauses the vCPUs */
    fill_page(g->host + 60 * PAGE, 60, 77);
    memset(g->host + 61 * PAGE, 0, PAGE);
    assert_true(ram_block_mark_dirty(g->rb, 60 * PAGE, 2 * PAGE, &err));
    g->paused = true;
    return !g->cancel_at_switchover;
}

static void whole_save(bool cancel_at_switchover)
{
    const uint64_t pages = 4096;
    Guest g = { .pages = pages, .cancel_at_switchover = cancel_at_switchover,
                .last_pass = 1 };
    MrBlock b[2];
    RamBlock *ram[2];
    MrParams p = { .channels = 1, .direct_io = direct };
    MrStats st = { 0 };
    LiveStats live = { 0 };
    atomic_bool cancel = false;
    GError *err = NULL;
    Target f;

    g.host = map_anon(pages * PAGE);
    for (uint64_t i = 0; i < pages; i++) {
        if (i % 5) {
            fill_page(g.host + i * PAGE, i, 0);
        }
    }
    uint8_t *untracked = map_anon(64 * PAGE);
    fill_page(untracked + 3 * PAGE, 3, 4);
    g.rb = ram_block_register("ram0", g.host, pages * PAGE, PAGE, -1, NULL,
                              &err);
    assert_non_null(g.rb);
    assert_true(ram_block_set_private_dirty_log(g.rb, &err));
    assert_true(ram_block_log_start(g.rb, &err));
    ram[0] = g.rb;
    ram[1] = NULL;
    b[0] = (MrBlock){ .id = (char *)"ram0", .used = pages * PAGE,
                      .host = g.host };
    b[1] = (MrBlock){ .id = (char *)"vram", .used = 64 * PAGE,
                      .host = untracked };
    LiveHooks hooks = { .pass = guest_pass,
                        .wait_switchover = guest_switchover,
                        .opaque = &g };

    open_target(&f, 1);
    bool ok = live_save(&f.t, b, 2, ram, &p, 0, &hooks, &st, &live, &cancel,
                        &err);
    if (cancel_at_switchover) {
        assert_false(ok);
        assert_string_equal(err->message, "Migration was cancelled");
        g_error_free(err);
    } else {
        assert_true(ok);
        assert_null(err);
        /* dirty set constant: passes 1, 2, 3 then stalled; + the last */
        assert_int_equal(g.passes_seen, 4);
        assert_int_equal(atomic_load(&live.syncs), 5);
        assert_true(atomic_load(&live.precopy_bytes) > 0);
        assert_true(atomic_load(&st.transferred) >
                    atomic_load(&live.precopy_bytes));

        MrFileInfo *info = mr_file_parse(f.t.fd, 0, &err);
        assert_non_null(info);
        assert_true(info->reached_eof);
        uint8_t *dst[2] = { map_anon(pages * PAGE), map_anon(64 * PAGE) };
        memset(dst[0], 0xee, pages * PAGE);
        for (unsigned i = 0; i < 2; i++) {
            info->blocks[i].host = dst[i];
        }
        MrStats ls = { 0 };
        Target rd = { .t = { .fd = f.t.fd, .chan_fds = rd.fds, .nb_chan = 1 } };
        rd.fds[0] = open(path, O_RDONLY);
        assert_true(rd.fds[0] >= 0);
        ok = mr_load(&rd.t, info, &p, &ls, &cancel, &err);
        if (err) {
            print_message("%s\n", err->message);
        }
        assert_true(ok);
        close(rd.fds[0]);
        assert_memory_equal(dst[0], g.host, pages * PAGE);
        assert_memory_equal(dst[1], untracked, 64 * PAGE);
        mr_file_info_free(info);
        munmap(dst[0], pages * PAGE);
        munmap(dst[1], 64 * PAGE);
    }
    close_target(&f);
    unlink(path);
    ram_block_log_stop(g.rb);
    ram_block_clear_dirty_log(g.rb);
    ram_block_unregister(g.rb);
    munmap(g.host, pages * PAGE);
    munmap(untracked, 64 * PAGE);
}

static void save_restores_the_paused_ram(void **state)
{
    whole_save(false);
}

static void save_cancelled_at_switchover(void **state)
{
    whole_save(true);
}

/*
 * The same with direct-io: the passes' writes go through io_uring, 2 in
 * flight (so that a chunk's runs wait for free slots) and the default.
 */
static void passes_direct_io(void **state)
{
    (void)state;
    direct = true;
    setenv("STRATA_MIGRATION_PASS_DEPTH", "2", 1);
    pass_rewrites_in_place(NULL);
    whole_save(false);
    unsetenv("STRATA_MIGRATION_PASS_DEPTH");
    pass_rewrites_in_place(NULL);
    whole_save(false);
    whole_save(true);
    direct = false;
}

int main(void)
{
    int fd = mkstemp(path);
    if (fd < 0) {
        return 1;
    }
    close(fd);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(plan_converges_within_the_limit),
        cmocka_unit_test(plan_never_trusts_the_first_pass),
        cmocka_unit_test(plan_nothing_dirty_switches_over),
        cmocka_unit_test(plan_stops_when_not_shrinking),
        cmocka_unit_test(plan_caps_the_passes),
        cmocka_unit_test(pass_rewrites_in_place),
        cmocka_unit_test(save_restores_the_paused_ram),
        cmocka_unit_test(save_cancelled_at_switchover),
        cmocka_unit_test(passes_direct_io),
    };
    int rc = cmocka_run_group_tests(tests, NULL, NULL);
    unlink(path);
    return rc;
}
