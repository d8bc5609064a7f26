/*
 * A job as a parent of the block nodes it uses ("job" parent class).
 *
 * Requests enter the graph only through non-node parents, so a drained
 * node tells its jobs to pause, and the drain waits until each busy job
 * has parked at a pause point (or its driver says nothing is in flight).
 */
#include "strata/block-driver.h"
#include "strata/error.h"
#include "strata/job.h"

static char *job_child_desc(BlockChild *c)
{
    Job *job = c->opaque;
    return g_strdup_printf("%s job '%s'", job_type_name(job_type(job)),
                           job->id ? job->id : "");
}

static void job_child_drained_begin(BlockChild *c)
{
    job_pause(c->opaque);
}

static void job_child_drained_end(BlockChild *c)
{
    job_resume(c->opaque);
}

static bool job_child_drained_poll(BlockChild *c)
{
    Job *job = c->opaque;
    /*
     * A job that is not busy is parked, or will pass a pause point before
     * it issues anything once woken.
     */
    if (!job->busy || job_is_completed(job)) {
        return false;
    }
    return job->driver->drained_poll ? job->driver->drained_poll(job) : true;
}

/*
 * A job follows its nodes to another thread: it runs in the main loop and
 * its requests go to the node's loop (co_call_in).
 */
static bool job_child_can_set_loop(BlockChild *c, StrataLoop *loop,
                                   GError **errp)
{
    return true;
}

static void job_child_set_loop(BlockChild *c, StrataLoop *loop)
{
}

static const BlockChildClass job_child_class = {
    .kind = "job",
    .parent_is_node = false,
    .get_parent_desc = job_child_desc,
    .drained_begin = job_child_drained_begin,
    .drained_end = job_child_drained_end,
    .drained_poll = job_child_drained_poll,
    .can_set_loop = job_child_can_set_loop,
    .set_loop = job_child_set_loop,
};

BlockChild *job_add_node(Job *job, const char *name, BlockNode *bs,
                         uint64_t perm, uint64_t shared, GError **errp)
{
    BlockChild *c = child_attach(bs, name, &job_child_class, 0, perm, shared,
                                 job, errp);
    if (c) {
        job->nodes = g_slist_prepend(job->nodes, c);
    }
    return c;
}

void job_remove_all_nodes(Job *job)
{
    while (job->nodes) {
        BlockChild *c = job->nodes->data;
        job->nodes = g_slist_delete_link(job->nodes, job->nodes);
        /* The job's own edges are never frozen by the job layer. */
        GError *err = NULL;
        if (!child_detach(c, &err)) {
            warn_print("%s", err->message);
            g_error_free(err);
        }
    }
}
