/*
 * The graph command: x-debug-query-block-graph as Graphviz dot text, and
 * SVG through Graphviz's dot program when it is installed.
 */
#ifndef STRATA_SHELL_GRAPH_H
#define STRATA_SHELL_GRAPH_H

#include <stdbool.h>
#include <glib.h>
#include <jansson.h>

/*
 * GRAPH is x-debug-query-block-graph's "return"; NODES, if not NULL,
 * query-named-block-nodes' (with flat=true), which adds each node's
 * driver and file name to its label.
 */
char *graph_to_dot(json_t *graph, json_t *nodes);

/* Run "dot -Tsvg -o PATH" on DOT_TEXT. */
bool graph_write_svg(const char *dot_text, const char *path, GError **errp);

#endif
