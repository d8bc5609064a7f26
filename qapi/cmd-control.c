/*
 * The commands that act on the connection or the daemon as a whole:
 * capabilities negotiation and quit.
 */
#include "strata/qmp-server.h"
#include "qapi-commands.h"

void qmp_qmp_capabilities(QMPCapabilityList *enable, GError **errp)
{
    bool oob = false;

    /* 'oob' is the only capability and every monitor offers it */
    for (; enable; enable = enable->next) {
        oob |= enable->value == QMP_CAPABILITY_OOB;
    }
    qmp_session_negotiate(qmp_session_current(), oob, errp);
}

void qmp_quit(GError **errp)
{
    /* the reply goes out first; the daemon then stops its loop */
    qmp_server_request_quit();
}
