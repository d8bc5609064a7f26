/*
 * How migrate and migrate-incoming find a descriptor a client passed with
 * getfd (`fd:NAME`, a `type: fd` socket).  Named descriptors live in the
 * QMP server's session, which the command table does not link: tests that
 * run the commands with a server of their own have none.  The program that
 * runs the QMP server (strata-daemon) sets these; until then no name is
 * found and /dev/fdset/N paths work as before.
 */
#ifndef QAPI_MIGRATION_FDS_H
#define QAPI_MIGRATION_FDS_H

typedef struct MigrationNamedFds {
    /* the descriptor under @name, still the session's; -1 if none */
    int (*peek)(const char *name);
    /* the session forgets @name and closes its descriptor (QEMU takes it) */
    void (*close)(const char *name);
} MigrationNamedFds;

void migration_set_named_fds(const MigrationNamedFds *fds);

#endif
