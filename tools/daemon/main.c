/*
 * strata-daemon: qemu-storage-daemon 7.2's command line over strata's block
 * layer and QMP server.
 *
 * Options are handled in the order given, as qemu-storage-daemon does, so a
 * chardev comes before the monitor that uses it; -h, -V, --daemonize and
 * --pidfile are taken in a first pass.  The pid file is written once every
 * option has been carried out and before any client is served; with
 * --daemonize the parent exits only then, with status 1 if start-up failed
 * (the child has printed why on the shared stderr).
 */
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <limits.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <sys/stat.h>
#include <glib-unix.h>

#include "strata/chardev.h"
#include "strata/coroutine.h"
#include "strata/device-state.h"
#include "strata/error.h"
#include "strata/loop.h"
#include "strata/nbd-client.h"
#include "strata/nbd-server.h"
#include "strata/qmp-jobs.h"
#include "strata/qmp-server.h"
#include "strata/id.h"
#include "cmdline.h"
#include "objects.h"
#include "qapi-commands.h"
#include "nbd-export.h"
#include "migration-fds.h"
#include "shutdown.h"
#include "qapi-visit.h"
#include "../common/tool-common.h"
#include "daemon.h"

enum {
    OPTION_BLOCKDEV = 256,
    OPTION_CHARDEV,
    OPTION_DAEMONIZE,
    OPTION_EXPORT,
    OPTION_MONITOR,
    OPTION_NBD_SERVER,
    OPTION_OBJECT,
    OPTION_PIDFILE,
};

static const struct option long_options[] = {
    { "blockdev", required_argument, NULL, OPTION_BLOCKDEV },
    { "chardev", required_argument, NULL, OPTION_CHARDEV },
    { "daemonize", no_argument, NULL, OPTION_DAEMONIZE },
    { "export", required_argument, NULL, OPTION_EXPORT },
    { "help", no_argument, NULL, 'h' },
    { "monitor", required_argument, NULL, OPTION_MONITOR },
    { "nbd-server", required_argument, NULL, OPTION_NBD_SERVER },
    { "object", required_argument, NULL, OPTION_OBJECT },
    { "pidfile", required_argument, NULL, OPTION_PIDFILE },
    { "trace", required_argument, NULL, 'T' },
    { "version", no_argument, NULL, 'V' },
    { NULL, 0, NULL, 0 },
};

static bool daemonize;
static const char *pid_file;
static char *pid_file_realpath;
static int daemon_pipe = -1;
static volatile bool exit_requested;

static void help(void)
{
    printf(
"Usage: %s [options]\n"
"strata storage daemon (qemu-storage-daemon 7.2's command line and QMP)\n"
"\n"
"  -h, --help             display this help and exit\n"
"  -T, --trace [[enable=]<pattern>][,events=<file>][,file=<file>]\n"
"                         specify tracing options\n"
"  -V, --version          output version information and exit\n"
"\n"
"  --blockdev [driver=]<driver>[,node-name=<N>][,discard=ignore|unmap]\n"
"             [,cache.direct=on|off][,cache.no-flush=on|off]\n"
"             [,read-only=on|off][,auto-read-only=on|off]\n"
"             [,force-share=on|off][,detect-zeroes=on|off|unmap]\n"
"             [,driver specific parameters...]\n"
"                         configure a block backend\n"
"\n"
"  --chardev socket,id=<id>,path=<path>[,server=on|off][,wait=on|off]\n"
"  --chardev socket,id=<id>,host=<host>,port=<port>[,server=on|off]\n"
"            [,wait=on|off]\n"
"  --chardev socket,id=<id>,fd=<fd>[,server=on|off][,wait=on|off]\n"
"  --chardev stdio,id=<id>\n"
"                         configure a socket for a monitor: listening\n"
"                         (server=on) or connected to a listening peer\n"
"                         (server=off, the default)\n"
"\n"
"  --export [type=]nbd,id=<id>,node-name=<node-name>[,name=<export-name>]\n"
"           [,writable=on|off][,description=<description>]\n"
"           [,allocation-depth=on|off]\n"
"                         export the specified block node over NBD\n"
"                         (requires --nbd-server)\n"
"\n"
"  --daemonize            daemonize the process, and have the parent exit\n"
"                         once startup is complete\n"
"\n"
"  --monitor [chardev=]name[,mode=control][,pretty[=on|off]]\n"
"                         configure a QMP monitor\n"
"\n"
"  --nbd-server addr.type=inet,addr.host=<host>,addr.port=<port>\n"
"               [,max-connections=<n>]\n"
"  --nbd-server addr.type=unix,addr.path=<path>[,max-connections=<n>]\n"
"                         start an NBD server for exporting block nodes\n"
"\n"
"  --object help          list object types that can be added\n"
"  --object <type>,help   list properties for the given object type\n"
"  --object <type>[,<property>=<value>...]\n"
"                         create a new object of type <type>, setting\n"
"                         properties in the order they are specified. Note\n"
"                         that the 'id' property must be set.\n"
"\n"
"  --pidfile <path>       write process ID to a file after startup\n"
"\n"
"See docs/qmp.md for the QMP commands and their state against QEMU 7.2.\n",
           tool_name());
}

