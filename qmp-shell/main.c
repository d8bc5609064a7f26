/*
 * strata-shell: an interactive QMP client, a C rebuild of QEMU 7.2's
 * qmp-shell (same input language, output and options), with completion
 * from the server's schema, events printed as they arrive, a one-shot
 * mode for scripts and a graph command.  docs/strata-shell.md is the
 * manual.
 *
 * Talks to the daemon only through its socket: nothing here links the
 * block layer.
 */
#include <errno.h>
#include <getopt.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <fcntl.h>
#include <editline/readline.h>
#include "complete.h"
#include "conn.h"
#include "graph.h"
#include "parse.h"
#include "pyjson.h"

/* One-shot exit statuses (docs/strata-shell.md). */
enum { EXIT_OK = 0, EXIT_QMP_ERROR = 1, EXIT_SHELL_ERROR = 2 };

typedef struct Shell {
    QmpConn *conn;
    ShellParser parser;
    ShellSchema *schema;
    bool pretty, verbose;
    bool editing;           /* libedit owns the terminal line */
    volatile sig_atomic_t at_prompt;   /* waiting for input (also read by
                                       * the SIGINT handler) */
    char *histfile;
    FILE *logfile;
} Shell;

static Shell sh;

static void print_json(json_t *v, FILE *f)
{
    g_autofree char *text = py_json_dumps(v, sh.pretty);
    fprintf(f, "%s\n", text);
    fflush(f);
}

static void on_event(json_t *event, void *opaque)
{
    if (sh.editing && sh.at_prompt) {
        /* clear the prompt line, print, then let libedit draw it again */
        fputs("\r\033[K", stdout);
        print_json(event, stdout);
        rl_forced_update_display();
    } else {
        print_json(event, stdout);
    }
}

static const char *prompt(void)
{
    return sh.parser.in_transaction ? "TRANS> " : "(QEMU) ";
}

static void load_schema(void)
{
    json_t *schema = qmp_conn_query(sh.conn, "query-qmp-schema");
    json_t *commands = schema ? NULL : qmp_conn_query(sh.conn,
                                                      "query-commands");
    shell_schema_free(sh.schema);
    sh.schema = shell_schema_new(schema, commands);
    shell_schema_add_local(sh.schema, "graph");
    json_decref(schema);
    json_decref(commands);
}

/* "graph", "graph > FILE", "graph --svg FILE". */
static int run_graph(GPtrArray *words)
{
    char **w = (char **)words->pdata;
    const char *dot_file = NULL, *svg_file = NULL;
    GError *err = NULL;

    if (words->len == 3 && !strcmp(w[1], ">")) {
        dot_file = w[2];
    } else if (words->len == 2 && w[1][0] == '>' && w[1][1]) {
        dot_file = w[1] + 1;
    } else if (words->len == 3 && !strcmp(w[1], "--svg")) {
        svg_file = w[2];
    } else if (words->len != 1) {
        fprintf(stderr, "usage: graph [> FILE.dot | --svg FILE.svg]\n");
        return EXIT_SHELL_ERROR;
    }

    json_t *cmd = json_pack("{s:s}", "execute", "x-debug-query-block-graph");
    json_t *reply = qmp_conn_execute(sh.conn, cmd, &err);
    json_decref(cmd);
    if (!reply) {
        printf("%s\n", err->message);
        g_error_free(err);
        return -1;
    }
    if (!json_object_get(reply, "return")) {
        print_json(reply, stdout);
        json_decref(reply);
        return EXIT_QMP_ERROR;
    }
    /* labels get drivers and file names when the server tells them */
    cmd = json_pack("{s:s, s:{s:b}}", "execute", "query-named-block-nodes",
                    "arguments", "flat", 1);
    json_t *nodes = qmp_conn_execute(sh.conn, cmd, NULL);
    json_decref(cmd);
    g_autofree char *dot = graph_to_dot(json_object_get(reply, "return"),
                                        json_object_get(nodes, "return"));
    json_decref(reply);
    json_decref(nodes);

    if (svg_file) {
        if (!graph_write_svg(dot, svg_file, &err)) {
            fprintf(stderr, "graph: %s\n", err->message);
            g_error_free(err);
            return EXIT_SHELL_ERROR;
        }
    } else if (dot_file) {
        if (!g_file_set_contents(dot_file, dot, -1, &err)) {
            fprintf(stderr, "graph: %s\n", err->message);
            g_error_free(err);
            return EXIT_SHELL_ERROR;
        }
    } else {
        fputs(dot, stdout);
        fflush(stdout);
    }
    return EXIT_OK;
}

