/*
 * The contract between the three parts of the QMP layer, so that they can
 * be built and grown apart:
 *
 *   - the generator (qapi/gen/) writes, from qapi/schema/, the C types, the
 *     JSON <-> C converters, one marshaller per command, the command table,
 *     the event emitters and the introspection data;
 *   - the handlers (qapi/cmd-*.c) are plain C functions with typed
 *     arguments and a GError **, called by the generated marshallers;
 *   - the server (qapi/server.c and friends) reads requests from clients,
 *     finds the command in the table, runs its marshaller in a coroutine and
 *     writes the reply; it also delivers events to every negotiated client.
 *
 * Neither the server nor the handlers know the wire format of a command's
 * arguments; neither the generator nor the handlers know about sockets.
 * A later issue adds a command by adding schema and a handler, never by
 * touching the server.
 *
 * Errors: a handler sets a GError.  Domain STRATA_ERROR with a
 * StrataErrorCode chooses the QMP error class (strata/error.h); any other
 * domain or code is reported as GenericError.  The message is sent as the
 * reply's "desc", so it is written for the person who reads it, in QEMU
 * 7.2's words wherever a script could match on them.
 *
 * Generated C names (so that hand-written handlers and the generator agree;
 * they follow QEMU 7.2's conventions, which users of its code will know):
 *   - a schema type Foo is `typedef struct Foo Foo;` with a member per schema
 *     member, '-' turned into '_' (and C keywords prefixed with q_); an
 *     optional member of scalar type (int, bool, number, enum) comes with a
 *     `bool has_name` before it; an optional pointer member (str, struct,
 *     list, alternate, any) is NULL when absent.  `void qapi_free_Foo(Foo *)`.
 *   - a list of Foo is `typedef struct FooList { struct FooList *next;
 *     Foo *value; } FooList;` (the value is by value for scalars:
 *     `int64_t value`); `strList`, `intList` for built-ins.
 *   - an enum Foo is `typedef enum Foo { FOO_BAR_BAZ, ..., FOO__MAX } Foo;`
 *     (prefix from the enum name in upper case with '_' between words,
 *     as QEMU splits them: QMPCapability -> QMP_CAPABILITY, or the
 *     schema's 'prefix');
 *     `const char *Foo_str(Foo)` and `int Foo_parse(const char *)` (-1 if
 *     unknown).
 *   - a union has its base's members, the discriminator among them
 *     (`BlockdevOptions.driver`), and the variant members in
 *     `Foo.u.variant` (a struct by value).  An alternate has `QType type`
 *     (QTYPE_QDICT, QTYPE_QSTRING, ...) and its branch in `Foo.u.branch`.
 *   - a command 'foo-bar' with arguments 'a': 'str', '*b': 'int' and
 *     returns 'Baz' is handled by
 *         Baz *qmp_foo_bar(const char *a, bool has_b, int64_t b,
 *                          GError **errp);
 *     a command with 'boxed': true by `qmp_foo_bar(FooBarArgs *arg,
 *     GError **errp)`; a command without 'returns' returns void.  A
 *     handler returns NULL/void when it sets *errp.
 *   - an event 'FOO_BAR' with data members is emitted with
 *     `void qapi_event_send_foo_bar(members...)`, same argument rules.
 */
#ifndef STRATA_QMP_H
#define STRATA_QMP_H

#include <stdbool.h>
#include <stddef.h>
#include <jansson.h>
#include <glib.h>
#include "strata/error.h"

/*
 * A command's marshaller.  `args` is the request's "arguments" object (an
 * empty object when the client sent none); it is borrowed.  On success it
 * returns true and sets *ret to a new reference to the "return" value (an
 * empty object for a command without 'returns'); on failure false with
 * *errp set and *ret untouched.  It runs in a coroutine, so the handler
 * behind it may yield (drain, flush, wait for I/O) without stopping the
 * loop.
 */
typedef bool QmpMarshalFn(json_t *args, json_t **ret, GError **errp);

typedef enum {
    QMP_CMD_ALLOW_OOB        = 1u << 0, /* schema 'allow-oob': true */
    QMP_CMD_ALLOW_PRECONFIG  = 1u << 1, /* schema 'allow-preconfig': true */
    QMP_CMD_NO_SUCCESS_REPLY = 1u << 2, /* schema 'success-response': false */
    QMP_CMD_DEPRECATED       = 1u << 3, /* schema 'features': ['deprecated'] */
    QMP_CMD_UNSTABLE         = 1u << 4, /* schema 'features': ['unstable'] */
} QmpCommandFlags;

typedef struct QmpCommand {
    const char *name;
    QmpMarshalFn *fn;
    unsigned flags;             /* QmpCommandFlags */
} QmpCommand;

/* Generated (qapi/gen): the table is sorted by name. */
extern const QmpCommand qmp_commands[];
extern const size_t qmp_commands_count;
const QmpCommand *qmp_command_find(const char *name);

/* Generated: a new reference to the value query-qmp-schema returns. */
json_t *qmp_introspection(void);

/*
 * The server.  Generated event emitters build the event's "data" object and
 * call qmp_event_send(); the server adds "timestamp" and queues it to every
 * client that has left capabilities negotiation.  `data` is stolen and may
 * be NULL for an event without data.  Safe to call from any coroutine or
 * loop callback in the main thread.
 */
void qmp_event_send(const char *event, json_t *data);

/*
 * The client connection whose request the calling coroutine is running, for
 * the few handlers that need it (getfd takes the file descriptors that came
 * with the request; qmp_capabilities changes the connection's state).
 * NULL outside a request.
 */
typedef struct QmpSession QmpSession;
QmpSession *qmp_session_current(void);

#endif