/* "--OPTION ARG: message", as QEMU reports an option it could not carry out */
static G_NORETURN void option_failed(const char *opt, const char *arg,
                                     GError *err)
{
    tool_error("--%s %s: %s", opt, arg, err->message);
    g_error_free(err);
    exit(EXIT_FAILURE);
}

static void on_quit(void)
{
    /*
     * From the quit command: close the exports before its reply goes out,
     * so that clients see their BLOCK_EXPORT_DELETED events first, as
     * qemu-storage-daemon 7.2 sends them.  After a signal the shutdown
     * phase does it.
     */
    if (in_coroutine()) {
        qapi_exports_close_all();
    }
    exit_requested = true;
    g_main_context_wakeup(loop_context(loop_get()));
}

static gboolean on_signal(gpointer opaque)
{
    qapi_announce_shutdown(SHUTDOWN_CAUSE_HOST_SIGNAL);
    on_quit();
    return G_SOURCE_CONTINUE;
}

/* ---- --monitor ---- */

/* A reconnecting client chardev's new connection: a new session. */
static void attach_connection(void *mon, int fd)
{
    qmp_monitor_add_client(mon, fd);
}

static void add_monitor(const char *arg)
{
    GError *err = NULL;
    bool keyval;
    json_t *tree = qapi_parse_cmdline(arg, "chardev", &keyval, &err);
    MonitorOptions *mo = NULL;

    if (tree) {
        mo = keyval ? qapi_MonitorOptions_from_keyval(tree, &err)
                    : qapi_MonitorOptions_from_json(tree, &err);
        json_decref(tree);
    }
    if (!mo) {
        option_failed("monitor", arg, err);
    }
    if (mo->has_mode && mo->mode != MONITOR_MODE_CONTROL) {
        g_set_error(&err, STRATA_ERROR, 0, "Only QMP is supported");
        option_failed("monitor", arg, err);
    }
    int first;
    ChardevKind kind;
    int fd = chardev_take_listener(mo->chardev, &first, &kind, &err);
    if (fd < 0) {
        option_failed("monitor", arg, err);
    }
    bool pretty = mo->has_pretty && mo->pretty;
    if (kind == CHARDEV_KIND_STDIO) {
        QmpMonitor *mon = qmp_monitor_new_stdio(pretty);
        chardev_set_user(mo->chardev, qmp_monitor_has_clients, mon);
    } else if (kind == CHARDEV_KIND_CLIENT) {
        /* one session over the connection; none once the peer has gone */
        QmpMonitor *mon = qmp_monitor_new_connected(pretty);
        chardev_set_user(mo->chardev, qmp_monitor_has_clients, mon);
        chardev_set_attach(mo->chardev, attach_connection);
        qmp_monitor_on_session_end(mon, chardev_peer_closed,
                                   chardev_handle(mo->chardev));
        if (first >= 0) {
            qmp_monitor_add_client(mon, first);
        }
    } else {
        QmpMonitor *mon = qmp_monitor_new(fd, pretty);
        chardev_set_user(mo->chardev, qmp_monitor_has_clients, mon);
        if (first >= 0) {
            qmp_monitor_add_client(mon, first);
        }
    }
    qapi_free_MonitorOptions(mo);
}

/* ---- --object ---- */

