/*
 * qemu-img's progress meter: "-p" prints "    (NN.NN/100%)" on stdout as
 * the job advances; without -p, a SIGUSR1 asks for one report on stderr.
 * Shared by amend, compare, convert, commit and rebase.  --progress=json (a
 * strata extension) prints the same steps as JSON lines a program reads.
 */
#include <inttypes.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>

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

bool img_progress_parse(const char *arg, bool *progress, bool *json)
{
    if (!strcmp(arg, "json") || !strcmp(arg, "human")) {
        *progress = true;
        *json = !strcmp(arg, "json");
        return true;
    }
    tool_error("Invalid progress format '%s' (expected 'human' or 'json')",
               arg);
    return false;
}

void img_progress_init_mode(ImgProgress *p, bool enabled, bool json,
                            const char *op, float min_skip)
{
    img_progress_init(p, enabled, min_skip);
    if (enabled && json) {
        p->json_op = op;
    }
}

void img_progress_set_bytes(ImgProgress *p, uint64_t done, uint64_t total)
{
    p->done = done;
    p->total = total;
}

static void progress_show(ImgProgress *p)
{
    if (p->enabled && p->json_op) {
        double pct;

        if (p->current == 100 && p->total) {
            p->done = p->total;
        }
        /* The byte counts decide; qemu-img's meter only where none are. */
        pct = p->total ? (double)p->done * 100 / (double)p->total
                       : p->current;
        if (p->json_lines && p->done == p->json_done && pct == p->json_pct) {
            return;
        }
        p->json_lines++;
        p->json_done = p->done;
        p->json_pct = pct;
        printf("{\"operation\": \"%s\", \"done\": %" PRIu64
               ", \"total\": %" PRIu64 ", \"percent\": %.2f}\n",
               p->json_op, p->done, p->total, pct);
        fflush(stdout);
    } else if (p->enabled) {
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
    if (p->enabled && !p->json_op) {
        printf("\n");
    }
}
