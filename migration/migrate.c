/*
 * A save or load in a thread of its own (strata/migrate.h).
 */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "strata/device-state.h"
#include "strata/loop.h"
#include "strata/migrate.h"
#include "live-save.h"

struct MigRun {
    MigSpec spec;
    bool load;
    GThread *thread;
    atomic_bool cancel;
    MrStats stats;
    GError *err;
    GPtrArray *skipped;
    GPtrArray *unread;
    atomic_bool ram_loaded;     /* a load's pages all in guest memory */
    /* live saves: pre-switchover waits for continued (or cancel) */
    GMutex lock;
    GCond cond;
    bool continued;
    MigLiveStats live;
};

typedef struct PassBH {
    MigRun *r;
    uint64_t n;
} PassBH;

static void pages_done_bh(void *opaque)
{
    MigRun *r = opaque;
    if (r->spec.pages_done) {
        r->spec.pages_done(r->spec.opaque);
    }
}

static void done_bh(void *opaque)
{
    MigRun *r = opaque;
    r->spec.done(r->spec.opaque, r->err);
}

static void pass_bh(void *opaque)
{
    PassBH *p = opaque;
    if (p->r->spec.pass) {
        p->r->spec.pass(p->r->spec.opaque, p->n);
    }
    g_free(p);
}

static void live_pass(void *opaque, uint64_t n)
{
    PassBH *p = g_new(PassBH, 1);
    p->r = opaque;
    p->n = n;
    loop_bh_remote(loop_main(), pass_bh, p);
}

static void pre_switchover_bh(void *opaque)
{
    MigRun *r = opaque;
    if (r->spec.pre_switchover) {
        r->spec.pre_switchover(r->spec.opaque);
    }
}

/* The VM monitor pauses its guest and says migrate-continue. */
static bool live_wait_switchover(void *opaque)
{
    MigRun *r = opaque;
    bool go;

    loop_bh_remote(loop_main(), pre_switchover_bh, r);
    g_mutex_lock(&r->lock);
    while (!r->continued && !atomic_load(&r->cancel)) {
        g_cond_wait(&r->cond, &r->lock);
    }
    go = r->continued && !atomic_load(&r->cancel);
    g_mutex_unlock(&r->lock);
    return go;
}

/* Make the rename itself durable. */
static bool sync_dir_of(const char *path, GError **errp)
{
    g_autofree char *dir = g_path_get_dirname(path);
    int fd = open(dir, O_RDONLY | O_DIRECTORY);
    if (fd < 0 || fsync(fd) < 0) {
        error_setg_errno(errp, errno, "Could not flush directory '%s'", dir);
        if (fd >= 0) {
            close(fd);
        }
        return false;
    }
    close(fd);
    return true;
}

static gpointer save_thread(gpointer opaque)
{
    MigRun *r = opaque;
    MigSpec *s = &r->spec;
    bool ok;

    if (s->live) {
        LiveHooks hooks = {
            .pass = live_pass,
            .wait_switchover = live_wait_switchover,
            .opaque = r,
        };
        ok = live_save(&s->target, s->blocks, s->nb_blocks, s->ram,
                       &s->params, s->downtime_limit_ms, &hooks, &r->stats,
                       &r->live, &r->cancel, &r->err);
    } else {
        ok = mr_save(&s->target, s->blocks, s->nb_blocks, &s->params,
                     &r->stats, &r->cancel, &r->err);
    }

    if (ok) {
        loop_bh_remote(loop_main(), pages_done_bh, r);
    }
    if (ok && s->tmp_path) {
        if (rename(s->tmp_path, s->final_path) < 0) {
            error_setg_errno(&r->err, errno, "Could not rename '%s' to '%s'",
                             s->tmp_path, s->final_path);
            ok = false;
        } else {
            ok = sync_dir_of(s->final_path, &r->err);
        }
    }
    if (!ok && s->tmp_path) {
        unlink(s->tmp_path);
    }
    loop_bh_remote(loop_main(), done_bh, r);
    return NULL;
}

static bool match_blocks(MigRun *r, MrFileInfo *info, GError **errp)
{
    MigSpec *s = &r->spec;
    unsigned loaded = 0;

    for (unsigned i = 0; i < info->nb_blocks; i++) {
        MrBlock *fb = &info->blocks[i];
        MrBlock *mem = NULL;
        for (unsigned k = 0; k < s->nb_blocks; k++) {
            if (strcmp(s->blocks[k].id, fb->id) == 0) {
                mem = &s->blocks[k];
            }
        }
        if (!mem) {
            g_ptr_array_add(r->skipped, g_strdup(fb->id));
            continue;
        }
        if (mem->used != fb->used) {
            /* QEMU's words for the same mismatch */
            error_setg(errp, "Length mismatch: %s: 0x%" PRIx64 " in != 0x%"
                       PRIx64, fb->id, fb->used, mem->used);
            return false;
        }
        fb->host = mem->host;
        fb->has_fd = mem->has_fd;
        fb->fd = mem->fd;
        loaded++;
    }
    if (!loaded) {
        GString *ids = g_string_new(NULL);
        for (unsigned i = 0; i < info->nb_blocks; i++) {
            g_string_append_printf(ids, "%s'%s'", i ? ", " : "",
                                   info->blocks[i].id);
        }
        error_setg(errp, "No memory backend has the id of a RAM block of "
                   "the migration file (%s)", ids->str);
        g_string_free(ids, true);
        return false;
    }
    return true;
}