/* --object help, --object TYPE,help: QEMU's lists for strata's types. */
static bool object_help(const char *arg)
{
    char **elems = g_strsplit(arg, ",", -1);
    bool help = false;
    const char *type = NULL;

    for (int i = 0; elems[i]; i++) {
        if (!strcmp(elems[i], "help") || !strcmp(elems[i], "?")) {
            help = true;
        } else if (i == 0 && !strchr(elems[i], '=')) {
            type = elems[i];
        } else if (g_str_has_prefix(elems[i], "qom-type=") && !type) {
            type = elems[i] + strlen("qom-type=");
        }
    }
    if (help && type && !strcmp(type, "iothread")) {
        printf("iothread options:\n  aio-max-batch=<int>\n  poll-grow=<int>\n"
               "  poll-max-ns=<int>\n  poll-shrink=<int>\n"
               "  thread-pool-max=<int>\n  thread-pool-min=<int>\n");
    } else if (help && type && !strcmp(type, "secret")) {
        printf("secret options:\n  data=<string>\n  file=<string>\n"
               "  format=<QCryptoSecretFormat>\n  iv=<string>\n"
               "  keyid=<string>\n");
    } else if (help) {
        printf("List of user creatable objects:\n  iothread\n  secret\n");
    }
    g_strfreev(elems);
    return help;
}

/*
 * As qemu-storage-daemon: the schema's ObjectOptions reads dotted keys or
 * JSON, then object-add's handler creates the object.
 */
static bool add_object(const char *arg, GError **errp)
{
    bool keyval;
    json_t *tree;
    ObjectOptions *opts = NULL;

    if (arg[0] != '{' && object_help(arg)) {
        exit(EXIT_SUCCESS);
    }
    tree = qapi_parse_cmdline(arg, "qom-type", &keyval, errp);
    if (tree) {
        opts = keyval ? qapi_ObjectOptions_from_keyval(tree, errp)
                      : qapi_ObjectOptions_from_json(tree, errp);
        json_decref(tree);
    }
    if (!opts) {
        return false;
    }
    GError *err = NULL;
    qmp_object_add(opts, &err);
    if (err && !id_wellformed(opts->id)) {
        char *msg = g_strdup_printf("%s\n%s", err->message,
                                    USER_OBJECT_ID_HINT);
        g_free(err->message);
        err->message = msg;
    }
    qapi_free_ObjectOptions(opts);
    if (err) {
        g_propagate_error(errp, err);
        return false;
    }
    return true;
}

/* ---- --blockdev ---- */

typedef struct {
    json_t *args;
    GError *err;
    bool ok;
} BlockdevAdd;

static void blockdev_add_co(void *opaque)
{
    BlockdevAdd *b = opaque;
    const QmpCommand *cmd = qmp_command_find("blockdev-add");
    json_t *ret = NULL;

    if (!cmd) {
        g_set_error(&b->err, STRATA_ERROR, 0,
                    "blockdev-add is not available in this build");
        return;
    }
    b->ok = cmd->fn(b->args, &ret, &b->err);
    json_decref(ret);
}

/* As qemu-storage-daemon: parse with the schema, then run blockdev-add. */
static void add_blockdev(const char *arg)
{
    GError *err = NULL;
    BlockdevOptions *opts = qapi_blockdev_options_from_cmdline(arg, &err);

    if (!opts) {
        option_failed("blockdev", arg, err);
    }
    BlockdevAdd b = { .args = qapi_BlockdevOptions_to_json(opts) };
    qapi_free_BlockdevOptions(opts);
    /* Warnings of the open name the option, as QEMU's locations do. */
    char *where = g_strdup_printf("--blockdev %s", arg);
    report_set_context(where);
    g_free(where);
    co_run_sync(blockdev_add_co, &b);
    report_set_context(NULL);
    json_decref(b.args);
    if (!b.ok) {
        option_failed("blockdev", arg, b.err);
    }
}

/* ---- pid file and daemonizing, with QEMU's messages ---- */

static void pid_file_cleanup(void)
{
    if (pid_file_realpath) {
        unlink(pid_file_realpath);
    }
}

/*
 * The pid file, locked for as long as the daemon lives; a file replaced
 * under us between open and lock is opened again, as QEMU does.
 */
