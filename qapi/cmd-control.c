/*
 * The commands that act on the connection or the daemon as a whole:
 * capabilities negotiation and quit; and the SHUTDOWN event.
 */
#include "strata/qmp-server.h"
#include "qapi-commands.h"
#include "qapi-events.h"
#include "shutdown.h"

void qmp_qmp_capabilities(QMPCapabilityList *enable, GError **errp)
{
    bool oob = false;

    /* 'oob' is the only capability and every monitor offers it */
    for (; enable; enable = enable->next) {
        oob |= enable->value == QMP_CAPABILITY_OOB;
    }
    qmp_session_negotiate(qmp_session_current(), oob, errp);
}

void qapi_announce_shutdown(ShutdownCause cause)
{
    static bool announced;

    /*
     * Once, as QEMU's main loop sees one shutdown request: a signal during
     * the shutdown that quit started (or a second signal) adds nothing.
     */
    if (!announced) {
        announced = true;
        qapi_event_send_shutdown(false, cause);
    }
}

void qmp_quit(GError **errp)
{
    /*
     * QEMU's system emulator sends SHUTDOWN before quit's reply (which the
     * server holds until the monitors close).
     */
    qapi_announce_shutdown(SHUTDOWN_CAUSE_HOST_QMP_QUIT);
    qmp_server_request_quit();
}