static gpointer load_thread(gpointer opaque)
{
    MigRun *r = opaque;
    MigSpec *s = &r->spec;
    MrFileInfo *info = mr_file_parse(s->target.fd, s->target.offset, &r->err);

    if (info) {
        for (unsigned i = 0; i < info->unread->len; i++) {
            g_ptr_array_add(r->unread, g_strdup(info->unread->pdata[i]));
        }
        if (match_blocks(r, info, &r->err)) {
            /* device state after the pages (the file was checked whole) */
            bool ram = mr_load(&s->target, info, &s->params, &r->stats,
                               &r->cancel, &r->err);
            atomic_store(&r->ram_loaded, ram);
            if (ram &&
                ds_load(s->params.devstate, info, s->target.fd, &r->stats,
                        &r->cancel, r->unread, &r->err)) {
                loop_bh_remote(loop_main(), pages_done_bh, r);
            }
        }
        mr_file_info_free(info);
    }
    loop_bh_remote(loop_main(), done_bh, r);
    return NULL;
}

static MigRun *run_new(const MigSpec *spec, bool load)
{
    MigRun *r = g_new0(MigRun, 1);

    r->spec = *spec;
    r->spec.blocks = g_new(MrBlock, spec->nb_blocks);
    for (unsigned i = 0; i < spec->nb_blocks; i++) {
        r->spec.blocks[i] = spec->blocks[i];
        r->spec.blocks[i].id = g_strdup(spec->blocks[i].id);
    }
    r->spec.target.chan_fds = g_memdup2(spec->target.chan_fds,
                                        sizeof(int) * spec->target.nb_chan);
    r->spec.ram = spec->ram ? g_memdup2(spec->ram, sizeof(RamBlock *) *
                                        spec->nb_blocks) : NULL;
    g_mutex_init(&r->lock);
    g_cond_init(&r->cond);
    r->spec.tmp_path = g_strdup(spec->tmp_path);
    r->spec.final_path = g_strdup(spec->final_path);
    r->load = load;
    r->skipped = g_ptr_array_new_with_free_func(g_free);
    r->unread = g_ptr_array_new_with_free_func(g_free);
    r->thread = g_thread_new(load ? "strata-mig-load" : "strata-mig-save",
                             load ? load_thread : save_thread, r);
    return r;
}

MigRun *mig_run_save(const MigSpec *spec)
{
    return run_new(spec, false);
}

MigRun *mig_run_load(const MigSpec *spec)
{
    return run_new(spec, true);
}

void mig_run_cancel(MigRun *r)
{
    g_mutex_lock(&r->lock);
    atomic_store(&r->cancel, true);
    g_cond_broadcast(&r->cond);
    g_mutex_unlock(&r->lock);
}

void mig_run_continue(MigRun *r)
{
    g_mutex_lock(&r->lock);
    r->continued = true;
    g_cond_broadcast(&r->cond);
    g_mutex_unlock(&r->lock);
}

MigLiveStats *mig_run_live_stats(MigRun *r)
{
    return &r->live;
}

bool mig_run_cancelled(MigRun *r)
{
    return atomic_load(&r->cancel);
}

MrStats *mig_run_stats(MigRun *r)
{
    return &r->stats;
}

GPtrArray *mig_run_skipped(MigRun *r)
{
    return r->skipped;
}

bool mig_run_ram_loaded(MigRun *r)
{
    return atomic_load(&r->ram_loaded);
}

GPtrArray *mig_run_unread(MigRun *r)
{
    return r->unread;
}

void mig_run_free(MigRun *r)
{
    g_thread_join(r->thread);
    for (unsigned i = 0; i < r->spec.nb_blocks; i++) {
        g_free(r->spec.blocks[i].id);
    }
    g_free(r->spec.blocks);
    g_free(r->spec.ram);
    g_mutex_clear(&r->lock);
    g_cond_clear(&r->cond);
    g_free(r->spec.target.chan_fds);
    g_free((char *)r->spec.tmp_path);
    g_free((char *)r->spec.final_path);
    g_ptr_array_unref(r->skipped);
    g_ptr_array_unref(r->unread);
    if (r->err) {
        g_error_free(r->err);
    }
    g_free(r);
}