static void pid_file_init(void)
{
    int fd;

    if (!pid_file) {
        return;
    }
    for (;;) {
        struct stat a, b;
        struct flock lock = { .l_type = F_WRLCK, .l_whence = SEEK_SET };

        fd = open(pid_file, O_WRONLY | O_CREAT | O_CLOEXEC, 0600);
        if (fd < 0) {
            tool_error("cannot create PID file: Could not create '%s': %s",
                       pid_file, g_strerror(errno));
            exit(EXIT_FAILURE);
        }
        if (fstat(fd, &b) < 0) {
            tool_error("cannot create PID file: Cannot stat file: %s",
                       g_strerror(errno));
            exit(EXIT_FAILURE);
        }
        if (fcntl(fd, F_SETLK, &lock)) {
            tool_error("cannot create PID file: Cannot lock pid file: %s",
                       g_strerror(errno));
            exit(EXIT_FAILURE);
        }
        if (stat(pid_file, &a) == 0 && a.st_ino == b.st_ino) {
            break;
        }
        close(fd);
    }
    if (ftruncate(fd, 0) < 0) {
        tool_error("cannot create PID file: Failed to truncate pid file: %s",
                   g_strerror(errno));
        unlink(pid_file);
        exit(EXIT_FAILURE);
    }
    char *pid = g_strdup_printf("%d\n", (int)getpid());
    if (write(fd, pid, strlen(pid)) != (ssize_t)strlen(pid)) {
        tool_error("cannot create PID file: Failed to write pid file");
        unlink(pid_file);
        exit(EXIT_FAILURE);
    }
    g_free(pid);
    /* the descriptor stays open: its lock marks the file as ours */
    pid_file_realpath = g_malloc(PATH_MAX);
    if (!realpath(pid_file, pid_file_realpath)) {
        tool_error("cannot resolve PID file path: %s: %s", pid_file,
                   g_strerror(errno));
        unlink(pid_file);
        exit(EXIT_FAILURE);
    }
    atexit(pid_file_cleanup);
}

static void daemonize_start(void)
{
    int fds[2];

    if (!g_unix_open_pipe(fds, FD_CLOEXEC, NULL)) {
        exit(EXIT_FAILURE);
    }
    pid_t pid = fork();
    if (pid > 0) {
        /* exit 0 only if the daemon reports that start-up completed */
        uint8_t status;
        ssize_t len;
        close(fds[1]);
        do {
            len = read(fds[0], &status, 1);
        } while (len < 0 && errno == EINTR);
        exit(len == 1 && status == 0 ? EXIT_SUCCESS : EXIT_FAILURE);
    } else if (pid < 0) {
        exit(EXIT_FAILURE);
    }
    close(fds[0]);
    daemon_pipe = fds[1];
    setsid();
    pid = fork();
    if (pid > 0) {
        exit(EXIT_SUCCESS);
    } else if (pid < 0) {
        exit(EXIT_FAILURE);
    }
    umask(027);
    signal(SIGTSTP, SIG_IGN);
    signal(SIGTTOU, SIG_IGN);
    signal(SIGTTIN, SIG_IGN);
}

static void daemonize_finish(void)
{
    if (!daemonize) {
        return;
    }
    if (chdir("/")) {
        tool_error("not able to chdir to /: %s", g_strerror(errno));
        exit(EXIT_FAILURE);
    }
    int fd = open("/dev/null", O_RDWR | O_CLOEXEC);
    if (fd < 0) {
        exit(EXIT_FAILURE);
    }
    dup2(fd, 0);
    dup2(fd, 1);
    dup2(fd, 2);
    close(fd);
    uint8_t status = 0;
    ssize_t len;
    do {
        len = write(daemon_pipe, &status, 1);
    } while (len < 0 && errno == EINTR);
    if (len != 1) {
        exit(EXIT_FAILURE);
    }
    close(daemon_pipe);
}

static bool object_named(const char *id)
{
    return user_object_find(id) != NULL;
}

/* ---- options ---- */