/* Run one line; an exit status, or -1 when the connection is gone. */
static int run_line(const char *line)
{
    GError *err = NULL;
    json_t *cmd;

    if (!sh.parser.in_transaction) {
        g_autoptr(GPtrArray) words = shell_tokenize(line);
        if (words->len && !strcmp(words->pdata[0], "graph")) {
            return run_graph(words);
        }
    }
    int r = shell_parse_line(&sh.parser, line, &cmd, &err);
    if (r < 0) {
        /* qmp-shell's words, its missing ']' included */
        fprintf(stderr, "Error while parsing command line: %s\n"
                "command format: <command-name> [arg-name1=arg1] ... "
                "[arg-nameN=argN\n", err->message);
        g_error_free(err);
        return EXIT_SHELL_ERROR;
    }
    if (r == SHELL_LINE_NOTHING) {
        return EXIT_OK;
    }
    if (sh.verbose) {
        print_json(cmd, stdout);
    }
    json_t *reply = qmp_conn_execute(sh.conn, cmd, &err);
    if (!reply) {
        printf("%s\n", err->message);
        fflush(stdout);
        g_error_free(err);
        json_decref(cmd);
        return -1;
    }
    print_json(reply, stdout);
    if (sh.logfile) {
        json_t *both = json_deep_copy(cmd);
        json_object_update(both, reply);
        print_json(both, sh.logfile);
        json_decref(both);
    }
    bool failed = json_object_get(reply, "error") != NULL;
    /* after a manual qmp_capabilities (-N), the schema can be read */
    if (!failed && sh.schema && !strcmp(json_string_value(
            json_object_get(cmd, "execute")), "qmp_capabilities")) {
        load_schema();
    }
    json_decref(reply);
    json_decref(cmd);
    return failed ? EXIT_QMP_ERROR : EXIT_OK;
}

/* ---------------------------------------------------------- line input */

static bool line_done;
static char *line_text;

static void line_handler(char *line)
{
    line_done = true;
    line_text = line ? g_strdup(line) : NULL;
    if (line && *line) {
        add_history(line);
        if (sh.histfile && write_history(sh.histfile) != 0) {
            fprintf(stderr, "Failed to save history file '%s': %s\n",
                    sh.histfile, g_strerror(errno));
        }
    }
    free(line);
}

/* Where libedit's word starts, relative to ours (see complete()). */
static size_t complete_skip;

static char *complete_generator(const char *text, int state)
{
    static GPtrArray *matches;
    static guint idx;

    if (state == 0) {
        if (matches) {
            g_ptr_array_free(matches, TRUE);
        }
        g_autofree char *before = g_strndup(rl_line_buffer, rl_point);
        matches = sh.schema ? shell_complete(sh.schema, before,
                                             sh.parser.in_transaction)
                            : g_ptr_array_new_with_free_func(g_free);
        idx = 0;
    }
    while (idx < matches->len) {
        const char *m = matches->pdata[idx++];
        if (strlen(m) >= complete_skip) {
            return strdup(m + complete_skip);
        }
    }
    return NULL;
}

static char **complete(const char *text, int start, int end)
{
    /* Our words are blank-separated; should libedit have started its word
     * later (after an '='), hand it only the tail of each candidate. */
    size_t ws = start;
    while (ws > 0 && !g_ascii_isspace(rl_line_buffer[ws - 1])) {
        ws--;
    }
    complete_skip = start - ws;
    rl_attempted_completion_over = 1;
    /* candidates carry their own trailing space when they want one */
    rl_completion_append_character = '\0';
    return rl_completion_matches(text, complete_generator);
}

