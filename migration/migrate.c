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

struct MigRun {
    MigSpec spec;
    bool load;
    GThread *thread;
    atomic_bool cancel;
    MrStats stats;
    GError *err;
    GPtrArray *skipped;
    GPtrArray *unread;
};

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
    bool ok = mr_save(&s->target, s->blocks, s->nb_blocks, &s->params,
                      &r->stats, &r->cancel, &r->err);

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
            if (mr_load(&s->target, info, &s->params, &r->stats, &r->cancel,
                        &r->err) &&
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
    atomic_store(&r->cancel, true);
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
