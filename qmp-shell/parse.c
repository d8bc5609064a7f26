/*
 * qmp-shell's line language (see parse.h).  The tokenizer reproduces the
 * regular expression qmp-shell splits lines with,
 *     (?:[^\s"']|"(?:\\.|[^"])*"|'(?:\\.|[^'])*')+
 * including what its backtracking does with backslashes and unclosed
 * quotes, so that a line gives the same words in both shells.
 */
#include <string.h>
#include "parse.h"
#include "pyliteral.h"

G_DEFINE_QUARK(strata-shell-error-quark, shell_error)

/* The characters Python's \s matches in the ASCII range. */
static bool is_space(char c)
{
    return c == ' ' || (c >= '\t' && c <= '\r') || (c >= 0x1c && c <= 0x1f);
}

/*
 * For a quote character q, end[p] is where a quoted part whose body starts
 * at p ends (just past the closing quote), or -1.  The regex engine tries,
 * in order: an escape pair "\." (not a newline), any other non-quote
 * character, then the closing quote; end[p] is the first of those that
 * succeeds, which a pass from the end of the line computes.
 */
static gssize *quoted_ends(const char *s, size_t len, char q)
{
    gssize *end = g_new(gssize, len + 2);
    end[len] = end[len + 1] = -1;
    for (size_t p = len; p-- > 0;) {
        gssize r = -1;
        if (s[p] == '\\' && p + 1 < len && s[p + 1] != '\n') {
            r = end[p + 2];
        }
        if (r < 0 && s[p] != q) {
            r = end[p + 1];
        }
        if (r < 0 && s[p] == q) {
            r = p + 1;
        }
        end[p] = r;
    }
    return end;
}

GPtrArray *shell_tokenize(const char *line)
{
    size_t len = strlen(line);
    GPtrArray *words = g_ptr_array_new_with_free_func(g_free);
    g_autofree gssize *dq = quoted_ends(line, len, '"');
    g_autofree gssize *sq = quoted_ends(line, len, '\'');
    size_t pos = 0;

    while (pos < len) {
        size_t p = pos;
        for (;;) {
            char c = line[p];
            if (p >= len) {
                break;
            }
            if (!is_space(c) && c != '"' && c != '\'') {
                p++;
            } else if (c == '"' && dq[p + 1] >= 0) {
                p = dq[p + 1];
            } else if (c == '\'' && sq[p + 1] >= 0) {
                p = sq[p + 1];
            } else {
                break;
            }
        }
        if (p > pos) {
            g_ptr_array_add(words, g_strndup(line + pos, p - pos));
            pos = p;
        } else {
            pos++;      /* findall moves on one character */
        }
    }
    return words;
}

json_t *shell_parse_value(const char *val, GError **errp)
{
    size_t len = strlen(val);
    gint64 n;
    bool overflow;
    json_t *v;

    if (py_int_parse(val, len, &n, &overflow)) {
        if (overflow) {
            g_set_error(errp, SHELL_ERROR, 0,
                        "Integer '%s' does not fit in 64 bits", val);
            return NULL;
        }
        return json_integer(n);
    }
    if (!g_ascii_strcasecmp(val, "true")) {
        return json_true();
    }
    if (!g_ascii_strcasecmp(val, "false")) {
        return json_false();
    }
    if (val[0] == '{' || val[0] == '[') {
        v = json_loads(val, JSON_DECODE_ANY | JSON_ALLOW_NUL, NULL);
        if (v) {
            return v;
        }
        switch (py_literal_parse(val, &v)) {
        case PYLIT_OK:
            return v;
        case PYLIT_RANGE:
            g_set_error(errp, SHELL_ERROR, 0,
                        "An integer in '%s' does not fit in 64 bits", val);
            return NULL;
        case PYLIT_SYNTAX:
            break;
        }
    }
    return json_string(val);
}

