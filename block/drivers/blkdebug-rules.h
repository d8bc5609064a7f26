/*
 * blkdebug's rules: reading [inject-error] and [set-state] sections from a
 * rule file and from options into Rule lists, and the take/unshare
 * permission lists.  Private to blkdebug.c and blkdebug-rules.c.
 */
#ifndef STRATA_BLKDEBUG_RULES_H
#define STRATA_BLKDEBUG_RULES_H

#include <stdbool.h>
#include <stdint.h>

#include <glib.h>
#include <jansson.h>

#include "strata/debug-event.h"

#define SECTOR_SIZE 512
#define ANY_OFFSET UINT64_MAX

/* I/O types, as QEMU's BlkdebugIOType (bit numbers in iotype_mask). */
enum {
    IOTYPE_READ,
    IOTYPE_WRITE,
    IOTYPE_WRITE_ZEROES,
    IOTYPE_DISCARD,
    IOTYPE_FLUSH,
    IOTYPE_BLOCK_STATUS,
    IOTYPE__MAX,
};
/* Without iotype a rule fails everything but block-status queries. */
#define IOTYPE_DEFAULT_MASK                                                    \
    ((1u << IOTYPE_READ) | (1u << IOTYPE_WRITE) |                             \
     (1u << IOTYPE_WRITE_ZEROES) | (1u << IOTYPE_DISCARD) |                   \
     (1u << IOTYPE_FLUSH))

typedef enum {
    ACTION_INJECT_ERROR,
    ACTION_SET_STATE,
    ACTION_SUSPEND,
} RuleAction;

typedef struct Rule {
    int event;
    RuleAction action;
    int state;                 /* 0: any state */
    /* inject-error */
    unsigned iotype_mask;
    int error;                 /* positive errno (QEMU allows <= 0 too) */
    bool immediately;
    bool once;
    uint64_t offset;           /* ANY_OFFSET or a byte offset */
    /* set-state */
    int new_state;
    /* suspend */
    char *tag;
} Rule;

void blkdebug_rule_free(Rule *r);

/*
 * Reads the rule file `config` (may be NULL), then the inject-error.N.* and
 * set-state.N.* options (taking them out of `options`), and prepends one
 * Rule per section to rules[event]: inject-error rules first, as QEMU.
 */
bool blkdebug_rules_read(const char *config, json_t *options,
                         GList *rules[BLKDBG__MAX], GError **errp);

/* Takes option `name` (a list of BlockPermission names) into a perm mask. */
bool blkdebug_parse_perm_list(json_t *options, const char *name,
                              uint64_t *dest, GError **errp);

/* Whether `options` has `name` itself or any `name.`-prefixed key. */
bool blkdebug_options_have(json_t *options, const char *name);

#endif