/* ^C at the prompt drops the line being typed, as in a shell; at any
 * other time it ends strata-shell, as it ends qmp-shell.  The handler
 * writes to a pipe the prompt's poll() watches, so a ^C that comes just
 * before poll() starts is not lost. */
static int sigint_pipe[2] = { -1, -1 };

static void on_sigint(int sig)
{
    if (!sh.at_prompt) {
        signal(SIGINT, SIG_DFL);
        raise(SIGINT);
    }
    int saved = errno;
    if (write(sigint_pipe[1], "", 1) < 0) {
        /* the pipe is full: a ^C is already waiting */
    }
    errno = saved;
}

static void drop_line(void)
{
    char buf[64];
    while (read(sigint_pipe[0], buf, sizeof(buf)) > 0) {
    }
    rl_callback_handler_remove();
    fputs("\n", stdout);
    rl_replace_line("", 0);
    rl_callback_handler_install(prompt(), line_handler);
}

/*
 * libedit reads its keys through here.  Its own read() blocked when poll()
 * had seen a key but a ^C came before the read: the terminal throws unread
 * input away on ^C, and the read, restarted after the signal, waited with
 * the ^C unanswered until the next key (seen once in about 300 ^Cs typed
 * behind a line).  So the read is a non-blocking one, on a descriptor of
 * our own for the terminal (O_NONBLOCK on stdin's would change it for
 * every process sharing it), and the wait is a poll() that the ^C pipe
 * ends too: a pending ^C ends the read as end of input, on which libedit
 * hands no line on, and the prompt loop drops the line.
 */
static int shell_getc(FILE *in)
{
    static int nb_fd = -2;
    int fd = fileno(in);
    if (nb_fd == -2) {
        const char *tty = ttyname(fd);
        nb_fd = tty ? open(tty, O_RDONLY | O_NONBLOCK | O_NOCTTY | O_CLOEXEC)
                    : -1;
    }
    int rfd = nb_fd >= 0 ? nb_fd : fd;
    for (;;) {
        struct pollfd fds[2] = {
            { .fd = rfd, .events = POLLIN },
            { .fd = sigint_pipe[0], .events = POLLIN },
        };
        if (poll(fds, 2, -1) < 0) {
            if (errno == EINTR) {
                continue;
            }
            return EOF;
        }
        if (fds[1].revents) {
            return EOF;
        }
        unsigned char c;
        ssize_t n = read(rfd, &c, 1);
        if (n == 1) {
            return c;
        }
        if (n < 0 && (errno == EINTR || errno == EAGAIN)) {
            continue;
        }
        return EOF;
    }
}

static GString *plain_in;       /* bytes read from a non-terminal stdin */
static bool plain_eof;

/* One line from a non-terminal stdin, already buffered, or NULL. */
static char *plain_take_line(void)
{
    char *nl = memchr(plain_in->str, '\n', plain_in->len);
    if (!nl && !(plain_eof && plain_in->len)) {
        return NULL;
    }
    size_t len = nl ? (size_t)(nl - plain_in->str) : plain_in->len;
    char *line = g_strndup(plain_in->str, len);
    g_string_erase(plain_in, 0, nl ? len + 1 : len);
    return line;
}

/*
 * Wait for a line while printing events that arrive meanwhile.  NULL at
 * the end of input; *gone when the server went away instead.
 */
