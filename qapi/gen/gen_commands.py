"""Marshallers and the sorted command table; event emitters."""

from gen_types import ctype, fn, spaced


def c_cmd(name):
    from schema import c_name
    return c_name(name, False)


def handler_params(arg_type, boxed):
    """The C parameters a handler or emitter takes for its 'data'."""
    if arg_type is None:
        return []
    if boxed:
        return ['%s *arg' % arg_type.c_name()]
    out = []
    for m in arg_type.all_members():
        if m.has_flag():
            out.append('bool has_%s' % m.c_name())
        out.append('%s%s' % (spaced(ctype(m.type, arg=True)), m.c_name()))
    return out


def handler_args(arg_type, boxed, var):
    if arg_type is None:
        return []
    if boxed:
        return [var]
    out = []
    for m in arg_type.all_members():
        if m.has_flag():
            out.append('%s.has_%s' % (var, m.c_name()))
        out.append('%s.%s' % (var, m.c_name()))
    return out


def ret_ctype(c):
    return spaced(ctype(c.ret)) if c.ret else 'void '


def prototype(c):
    params = handler_params(c.arg_type, c.boxed) + ['GError **errp']
    return '%sqmp_%s(%s)' % (ret_ctype(c), c_cmd(c.name), ', '.join(params))


class CommandsGen:
    def __init__(self, schema):
        self.s = schema
        self.h = []
        self.c = []

    def gen(self):
        for c in self.s.commands:
            self.h.append('%s;\n' % prototype(c))
            self.marshal(c)
        self.table()

    def marshal(self, c):
        C = self.c
        C.append('static bool qmp_marshal_%s(json_t *args, json_t **ret, GError **errp)\n{\n'
                 % c_cmd(c.name))
        C.append('    QapiIn root;\n    GError *err = NULL;\n')
        at = c.arg_type
        if at is None:
            C.append('    QapiIn in;\n    bool ok;\n')
        elif c.boxed:
            C.append('    %s *arg = NULL;\n' % at.c_name())
        else:
            C.append('    QapiIn in;\n    bool ok;\n    %s arg = {0};\n' % at.c_name())
        if c.ret:
            C.append('    %sretval;\n' % spaced(ctype(c.ret)))
        C.append('\n    qapi_in_init(&root, false);\n')
        if at is None or not c.boxed:
            C.append('    if (!qapi_in_is_object(&root, NULL, args, errp)) {\n'
                     '        return false;\n    }\n'
                     '    qapi_in_push(&in, &root, NULL, args);\n')
            if at is None:
                C.append('    ok = qapi_in_check_struct(&in, errp);\n')
            else:
                C.append('    ok = qapi_in_%s_members(&in, &arg, errp) &&\n'
                         '         qapi_in_check_struct(&in, errp);\n' % fn(at))
            C.append('    qapi_in_pop(&in);\n    if (!ok) {\n')
            if at is not None:
                C.append('        qapi_free_%s_members(&arg);\n' % fn(at))
            C.append('        return false;\n    }\n')
        else:
            C.append('    if (!qapi_in_%s(&root, NULL, args, &arg, errp)) {\n'
                     '        return false;\n    }\n' % fn(at))
        call = 'qmp_%s(%s)' % (c_cmd(c.name), ', '.join(
            handler_args(at, c.boxed, 'arg') + ['&err']))
        C.append('    %s%s;\n' % ('retval = ' if c.ret else '', call))
        if at is not None:
            C.append('    %s\n' % ('qapi_free_%s(arg);' % fn(at) if c.boxed else
                                   'qapi_free_%s_members(&arg);' % fn(at)))
        C.append('    if (err) {\n        g_propagate_error(errp, err);\n'
                 '        return false;\n    }\n')
        if c.ret:
            C.append('    *ret = qapi_out_%s(retval);\n' % fn(c.ret))
            from gen_types import needs_free, free_stmt
            if needs_free(c.ret):
                C.append('    %s\n' % free_stmt(c.ret, 'retval'))
        else:
            C.append('    *ret = json_object();\n')
        C.append('    return true;\n}\n\n')

    def table(self):
        C = self.c
        cmds = sorted(self.s.commands, key=lambda c: c.name.encode())
        C.append('const QmpCommand qmp_commands[] = {\n')
        for c in cmds:
            C.append('    { "%s", qmp_marshal_%s, %s },\n'
                     % (c.name, c_cmd(c.name), ' | '.join(c.flags) or '0'))
        if not cmds:
            C.append('    { NULL, NULL, 0 },\n')
        C.append('};\nconst size_t qmp_commands_count = %d;\n\n' % len(cmds))
        C.append('static int command_cmp(const void *key, const void *elt)\n{\n'
                 '    return strcmp(key, ((const QmpCommand *)elt)->name);\n}\n\n'
                 'const QmpCommand *qmp_command_find(const char *name)\n{\n'
                 '    return bsearch(name, qmp_commands, qmp_commands_count,\n'
                 '                   sizeof(qmp_commands[0]), command_cmp);\n}\n')


class EventsGen:
    def __init__(self, schema):
        self.s = schema
        self.h = []
        self.c = []

    def gen(self):
        from schema import c_name
        for ev in self.s.events:
            params = handler_params(ev.arg_type, ev.boxed)
            proto = 'void qapi_event_send_%s(%s)' % (c_name(ev.name.lower(), False),
                                                     ', '.join(params) or 'void')
            self.h.append('%s;\n' % proto)
            C = self.c
            C.append('%s\n{\n' % proto)
            at = ev.arg_type
            if at is None:
                C.append('    qmp_event_send("%s", NULL);\n}\n\n' % ev.name)
                continue
            C.append('    json_t *data = json_object();\n')
            if ev.boxed:
                C.append('    qapi_out_%s_members(data, arg);\n' % fn(at))
            else:
                C.append('    %s arg = {\n' % at.c_name())
                for m in at.all_members():
                    if m.has_flag():
                        C.append('        .has_%s = has_%s,\n' % (m.c_name(), m.c_name()))
                    cast = '(char *)' if m.type.name == 'str' else ''
                    C.append('        .%s = %s%s,\n' % (m.c_name(), cast, m.c_name()))
                C.append('    };\n    qapi_out_%s_members(data, &arg);\n' % fn(at))
            C.append('    qmp_event_send("%s", data);\n}\n\n' % ev.name)
