/*
 * Stackful coroutines: ucontext to create a stack, _setjmp/_longjmp to switch.
 *
 * swapcontext() saves and restores the signal mask with a system call on
 * every switch; jumping with _longjmp does not, which makes a switch cost a
 * few dozen instructions.  makecontext() is used only once per stack, to get
 * onto it: the trampoline saves a jump buffer there and jumps straight back.
 *
 * Terminated coroutines go back to a per-thread pool with their stack, so
 * creating a coroutine per request costs no mmap.  Each stack has a guard
 * page below it: an overflow faults instead of corrupting memory.
 *
 * Under AddressSanitizer every switch is announced with the fiber API,
 * otherwise ASan would report false stack-buffer errors.
 */
#include <setjmp.h>
#include <stdint.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <ucontext.h>
#include <unistd.h>
#include <glib.h>
#include "strata/coroutine.h"
#include "strata/loop.h"

#if defined(__SANITIZE_ADDRESS__)
#define CO_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define CO_ASAN 1
#endif
#endif
#ifdef CO_ASAN
#include <sanitizer/asan_interface.h>
#endif

#define CO_STACK_SIZE (1024 * 1024)
#define CO_POOL_MAX 128

struct Coroutine {
    CoroutineEntry *entry;
    void *opaque;
    Coroutine *caller;
    jmp_buf env;
    void *stack;          /* lowest usable address (above the guard page) */
    size_t stack_size;
    bool terminated;
    bool wake_pending;
    Coroutine *pool_next;
};

static __thread Coroutine leader;
static __thread Coroutine *current;
static __thread Coroutine *pool;
static __thread int pool_size;
static __thread jmp_buf *create_env;
static __thread Coroutine *creator; /* who is running co_new_stack() */
#ifdef CO_ASAN
static __thread const void *leader_stack_bottom;
static __thread size_t leader_stack_size;
#endif

static void co_pool_free(gpointer unused);
/* Frees a thread's pooled coroutines and stacks when the thread exits. */
static GPrivate pool_key = G_PRIVATE_INIT(co_pool_free);

static void co_pool_free(gpointer unused)
{
    size_t page = (size_t)sysconf(_SC_PAGESIZE);
    while (pool) {
        Coroutine *co = pool;
        pool = co->pool_next;
        munmap((char *)co->stack - page, co->stack_size + page);
        g_free(co);
    }
    pool_size = 0;
}

static Coroutine *self_or_leader(void)
{
    return current ? current : &leader;
}

#ifdef CO_ASAN
static void asan_start(void **fake, Coroutine *to)
{
    if (to == &leader) {
        __sanitizer_start_switch_fiber(fake, leader_stack_bottom,
                                       leader_stack_size);
    } else {
        __sanitizer_start_switch_fiber(fake, to->stack, to->stack_size);
    }
}

static void asan_finish(void *fake, Coroutine *from)
{
    const void *bottom;
    size_t size;
    __sanitizer_finish_switch_fiber(fake, &bottom, &size);
    if (from == &leader && !leader_stack_bottom) {
        leader_stack_bottom = bottom;
        leader_stack_size = size;
    }
}
#endif

static void co_switch(Coroutine *from, Coroutine *to)
{
#ifdef CO_ASAN
    void *fake = NULL;
    asan_start(&fake, to);
#endif
    current = (to == &leader) ? NULL : to;
    if (!_setjmp(from->env)) {
        _longjmp(to->env, 1);
    }
#ifdef CO_ASAN
    /* We are `from` again; whoever jumped here was running on its stack. */
    asan_finish(fake, NULL);
#endif
}

static void co_trampoline(int lo, int hi)
{
    uintptr_t p = ((uintptr_t)(unsigned)hi << 32) | (unsigned)lo;
    Coroutine *co = (Coroutine *)p;

#ifdef CO_ASAN
    /* The creator is still `current`: learn the main stack's bounds. */
    asan_finish(NULL, current ? NULL : &leader);
#endif
    /* Park here; the first co_enter() jumps back in. */
    if (!_setjmp(co->env)) {
#ifdef CO_ASAN
        /* Back onto the creator's stack, which may be another coroutine's. */
        void *fake = NULL;
        asan_start(&fake, creator);
#endif
        _longjmp(*create_env, 1);
    }
#ifdef CO_ASAN
    asan_finish(NULL, NULL);
#endif
    for (;;) {
        co->entry(co->opaque);
        co->terminated = true;
        co_switch(co, co->caller);
    }
}