static char *read_line(bool *gone)
{
    *gone = false;
    line_done = false;
    line_text = NULL;
    qmp_conn_dispatch(sh.conn);
    /* before the prompt shows: a ^C typed at it must find at_prompt set */
    sh.at_prompt = true;
    if (sh.editing) {
        rl_callback_handler_install(prompt(), line_handler);
    } else {
        fputs(prompt(), stdout);        /* as Python's input() does */
        fflush(stdout);
        char *l = plain_take_line();
        if (l) {
            sh.at_prompt = false;
            return l;
        }
    }
    while (!line_done) {
        struct pollfd fds[3] = {
            { .fd = STDIN_FILENO, .events = POLLIN },
            { .fd = sh.conn->fd, .events = POLLIN },
            { .fd = sigint_pipe[0], .events = POLLIN },
        };
        if (poll(fds, 3, -1) < 0) {
            if (errno == EINTR) {
                continue;
            }
            break;
        }
        if (fds[2].revents) {
            drop_line();
            continue;
        }
        if (fds[1].revents) {
            if (!qmp_conn_pump(sh.conn)) {
                *gone = true;
                break;
            }
        }
        if (fds[0].revents) {
            if (sh.editing) {
                rl_callback_read_char();
                continue;
            }
            char chunk[4096];
            ssize_t n = read(STDIN_FILENO, chunk, sizeof(chunk));
            if (n < 0 && errno == EINTR) {
                continue;
            }
            if (n <= 0) {
                plain_eof = true;
            } else {
                g_string_append_len(plain_in, chunk, n);
            }
            line_text = plain_take_line();
            line_done = line_text || plain_eof;
        }
    }
    sh.at_prompt = false;
    if (sh.editing) {
        rl_callback_handler_remove();
    }
    return line_text;
}

static int repl(void)
{
    json_t *version = json_object_get(json_object_get(json_object_get(
        sh.conn->greeting, "QMP"), "version"), "qemu");

    printf("Welcome to the QMP low-level shell!\n");
    if (version) {
        printf("Connected to QEMU %" JSON_INTEGER_FORMAT ".%"
               JSON_INTEGER_FORMAT ".%" JSON_INTEGER_FORMAT "\n\n",
               json_integer_value(json_object_get(version, "major")),
               json_integer_value(json_object_get(version, "minor")),
               json_integer_value(json_object_get(version, "micro")));
    } else {
        printf("Connected\n");
    }
    fflush(stdout);

    if (sh.editing) {
        /* before read_history(), which initializes libedit */
        rl_getc_function = shell_getc;
        g_autofree char *home = g_strdup(g_get_home_dir());
        /* not qmp-shell's ~/.qmp-shell_history: GNU readline and libedit
         * write different history formats */
        sh.histfile = g_build_filename(home, ".strata-shell_history", NULL);
        stifle_history(1024);
        if (read_history(sh.histfile) != 0 && errno != ENOENT) {
            fprintf(stderr, "Failed to read history '%s': %s\n",
                    sh.histfile, g_strerror(errno));
        }
        rl_readline_name = "strata-shell";
        rl_completer_word_break_characters = (char *)" \t";
        rl_basic_word_break_characters = " \t";
        rl_attempted_completion_function = complete;
        if (pipe2(sigint_pipe, O_CLOEXEC | O_NONBLOCK) == 0) {
            struct sigaction sa = { .sa_handler = on_sigint };
            sigaction(SIGINT, &sa, NULL);
        }
    }
    plain_in = g_string_new("");

    for (;;) {
        bool gone;
        g_autofree char *line = read_line(&gone);
        if (gone) {
            printf("\nDisconnected\n");
            return EXIT_OK;
        }
        if (!line) {
            printf("\n");
            return EXIT_OK;
        }
        if (run_line(line) < 0) {
            return EXIT_OK;
        }
    }
}

static int one_shot(char **lines, int n)
{
    for (int i = 0; i < n; i++) {
        int r = run_line(lines[i]);
        if (r != EXIT_OK) {
            return r < 0 ? EXIT_SHELL_ERROR : r;
        }
    }
    if (sh.parser.in_transaction) {
        fprintf(stderr, "Error while parsing command line: "
                "the transaction( block is not closed with ')'\n");
        return EXIT_SHELL_ERROR;
    }
    return EXIT_OK;
}

