/*
 * Dirty tracking of RAM blocks through the bitmap the VM monitor shares
 * (migration/ram-dirty.c): what a sync hands over, the size checks, the
 * errors, and setters in other threads racing with syncs (no lost bits,
 * no invented ones).
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <string.h>
#include <fcntl.h>
#include <sys/mman.h>
#include <unistd.h>
#include <cmocka.h>

#include <glib.h>

#include "strata/ram-block.h"

#define PAGE 4096

typedef struct {
    RamBlock *rb;
    void *guest;
    uint64_t pages;
    int logfd;
    uint64_t *log;          /* the monitor's view of the bitmap */
    size_t loglen;
} Fixture;

static void fixture_init(Fixture *f, uint64_t pages, size_t loglen)
{
    f->pages = pages;
    f->guest = mmap(NULL, pages * PAGE, PROT_READ | PROT_WRITE,
                    MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    assert_true(f->guest != MAP_FAILED);
    f->rb = ram_block_register("ram0", f->guest, pages * PAGE, PAGE, -1,
                               NULL, NULL);
    assert_non_null(f->rb);
    f->logfd = memfd_create("dirty-log", MFD_CLOEXEC);
    assert_true(f->logfd >= 0);
    assert_int_equal(ftruncate(f->logfd, (off_t)loglen), 0);
    f->loglen = loglen;
    f->log = mmap(NULL, loglen, PROT_READ | PROT_WRITE, MAP_SHARED,
                  f->logfd, 0);
    assert_true(f->log != MAP_FAILED);
}

static void fixture_fini(Fixture *f)
{
    ram_block_log_stop(f->rb);
    ram_block_clear_dirty_log(f->rb);
    ram_block_unregister(f->rb);
    munmap(f->log, f->loglen);
    close(f->logfd);
    munmap(f->guest, f->pages * PAGE);
}

static void mark(Fixture *f, uint64_t page)
{
    __atomic_fetch_or(&f->log[page / 64], 1ULL << (page % 64),
                      __ATOMIC_RELEASE);
}

static bool test_bit(const unsigned long *bm, uint64_t page)
{
    const unsigned lb = 8 * sizeof(unsigned long);
    return bm[page / lb] & (1UL << (page % lb));
}

static void test_sync(void **state)
{
    Fixture f;
    unsigned long bm[4] = { 0 };
    GError *err = NULL;

    /* 100 pages: two words, the second one partly past the block */
    fixture_init(&f, 100, 16);
    assert_true(ram_block_set_dirty_log(f.rb, f.logfd, &err));
    assert_true(ram_block_has_dirty_log(f.rb));
    assert_false(ram_block_logging(f.rb));

    mark(&f, 5);   /* before the start: the first pass covers it */
    assert_true(ram_block_log_start(f.rb, &err));
    assert_true(ram_block_logging(f.rb));
    assert_int_equal(ram_block_log_sync(f.rb, bm, &err), 0);
    assert_false(test_bit(bm, 5));

    mark(&f, 0);
    mark(&f, 63);
    mark(&f, 64);
    mark(&f, 99);
    f.log[1] |= 1ULL << (100 - 64);     /* past the block: ignored */
    f.log[1] |= 1ULL << 63;
    assert_int_equal(ram_block_log_sync(f.rb, bm, &err), 4);
    for (uint64_t p = 0; p < 100; p++) {
        assert_int_equal(test_bit(bm, p), p == 0 || p == 63 || p == 64 ||
                                          p == 99);
    }
    assert_false(test_bit(bm, 100));
    /* taken: the monitor's words are clear, a second sync adds nothing */
    assert_int_equal(f.log[0], 0);
    assert_int_equal(f.log[1], 0);
    assert_int_equal(ram_block_log_sync(f.rb, bm, &err), 0);

    /* a page already in the caller's bitmap is not counted again */
    mark(&f, 63);
    mark(&f, 7);
    assert_int_equal(ram_block_log_sync(f.rb, bm, &err), 1);
    assert_true(test_bit(bm, 7));

    ram_block_log_stop(f.rb);
    assert_false(ram_block_logging(f.rb));
    assert_int_equal(ram_block_log_sync(f.rb, bm, &err), -1);
    assert_string_equal(err->message,
                        "dirty tracking of RAM block 'ram0' is not on");
    g_clear_error(&err);
    fixture_fini(&f);
}

static void test_errors(void **state)
{
    Fixture f;
    GError *err = NULL;

    fixture_init(&f, 100, 8);
    assert_false(ram_block_log_start(f.rb, &err));
    assert_non_null(strstr(err->message, "RAM block 'ram0' has no dirty "
                           "log"));
    g_clear_error(&err);

    assert_false(ram_block_set_dirty_log(f.rb, f.logfd, &err));
    assert_string_equal(err->message, "dirty log of RAM block 'ram0' is 8 "
                        "bytes, it needs 16 (one bit per 4096 byte page, in "
                        "64-bit words)");
    g_clear_error(&err);
    assert_false(ram_block_has_dirty_log(f.rb));

    assert_int_equal(ftruncate(f.logfd, 16), 0);
    assert_true(ram_block_set_dirty_log(f.rb, f.logfd, &err));
    assert_false(ram_block_set_dirty_log(f.rb, f.logfd, &err));
    assert_string_equal(err->message,
                        "RAM block 'ram0' already has a dirty log");
    g_clear_error(&err);

    /* a read-only descriptor cannot carry the monitor's bits back */
    ram_block_clear_dirty_log(f.rb);
    char *path = g_strdup_printf("/proc/self/fd/%d", f.logfd);
    int ro = open(path, O_RDONLY);
    assert_true(ro >= 0);
    assert_false(ram_block_set_dirty_log(f.rb, ro, &err));
    assert_non_null(strstr(err->message, "cannot be mapped shared and "
                           "writable"));
    g_clear_error(&err);
    close(ro);
    g_free(path);
    fixture_fini(&f);
}

static void test_mark_ranges(void **state)
{
    Fixture f;
    unsigned long bm[4] = { 0 };
    GError *err = NULL;

    fixture_init(&f, 200, 32);
    assert_false(ram_block_mark_dirty(f.rb, 0, 1, &err));
    assert_string_equal(err->message, "RAM block 'ram0' has no dirty log");
    g_clear_error(&err);

    /* the daemon's own log: what the monitor reports over QMP */
    assert_true(ram_block_set_private_dirty_log(f.rb, &err));
    assert_false(ram_block_set_private_dirty_log(f.rb, &err));
    g_clear_error(&err);
    assert_true(ram_block_mark_dirty(f.rb, 0, PAGE, &err));  /* forgotten */
    assert_true(ram_block_log_start(f.rb, &err));
    /* one byte, a range over pages 62..129 (three words), the last page */
    assert_true(ram_block_mark_dirty(f.rb, 10 * PAGE + 7, 1, &err));
    assert_true(ram_block_mark_dirty(f.rb, 62 * PAGE + 1, 67 * PAGE, &err));
    assert_true(ram_block_mark_dirty(f.rb, 199 * PAGE, PAGE, &err));
    assert_true(ram_block_mark_dirty(f.rb, 5 * PAGE, 0, &err));
    assert_int_equal(ram_block_log_sync(f.rb, bm, &err), 1 + 68 + 1);
    for (uint64_t p = 0; p < 200; p++) {
        assert_int_equal(test_bit(bm, p),
                         p == 10 || (p >= 62 && p <= 129) || p == 199);
    }
    assert_false(ram_block_mark_dirty(f.rb, 199 * PAGE, PAGE + 1, &err));
    assert_string_equal(err->message, "range 0xc7000+0x1001 is beyond the "
                        "end of RAM block 'ram0' (0xc8000 bytes)");
    g_clear_error(&err);
    assert_false(ram_block_mark_dirty(f.rb, UINT64_MAX, 2, &err));
    g_clear_error(&err);
    assert_int_equal(ram_block_log_sync(f.rb, bm, &err), 0);
    fixture_fini(&f);
}

/*
 * Setter threads mark pages (each its own residue class, in a scrambled
 * order) while the main thread syncs.  A setter raises the page's pending
 * flag before it marks the page, and marks a page again only once a sync
 * has reported it (the main thread lowers the flag): so a bit lost by a
 * sync leaves its page pending for good, and a page reported without a
 * pending flag was invented.
 */
#define SETTERS 4
#define MIN_SYNCS 300
#define MIN_SETS_PER_THREAD 20000

typedef struct {
    Fixture *f;
    unsigned idx;
    uint8_t *pending;           /* per page */
    uint64_t sets;
} Setter;

static bool setters_done[SETTERS];
static bool stop_setting;

static gpointer setter_main(gpointer opaque)
{
    Setter *s = opaque;
    uint64_t span = s->f->pages / SETTERS;
    uint64_t x = 0x9e3779b97f4a7c15ULL * (s->idx + 1);

    for (unsigned i = 0; s->sets < MIN_SETS_PER_THREAD ||
                         !__atomic_load_n(&stop_setting, __ATOMIC_ACQUIRE);
         i++) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        uint64_t page = (x % span) * SETTERS + s->idx;
        if (__atomic_load_n(&s->pending[page], __ATOMIC_ACQUIRE)) {
            continue;
        }
        __atomic_store_n(&s->pending[page], 1, __ATOMIC_RELAXED);
        /* the guest's write, then its bit (the monitor's order) */
        ((volatile uint8_t *)s->f->guest)[page * PAGE] = (uint8_t)i;
        mark(s->f, page);
        s->sets++;
    }
    __atomic_store_n(&setters_done[s->idx], true, __ATOMIC_RELEASE);
    return NULL;
}