static Coroutine *co_new_stack(void)
{
    Coroutine *co = g_new0(Coroutine, 1);
    size_t page = (size_t)sysconf(_SC_PAGESIZE);
    void *map = mmap(NULL, CO_STACK_SIZE + page, PROT_READ | PROT_WRITE,
                     MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (map == MAP_FAILED) {
        g_error("cannot allocate a coroutine stack");
    }
    mprotect(map, page, PROT_NONE);
    co->stack = (char *)map + page;
    co->stack_size = CO_STACK_SIZE;

    ucontext_t uc, old_uc;
    jmp_buf env;
    getcontext(&uc);
    uc.uc_link = NULL;
    uc.uc_stack.ss_sp = co->stack;
    uc.uc_stack.ss_size = co->stack_size;
    uc.uc_stack.ss_flags = 0;
    uintptr_t p = (uintptr_t)co;
    makecontext(&uc, (void (*)(void))co_trampoline, 2, (int)(p & 0xffffffffu),
                (int)(p >> 32));
    create_env = &env;
    creator = self_or_leader();
    if (!_setjmp(env)) {
#ifdef CO_ASAN
        void *fake = NULL;
        __sanitizer_start_switch_fiber(&fake, co->stack, co->stack_size);
        swapcontext(&old_uc, &uc);
#else
        swapcontext(&old_uc, &uc);
#endif
    }
#ifdef CO_ASAN
    asan_finish(NULL, NULL);
#endif
    create_env = NULL;
    return co;
}

Coroutine *co_create(CoroutineEntry *entry, void *opaque)
{
    Coroutine *co = pool;
    if (co) {
        pool = co->pool_next;
        pool_size--;
    } else {
        co = co_new_stack();
    }
    co->entry = entry;
    co->opaque = opaque;
    co->caller = NULL;
    co->terminated = false;
    co->wake_pending = false;
    co->pool_next = NULL;
    return co;
}

static void co_release(Coroutine *co)
{
    if (pool_size < CO_POOL_MAX) {
        if (!pool) {
            g_private_set(&pool_key, GINT_TO_POINTER(1));
        }
        co->pool_next = pool;
        pool = co;
        pool_size++;
        return;
    }
    size_t page = (size_t)sysconf(_SC_PAGESIZE);
    munmap((char *)co->stack - page, co->stack_size + page);
    g_free(co);
}

void co_enter(Coroutine *co)
{
    Coroutine *self = self_or_leader();
    g_assert(co->caller == NULL); /* entering a running coroutine is a bug */
    co->caller = self;
    co_switch(self, co);
    co->caller = NULL;
    if (co->terminated) {
        co_release(co);
    }
}

void coroutine_fn co_yield(void)
{
    Coroutine *self = current;
    g_assert(self != NULL);
    co_switch(self, self->caller);
}

static void co_wake_bh(void *opaque)
{
    Coroutine *co = opaque;
    co->wake_pending = false;
    co_enter(co);
}

void co_wake(Coroutine *co)
{
    if (co->wake_pending) {
        return;
    }
    co->wake_pending = true;
    loop_bh(co_wake_bh, co);
}

Coroutine *co_self(void)
{
    return current;
}

bool in_coroutine(void)
{
    return current != NULL;
}

typedef struct {
    CoroutineEntry *fn;
    void *opaque;
    bool done;
} SyncRun;

static void co_run_sync_entry(void *opaque)
{
    SyncRun *s = opaque;
    s->fn(s->opaque);
    s->done = true;
}

void co_run_sync(CoroutineEntry *fn, void *opaque)
{
    g_assert(!in_coroutine());
    SyncRun s = { .fn = fn, .opaque = opaque, .done = false };
    co_enter(co_create(co_run_sync_entry, &s));
    LOOP_WAIT_WHILE(!s.done);
}

typedef struct {
    CoroutineEntry *fn;
    void *opaque;
    StrataLoop *caller_loop;
    Coroutine *caller;      /* NULL: the caller waits in its loop */
    bool done;              /* set in the caller's thread */
} CoHop;

static void hop_back_bh(void *opaque)
{
    CoHop *h = opaque;
    Coroutine *caller = h->caller;
    h->done = true;
    if (caller) {
        co_enter(caller);
    }
}

static void hop_entry(void *opaque)
{
    CoHop *h = opaque;
    h->fn(h->opaque);
    /* The last touch of h: the caller may return as soon as this lands. */
    loop_bh_remote(h->caller_loop, hop_back_bh, h);
}

static void hop_start_bh(void *opaque)
{
    co_enter(co_create(hop_entry, opaque));
}

void co_call_in(StrataLoop *loop, CoroutineEntry *fn, void *opaque)
{
    StrataLoop *here = loop_get();
    if (!loop || loop == here) {
        if (in_coroutine()) {
            fn(opaque);
        } else {
            co_run_sync(fn, opaque);
        }
        return;
    }
    CoHop h = { fn, opaque, here, co_self(), false };
    loop_bh_remote(loop, hop_start_bh, &h);
    if (h.caller) {
        /* h is read by the other thread until hop_back_bh: a stray entry
         * must not end this frame before (see thread_pool_co_run). */
        while (!h.done) {
            co_yield();
        }
    } else {
        LOOP_WAIT_WHILE(!h.done);
    }
}