static bool add_one(json_t *root, const char *arg, GError **errp)
{
    const char *eq = strchr(arg, '=');
    if (!eq) {
        g_set_error(errp, SHELL_ERROR, 0,
                    "Expected a key=value pair, got '%s'", arg);
        return false;
    }
    g_autofree char *key = g_strndup(arg, eq - arg);
    /* g_strsplit gives no component for "", Python's split one empty one */
    g_auto(GStrv) path = *key ? g_strsplit(key, ".", -1)
                              : g_strdupv((char *[]){ "", NULL });
    guint depth = g_strv_length(path);
    json_t *parent = root;

    json_t *value = shell_parse_value(eq + 1, errp);
    if (!value) {
        return false;
    }
    /*
     * Every key starts from the top.  (QEMU 7.2's qmp-shell keeps walking
     * from the object the previous dotted key ended in, so after
     * "file.driver=file" a "file.filename=x" lands in file.file; that is a
     * bug, and strata does what the syntax promises.)
     */
    for (guint i = 0; i + 1 < depth; i++) {
        json_t *obj = json_object_get(parent, path[i]);
        if (!obj) {
            obj = json_object();
            json_object_set_new(parent, path[i], obj);
        } else if (!json_is_object(obj)) {
            g_autofree char *prefix = g_strjoinv(".", path);
            /* cut the joined key after component i */
            size_t cut = 0;
            for (guint j = 0; j <= i; j++) {
                cut += strlen(path[j]) + (j ? 1 : 0);
            }
            prefix[cut] = '\0';
            g_set_error(errp, SHELL_ERROR, 0,
                        "Cannot use \"%s\" as both leaf and non-leaf key",
                        prefix);
            json_decref(value);
            return false;
        }
        parent = obj;
    }
    json_t *old = json_object_get(parent, path[depth - 1]);
    if (old) {
        if (json_is_object(old)) {
            g_set_error(errp, SHELL_ERROR, 0,
                        "Cannot use \"%s\" as both leaf and non-leaf key", key);
        } else {
            g_set_error(errp, SHELL_ERROR, 0,
                        "Cannot set \"%s\" multiple times", key);
        }
        json_decref(value);
        return false;
    }
    json_object_set_new(parent, path[depth - 1], value);
    return true;
}

bool shell_add_args(json_t *obj, char **tokens, guint n, GError **errp)
{
    for (guint i = 0; i < n; i++) {
        if (!add_one(obj, tokens[i], errp)) {
            return false;
        }
    }
    return true;
}

void shell_parser_init(ShellParser *p)
{
    p->in_transaction = false;
    p->actions = json_array();
}

void shell_parser_reset(ShellParser *p)
{
    json_decref(p->actions);
    shell_parser_init(p);
}

static json_t *make_command(const char *name, json_t *args)
{
    json_t *cmd = json_object();
    json_object_set_new(cmd, "execute", json_string(name));
    json_object_set_new(cmd, "arguments", args);
    return cmd;
}

static int finish_transaction(ShellParser *p, json_t **cmd)
{
    json_t *args = json_object();
    json_object_set_new(args, "actions", p->actions);
    p->actions = json_array();
    p->in_transaction = false;
    *cmd = make_command("transaction", args);
    return SHELL_LINE_COMMAND;
}

int shell_parse_line(ShellParser *p, const char *line, json_t **cmd,
                     GError **errp)
{
    g_autoptr(GPtrArray) words = shell_tokenize(line);
    char **w = (char **)words->pdata;
    guint n = words->len;

    *cmd = NULL;
    if (!g_utf8_validate(line, -1, NULL)) {
        g_set_error_literal(errp, SHELL_ERROR, 0, "The line is not UTF-8");
        return -1;
    }
    if (n && !strcmp(w[0], "transaction(")) {
        /* a new block starts afresh, even inside another one */
        p->in_transaction = true;
        json_array_clear(p->actions);
        w++, n--;
    }
    if (n && !strcmp(w[0], ")") && p->in_transaction) {
        if (n > 1) {
            p->in_transaction = false;
            g_set_error_literal(errp, SHELL_ERROR, 0,
                "Unexpected input after close of Transaction sub-shell");
            return -1;
        }
        return finish_transaction(p, cmd);
    }
    if (!n) {
        return SHELL_LINE_NOTHING;
    }
    if (p->in_transaction) {
        bool last = !strcmp(w[n - 1], ")");
        json_t *data = json_object();
        if (!shell_add_args(data, w + 1, last ? n - 2 : n - 1, errp)) {
            json_decref(data);
            return -1;
        }
        json_t *action = json_object();
        json_object_set_new(action, "type", json_string(w[0]));
        json_object_set_new(action, "data", data);
        json_array_append_new(p->actions, action);
        return last ? finish_transaction(p, cmd) : SHELL_LINE_NOTHING;
    }
    json_t *args = json_object();
    if (!shell_add_args(args, w + 1, n - 1, errp)) {
        json_decref(args);
        return -1;
    }
    *cmd = make_command(w[0], args);
    return SHELL_LINE_COMMAND;
}
