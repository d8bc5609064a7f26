/*
 * qemu-img's progress meter: "-p" prints "    (NN.NN/100%)" on stdout as
 * the job advances; without -p, a SIGUSR1 asks for one report on stderr.
 * Shared by compare and convert.
 */
#include <pthread.h>
#include <signal.h>
#include <stdio.h>

#include "img.h"

static volatile sig_atomic_t progress_signalled;

static void progress_sigusr1(int sig)
{
    (void)sig;
    progress_signalled = 1;
}

void img_progress_init(ImgProgress *p, bool enabled, float min_skip)
{
    *p = (ImgProgress) { .enabled = enabled, .min_skip = min_skip };
    if (!enabled) {
        /* Without -p, a SIGUSR1 asks for one report on stderr. */
        struct sigaction sa = { .sa_handler = progress_sigusr1 };
        sigset_t set;

        sigfillset(&sa.sa_mask);
        sigaction(SIGUSR1, &sa, NULL);
        sigemptyset(&set);
        sigaddset(&set, SIGUSR1);
        pthread_sigmask(SIG_UNBLOCK, &set, NULL);
    }
}

static void progress_show(ImgProgress *p)
{
    if (p->enabled) {
        printf("    (%3.2f/100%%)\r", p->current);
        fflush(stdout);
    } else if (progress_signalled) {
        fprintf(stderr, "    (%3.2f/100%%)\n", p->current);
        progress_signalled = 0;
    }
}

/* delta: percent of `max` percent of the job (floats, as qemu-img has). */
void img_progress_print(ImgProgress *p, float delta, int max)
{
    float current = max ? p->current + delta / 100 * max : delta;

    p->current = current;
    if (current > p->last_print + p->min_skip ||
        current < p->last_print - p->min_skip ||
        current == 0 || current == 100) {
        p->last_print = current;
        progress_show(p);
    }
}

void img_progress_end(ImgProgress *p)
{
    if (p->enabled) {
        printf("\n");
    }
}