static void test_concurrent_setters(void **state)
{
    Fixture f;
    const uint64_t pages = 4096 + 40;   /* not a whole number of words */
    GError *err = NULL;
    uint8_t *pending = g_new0(uint8_t, pages);
    size_t lwords = (pages + 8 * sizeof(unsigned long) - 1) /
                    (8 * sizeof(unsigned long));
    unsigned long *bm = g_new0(unsigned long, lwords);
    Setter setters[SETTERS];
    GThread *th[SETTERS];
    uint64_t reports = 0, syncs = 0, invented = 0;

    fixture_init(&f, pages, (pages + 63) / 64 * 8);
    assert_true(ram_block_set_dirty_log(f.rb, f.logfd, &err));
    assert_true(ram_block_log_start(f.rb, &err));
    stop_setting = false;
    for (unsigned i = 0; i < SETTERS; i++) {
        setters[i] = (Setter){ &f, i, pending, 0 };
        setters_done[i] = false;
        th[i] = g_thread_new("setter", setter_main, &setters[i]);
    }

    bool all_done = false;
    while (!all_done) {
        all_done = true;
        for (unsigned i = 0; i < SETTERS; i++) {
            all_done &= __atomic_load_n(&setters_done[i], __ATOMIC_ACQUIRE);
        }
        /* once all are done, one more sync takes what is left */
        memset(bm, 0, lwords * sizeof(unsigned long));
        int64_t n = ram_block_log_sync(f.rb, bm, &err);
        assert_true(n >= 0);
        int64_t seen = 0;
        for (uint64_t p = 0; p < pages; p++) {
            if (test_bit(bm, p)) {
                if (!__atomic_load_n(&pending[p], __ATOMIC_ACQUIRE)) {
                    invented++;
                }
                __atomic_store_n(&pending[p], 0, __ATOMIC_RELEASE);
                seen++;
            }
        }
        assert_int_equal(seen, n);
        reports += (uint64_t)n;
        if (++syncs == MIN_SYNCS) {
            __atomic_store_n(&stop_setting, true, __ATOMIC_RELEASE);
        }
    }
    for (unsigned i = 0; i < SETTERS; i++) {
        g_thread_join(th[i]);
    }

    uint64_t sets = 0, lost = 0;
    for (unsigned i = 0; i < SETTERS; i++) {
        sets += setters[i].sets;
    }
    for (uint64_t p = 0; p < pages; p++) {
        lost += pending[p];
    }
    assert_int_equal(lost, 0);
    assert_int_equal(invented, 0);
    assert_int_equal(reports, sets);
    /* the syncs really raced with the setters */
    assert_true(syncs >= MIN_SYNCS);
    assert_true(sets >= (uint64_t)SETTERS * MIN_SETS_PER_THREAD);
    for (uint64_t w = 0; w < (pages + 63) / 64; w++) {
        assert_int_equal(f.log[w], 0);
    }

    fixture_fini(&f);
    g_free(pending);
    g_free(bm);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_sync),
        cmocka_unit_test(test_errors),
        cmocka_unit_test(test_mark_ranges),
        cmocka_unit_test(test_concurrent_setters),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
