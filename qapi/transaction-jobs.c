/*
 * The job transaction of a `transaction` with completion-mode=grouped, in
 * a unit of its own: strata/job.h and the generated qapi-types.h both
 * define JobStatus.  Declared in qapi/transaction.h.
 */
#include "strata/job.h"

JobTxn *txn_job_txn_new(void);
void txn_job_txn_unref(JobTxn *txn);

JobTxn *txn_job_txn_new(void)
{
    return job_txn_new();
}

void txn_job_txn_unref(JobTxn *txn)
{
    job_txn_unref(txn);
}