static void usage(FILE *f)
{
    fprintf(f,
"usage: strata-shell [-h] [-N] [-v] [-p] [-l LOGFILE] qmp_server [COMMAND...]\n"
"\n"
"positional arguments:\n"
"  qmp_server            < UNIX socket path | TCP address:port >\n"
"  COMMAND               run these lines instead of reading the terminal,\n"
"                        then exit: 0 if all succeeded, 1 if one returned\n"
"                        an error, 2 if one could not be run\n"
"\n"
"options:\n"
"  -h, --help            show this help message and exit\n"
"  -N, --skip-negotiation\n"
"                        Skip negotiate (for qemu-ga)\n"
"  -v, --verbose         Verbose (echo commands sent and received)\n"
"  -p, --pretty          Pretty-print JSON\n"
"  -l LOGFILE, --logfile LOGFILE\n"
"                        Save log of all QMP messages to PATH\n"
"\n"
"Lines are 'command key=value ...' as in qmp-shell; 'graph' prints the\n"
"block graph as Graphviz dot ('graph > FILE', 'graph --svg FILE').\n"
"See docs/strata-shell.md.\n");
}

static G_NORETURN void usage_error(const char *fmt, const char *arg)
{
    fprintf(stderr, "usage: strata-shell [-h] [-N] [-v] [-p] [-l LOGFILE] "
            "qmp_server [COMMAND...]\nstrata-shell: error: ");
    fprintf(stderr, fmt, arg);
    fprintf(stderr, "\n");
    exit(EXIT_SHELL_ERROR);
}

int main(int argc, char **argv)
{
    static const struct option longopts[] = {
        { "help", no_argument, NULL, 'h' },
        { "skip-negotiation", no_argument, NULL, 'N' },
        { "verbose", no_argument, NULL, 'v' },
        { "pretty", no_argument, NULL, 'p' },
        { "logfile", required_argument, NULL, 'l' },
        { NULL, 0, NULL, 0 },
    };
    bool negotiate = true;
    const char *logfile = NULL;
    int c;

    signal(SIGPIPE, SIG_IGN);
    opterr = 0;
    /* '+': the command lines after the address are not options */
    while ((c = getopt_long(argc, argv, "+:hNvpl:", longopts, NULL)) != -1) {
        switch (c) {
        case 'h':
            usage(stdout);
            return EXIT_OK;
        case 'N':
            negotiate = false;
            break;
        case 'v':
            sh.verbose = true;
            break;
        case 'p':
            sh.pretty = true;
            break;
        case 'l':
            logfile = optarg;
            break;
        case ':':
            usage_error("argument %s: expected one argument",
                        argv[optind - 1]);
        default:
            usage_error("unrecognized arguments: %s", argv[optind - 1]);
        }
    }
    const char *address = optind < argc ? argv[optind++]
                                        : g_getenv("QMP_SOCKET");
    if (!address) {
        usage_error("%sQMP socket or TCP address must be specified", "");
    }
    char *host;
    int port;
    if (qmp_parse_address(address, &host, &port) == QMP_ADDRESS_BAD_PORT) {
        usage_error("Bad port number: %s", address);
    }
    if (logfile && !(sh.logfile = fopen(logfile, "w"))) {
        fprintf(stderr, "ERROR: %s: %s\n", logfile, g_strerror(errno));
        return EXIT_SHELL_ERROR;
    }

    GError *err = NULL;
    shell_parser_init(&sh.parser);
    sh.conn = qmp_conn_open(address, negotiate, on_event, NULL, &err);
    if (!sh.conn) {
        fprintf(stderr, "ERROR: Couldn't connect to %s: %s\n", address,
                err->message);
        g_error_free(err);
        return EXIT_SHELL_ERROR;
    }

    int ret;
    if (optind < argc) {
        ret = one_shot(argv + optind, argc - optind);
    } else {
        sh.editing = isatty(STDIN_FILENO);
        if (sh.editing) {
            load_schema();
        }
        ret = repl();
    }
    qmp_conn_close(sh.conn);
    shell_schema_free(sh.schema);
    shell_parser_reset(&sh.parser);
    json_decref(sh.parser.actions);
    if (sh.logfile) {
        fclose(sh.logfile);
    }
    g_free(sh.histfile);
    return ret;
}
