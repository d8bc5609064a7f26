/*
 * What other QMP commands need to know of the machine snapshot jobs
 * (qapi/cmd-machine-snapshot.c).
 */
#ifndef QAPI_MACHINE_SNAPSHOT_H
#define QAPI_MACHINE_SNAPSHOT_H

/*
 * The id of the x-strata-machine-snapshot or -restore job that runs (it
 * holds the RAM blocks, the device state streams and its nodes until it
 * concludes), or NULL.
 */
const char *machine_snapshot_running_job(void);

#endif