static void process_options(int argc, char *argv[], bool pre_init_pass)
{
    int c;

    optind = 1;
    while ((c = getopt_long(argc, argv, "-hT:V", long_options, NULL)) != -1) {
        bool pre = c == '?' || c == 'h' || c == 'V' ||
                   c == OPTION_DAEMONIZE || c == OPTION_PIDFILE;
        if (pre != pre_init_pass) {
            continue;
        }
        GError *err = NULL;
        switch (c) {
        case '?':
            exit(EXIT_FAILURE);
        case 'h':
            help();
            exit(EXIT_SUCCESS);
        case 'V':
            printf("%s version %s (QEMU 7.2 interface)\n", tool_name(),
                   STRATA_VERSION);
            exit(EXIT_SUCCESS);
        case 'T':
            tool_trace_option(optarg);
            tool_trace_init_file();
            break;
        case OPTION_BLOCKDEV:
            add_blockdev(optarg);
            break;
        case OPTION_CHARDEV:
            if (!daemon_chardev_option(optarg, &err)) {
                option_failed("chardev", optarg, err);
            }
            break;
        case OPTION_DAEMONIZE:
            daemonize = true;
            break;
        case OPTION_EXPORT:
            if (!qapi_export_cmdline(optarg, &err)) {
                option_failed("export", optarg, err);
            }
            break;
        case OPTION_NBD_SERVER:
            if (!qapi_nbd_server_cmdline(optarg, &err)) {
                option_failed("nbd-server", optarg, err);
            }
            break;
        case OPTION_MONITOR:
            add_monitor(optarg);
            break;
        case OPTION_OBJECT:
            if (!add_object(optarg, &err)) {
                option_failed("object", optarg, err);
            }
            break;
        case OPTION_PIDFILE:
            pid_file = optarg;
            break;
        case 1:
            tool_error("%s: Unexpected argument", optarg);
            exit(EXIT_FAILURE);
        default:
            g_assert_not_reached();
        }
    }
}

/* QEMU's monitor_cur(): a QMP command runs in this coroutine. */
static bool in_qmp_command(void)
{
    return qmp_session_current() != NULL;
}

/* x-strata-device-state-add's getfd names: the calling session's. */
static int take_named_fd(const char *name)
{
    QmpSession *s = qmp_session_current();
    return s ? qmp_session_take_named_fd(s, name) : -1;
}

static int peek_named_fd(const char *name)
{
    QmpSession *s = qmp_session_current();
    return s ? qmp_session_named_fd(s, name) : -1;
}

static void close_named_fd(const char *name)
{
    QmpSession *s = qmp_session_current();
    if (s) {
        qmp_session_close_named_fd(s, name);
    }
}

static const MigrationNamedFds migration_fds = {
    .peek = peek_named_fd,
    .close = close_named_fd,
};

int main(int argc, char *argv[])
{
    signal(SIGPIPE, SIG_IGN);
    /* a write past RLIMIT_FSIZE fails with EFBIG instead of killing us */
    signal(SIGXFSZ, SIG_IGN);
    tool_set_name(argv[0]);

    qmp_server_hold_input();
    process_options(argc, argv, true);
    GError *poll_err = NULL;
    if (!nbd_server_main_poll_from_env(&poll_err)) {
        tool_error("%s", poll_err->message);
        exit(EXIT_FAILURE);
    }
    if (daemonize) {
        daemonize_start();
    }
    qmp_server_set_quit_handler(on_quit);
    nbd_client_set_object_exists(object_named);
    ds_registry_set_named_fds(take_named_fd);
    migration_set_named_fds(&migration_fds);
    qmp_jobs_init();
    qmp_server_at_shutdown(QMP_SHUTDOWN_EXPORTS, qapi_exports_close_all);
    GMainContext *ctx = loop_context(loop_get());
    int sigs[] = { SIGINT, SIGHUP, SIGTERM };
    for (size_t i = 0; i < G_N_ELEMENTS(sigs); i++) {
        GSource *src = g_unix_signal_source_new(sigs[i]);
        g_source_set_callback(src, on_signal, NULL, NULL);
        g_source_attach(src, ctx);
        g_source_unref(src);
    }

    process_options(argc, argv, false);
    /* documented order (QEMU's): after every option, before any client */
    pid_file_init();
    daemonize_finish();
    qmp_server_release_input();
    /* From here on warnings come from QMP commands: no program name. */
    report_set_context("");
    /* Errors the library reports itself: the same inside a command. */
    report_set_monitor_check(in_qmp_command);

    while (!exit_requested) {
        loop_iterate(true);
    }

    daemon_shutdown();
    qmp_server_shutdown();
    chardev_cleanup();
    user_objects_cleanup();
    return EXIT_SUCCESS;
}
