#include <errno.h>
#include <sys/wait.h>
#include <unistd.h>
#include <string.h>
#include "graph.h"
#include "parse.h"

/* dot's double-quoted string: only '"' and '\' need escaping; newlines
 * become dot's left-justified line ends. */
static void put_quoted(GString *out, const char *s)
{
    g_string_append_c(out, '"');
    for (; *s; s++) {
        if (*s == '"' || *s == '\\') {
            g_string_append_c(out, '\\');
            g_string_append_c(out, *s);
        } else if (*s == '\n') {
            g_string_append(out, "\\l");
        } else {
            g_string_append_c(out, *s);
        }
    }
    g_string_append_c(out, '"');
}

/* The permission letters of QEMU's scripts/render_block_graph.py:
 * w(rite), r (consistent read), u (write unchanged), s (resize). */
static void perm_letters(GString *out, json_t *perms)
{
    static const struct { const char *name; char c; } letters[] = {
        { "write", 'w' }, { "consistent-read", 'r' },
        { "write-unchanged", 'u' }, { "resize", 's' },
    };
    for (size_t i = 0; i < G_N_ELEMENTS(letters); i++) {
        bool has = false;
        size_t j;
        json_t *p;
        json_array_foreach(perms, j, p) {
            has |= !g_strcmp0(json_string_value(p), letters[i].name);
        }
        g_string_append_c(out, has ? letters[i].c : '_');
    }
}

static json_t *named_node(json_t *nodes, const char *name)
{
    size_t i;
    json_t *n;
    json_array_foreach(nodes, i, n) {
        if (!g_strcmp0(json_string_value(json_object_get(n, "node-name")),
                       name)) {
            return n;
        }
    }
    return NULL;
}

char *graph_to_dot(json_t *graph, json_t *nodes)
{
    GString *out = g_string_new("digraph block_graph {\n");
    size_t i;
    json_t *n, *e;

    g_string_append(out, "    node [fontname=\"monospace\"];\n"
                         "    edge [fontname=\"monospace\"];\n");
    g_string_append(out, "    legend [shape=none, label=");
    put_quoted(out, "node [driver]\nfile name\n\nedge: role\n"
                    "  perm, shared perm:\n"
                    "  w write\n  r consistent read\n"
                    "  u write unchanged\n  s resize\n");
    g_string_append(out, "];\n");

    json_array_foreach(json_object_get(graph, "nodes"), i, n) {
        const char *type = json_string_value(json_object_get(n, "type"));
        const char *name = json_string_value(json_object_get(n, "name"));
        g_autoptr(GString) label = g_string_new("");
        const char *shape = "box";

        if (!g_strcmp0(type, "block-driver")) {
            json_t *info = named_node(nodes, name);
            const char *drv = json_string_value(json_object_get(info, "drv"));
            const char *file = json_string_value(json_object_get(info, "file"));
            g_string_append(label, name ? name : "");
            if (drv) {
                g_string_append_printf(label, " [%s]", drv);
            }
            if (!g_strcmp0(drv, "file") && file) {
                g_autofree char *base = g_path_get_basename(file);
                g_string_append_printf(label, "\n%s", base);
            }
            shape = "ellipse";
        } else if (!g_strcmp0(type, "block-job")) {
            g_string_append_printf(label, "job %s", name ? name : "");
        } else {
            g_string_append(label, name && *name ? name : "unnamed backend");
        }
        g_string_append_printf(out, "    n%" JSON_INTEGER_FORMAT
                               " [shape=%s, label=",
                               json_integer_value(json_object_get(n, "id")),
                               shape);
        put_quoted(out, label->str);
        g_string_append(out, "];\n");
    }

    json_array_foreach(json_object_get(graph, "edges"), i, e) {
        g_autoptr(GString) label = g_string_new("");
        const char *role = json_string_value(json_object_get(e, "name"));
        g_string_append_printf(label, "%s\n", role ? role : "");
        perm_letters(label, json_object_get(e, "perm"));
        g_string_append_c(label, ' ');
        perm_letters(label, json_object_get(e, "shared-perm"));
        g_string_append_c(label, '\n');
        g_string_append_printf(out, "    n%" JSON_INTEGER_FORMAT " -> n%"
                               JSON_INTEGER_FORMAT " [label=",
                               json_integer_value(json_object_get(e, "parent")),
                               json_integer_value(json_object_get(e, "child")));
        put_quoted(out, label->str);
        g_string_append(out, "];\n");
    }
    g_string_append(out, "}\n");
    return g_string_free(out, FALSE);
}

bool graph_write_svg(const char *dot_text, const char *path, GError **errp)
{
    g_autofree char *dot = g_find_program_in_path("dot");
    if (!dot) {
        g_set_error_literal(errp, SHELL_ERROR, 0,
                            "Graphviz's dot is not installed; "
                            "'graph > FILE' writes the dot text");
        return false;
    }
    const char *argv[] = { dot, "-Tsvg", "-o", path, NULL };
    GPid pid;
    int in_fd, status;
    if (!g_spawn_async_with_pipes(NULL, (char **)argv, NULL,
                                  G_SPAWN_DO_NOT_REAP_CHILD, NULL, NULL, &pid,
                                  &in_fd, NULL, NULL, errp)) {
        return false;
    }
    size_t len = strlen(dot_text), done = 0;
    while (done < len) {
        ssize_t k = write(in_fd, dot_text + done, len - done);
        if (k < 0 && errno == EINTR) {
            continue;
        }
        if (k <= 0) {
            break;
        }
        done += k;
    }
    close(in_fd);
    while (waitpid(pid, &status, 0) < 0 && errno == EINTR) {
    }
    g_spawn_close_pid(pid);
    if (!WIFEXITED(status) || WEXITSTATUS(status) != 0 || done < len) {
        g_set_error(errp, SHELL_ERROR, 0, "dot failed to write '%s'", path);
        return false;
    }
    return true;
}
