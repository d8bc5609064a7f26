"""C types, free functions, and the JSON <-> C readers and writers."""

from schema import Builtin, Enum, Array, Object, Alternate, json_kind

QTYPE = {'string': 'QTYPE_QSTRING', 'number': 'QTYPE_QNUM',
         'boolean': 'QTYPE_QBOOL', 'null': 'QTYPE_QNULL',
         'object': 'QTYPE_QDICT'}


def ctype(t, arg=False):
    """The C type of a member (or handler argument) of type t."""
    if t.builtin:
        if arg and t.name == 'str':
            return 'const char *'
        return t.ctype
    if t.kind == 'enum':
        return t.c_name()
    return t.c_name() + ' *'


def needs_free(t):
    return not (t.kind == 'enum' or (t.builtin and not t.is_pointer()))


def member_decl(m):
    out = ''
    if m.has_flag():
        out += '    bool has_%s;\n' % m.c_name()
    out += '    %s%s;\n' % (spaced(ctype(m.type)), m.c_name())
    return out


def spaced(ct):
    return ct if ct.endswith('*') else ct + ' '


def fn(t):
    """Suffix of the per-type functions."""
    return t.c_name()


class TypesGen:
    def __init__(self, schema, prefix):
        self.s = schema
        self.prefix = prefix
        self.h = []
        self.c = []
        self.includes = []      # library headers of 'library-enums'

    def types_in_order(self):
        """Enums first, then objects so that a by-value member is complete."""
        done, order = set(), []

        def visit(t):
            if t.name in done or t.builtin:
                return
            done.add(t.name)
            deps = []
            if isinstance(t, Object) and t.variants:
                deps = [vt for _, vt in t.variants]
            elif isinstance(t, Alternate):
                deps = [bt for _, bt in t.branches if bt.kind == 'object']
            for d in deps:
                visit(d)
            order.append(t)

        for t in self.s.types.values():
            if t.kind == 'enum':
                visit(t)
        for t in self.s.types.values():
            visit(t)
        return order

    # -- header ------------------------------------------------------------
    def gen(self):
        H, C = self.h, self.c
        order = self.types_in_order()
        for t in self.s.types.values():
            if t.kind in ('object', 'alternate', 'array'):
                H.append('typedef struct %s %s;\n' % (t.c_name(), t.c_name()))
        H.append('\n')
        for t in order:
            getattr(self, 'type_' + t.kind)(t)

    def type_enum(self, t):
        cn = t.c_name()
        if t.library:
            self.library_enum(t)
        else:
            self.h.append('typedef enum %s {\n' % cn)
            for v, _ in t.values:
                self.h.append('    %s,\n' % t.const(v))
            self.h.append('    %s,\n} %s;\n' % (t.max_const(), cn))
        self.h.append('extern const char *const %s_lookup[];\n' % cn)
        self.h.append('const char *%s_str(%s value);\n' % (cn, cn))
        self.h.append('int %s_parse(const char *s);\n\n' % cn)
        self.c.append('const char *const %s_lookup[] = {\n' % cn)
        for v, _ in t.values:
            self.c.append('    [%s] = "%s",\n' % (t.const(v), v))
        self.c.append('    NULL,\n};\n\n')
        self.c.append('const char *%s_str(%s value)\n{\n'
                      '    return (unsigned)value < %s ? %s_lookup[value] : NULL;\n}\n\n'
                      % (cn, cn, t.max_const(), cn))
        self.c.append('int %s_parse(const char *s)\n{\n'
                      '    return qapi_enum_parse(%s_lookup, %s, s);\n}\n\n'
                      % (cn, cn, t.max_const()))

    def library_enum(self, t):
        """The library defines the enum; check that it is the schema's.

        A constant missing from the library fails to compile, one with
        another value (or an extra one, which moves __MAX) fails the
        assertion.
        """
        inc = '"%s"' % t.library
        if inc not in self.includes:
            self.includes.append(inc)
        cn = t.c_name()
        self.h.append('/* %s is %s\'s (pragma library-enums). */\n'
                      % (cn, t.library))
        consts = [t.const(v) for v, _ in t.values] + [t.max_const()]
        for i, k in enumerate(consts):
            self.c.append('_Static_assert((int)%s == %d && sizeof(%s) > 0,\n'
                          '               "%s: %s must be %d as in the schema");\n'
                          % (k, i, cn, t.library, k, i))
        self.c.append('\n')

    def type_array(self, t):
        cn = t.c_name()
        e = t.element
        self.h.append('struct %s {\n    struct %s *next;\n    %svalue;\n};\n'
                      % (cn, cn, spaced(ctype(e))))
        self.h.append('void qapi_free_%s(%s *list);\n\n' % (cn, cn))
        self.c.append('void qapi_free_%s(%s *list)\n{\n'
                      '    while (list) {\n        %s *next = list->next;\n'
                      % (cn, cn, cn))
        if needs_free(e):
            self.c.append('        %s\n' % free_stmt(e, 'list->value'))
        self.c.append('        g_free(list);\n        list = next;\n    }\n}\n\n')

    def type_object(self, t):
        cn = t.c_name()
        self.h.append('struct %s {\n' % cn)
        if t.base:
            self.h.append('    /* from %s */\n' % t.base.c_name())
        for m in t.all_members():
            self.h.append(member_decl(m))
        variants = [(c, vt) for c, vt in (t.variants or []) if not vt.is_empty()]
        if variants:
            self.h.append('    union {\n')
            for case, vt in variants:
                self.h.append('        %s %s;\n' % (vt.c_name(), c_name_m(case)))
            self.h.append('    } u;\n')
        if not t.all_members() and not variants:
            self.h.append('    char qapi_dummy_for_empty_struct;\n')
        self.h.append('};\n')
        self.h.append('void qapi_free_%s_members(%s *obj);\n' % (cn, cn))
        self.h.append('void qapi_free_%s(%s *obj);\n\n' % (cn, cn))
        self.c.append('void qapi_free_%s_members(%s *obj)\n{\n' % (cn, cn))
        for m in t.all_members():
            if needs_free(m.type):
                self.c.append('    %s\n' % free_stmt(m.type, 'obj->' + m.c_name()))
        if variants:
            self.c.append('    switch (obj->%s) {\n' % t.tag_member.c_name())
            for case, vt in variants:
                self.c.append('    case %s:\n        qapi_free_%s_members(&obj->u.%s);\n'
                              '        break;\n'
                              % (t.tag_member.type.const(case), vt.c_name(), c_name_m(case)))
            self.c.append('    default:\n        break;\n    }\n')
        self.c.append('}\n\n')
        self.c.append('void qapi_free_%s(%s *obj)\n{\n    if (obj) {\n'
                      '        qapi_free_%s_members(obj);\n        g_free(obj);\n'
                      '    }\n}\n\n' % (cn, cn, cn))

    def type_alternate(self, t):
        cn = t.c_name()
        self.h.append('struct %s {\n    QType type;\n    union {\n' % cn)
        for n, bt in t.branches:
            ct = bt.c_name() + ' ' if bt.kind == 'object' else spaced(ctype(bt))
            self.h.append('        %s%s;\n' % (ct, c_name_m(n)))
        self.h.append('    } u;\n};\n')
        self.h.append('void qapi_free_%s(%s *obj);\n\n' % (cn, cn))
        self.c.append('void qapi_free_%s(%s *obj)\n{\n    if (!obj) {\n        return;\n'
                      '    }\n    switch (obj->type) {\n' % (cn, cn))
        for n, bt in t.branches:
            field = 'obj->u.' + c_name_m(n)
            if bt.kind == 'object':
                stmt = 'qapi_free_%s_members(&%s);' % (bt.c_name(), field)
            elif needs_free(bt):
                stmt = free_stmt(bt, field)
            else:
                continue
            self.c.append('    case %s:\n        %s\n        break;\n'
                          % (QTYPE[json_kind(bt)], stmt))
        self.c.append('    default:\n        break;\n    }\n    g_free(obj);\n}\n\n')


def c_name_m(n):
    from schema import c_name
    return c_name(n)


def free_stmt(t, lv):
    if t.builtin:
        if t.name in ('any', 'null'):
            return 'json_decref(%s);' % lv
        return 'g_free(%s);' % lv
    return 'qapi_free_%s(%s);' % (t.c_name(), lv)


BUILTIN_IN = {
    'str': 'return qapi_read_str(up, name, v, out, errp);',
    'int': 'return qapi_read_int(up, name, v, INT64_MIN, INT64_MAX, "int64_t", out, errp);',
    'int64': 'return qapi_read_int(up, name, v, INT64_MIN, INT64_MAX, "int64_t", out, errp);',
    'uint64': 'return qapi_read_uint(up, name, v, UINT64_MAX, "uint64_t", out, errp);',
    'size': 'return qapi_read_size(up, name, v, out, errp);',
    'number': 'return qapi_read_number(up, name, v, out, errp);',
    'bool': 'return qapi_read_bool(up, name, v, out, errp);',
    'any': 'return qapi_read_any(up, name, v, out, errp);',
    'null': 'return qapi_read_null(up, name, v, out, errp);',
}
NARROW = {'int8': ('INT8', 'int'), 'int16': ('INT16', 'int'), 'int32': ('INT32', 'int'),
          'uint8': ('UINT8', 'uint'), 'uint16': ('UINT16', 'uint'),
          'uint32': ('UINT32', 'uint')}

BUILTIN_OUT = {
    'str': 'return qapi_write_str(v ? v : "");',
    'size': 'return qapi_write_uint(v);',
    'uint64': 'return qapi_write_uint(v);',
    'number': 'return json_real(v);',
    'bool': 'return json_boolean(v);',
    'any': 'return v ? json_incref(v) : json_null();',
    'null': 'return json_null();',
}


class VisitGen:
    """qapi_in_T() (JSON -> C) and qapi_out_T() (C -> JSON) for every type."""

    def __init__(self, schema):
        self.s = schema
        self.h = []
        self.c = []

    def gen(self):
        for t in self.s.types.values():
            self.decl(t)
        for t in self.s.types.values():
            getattr(self, 'v_' + t.kind)(t)

    def decl(self, t):
        cn = fn(t)
        ct = ctype(t)
        self.h.append('bool qapi_in_%s(const QapiIn *up, const char *name, json_t *v,\n'
                      '    %s*out, GError **errp);\n' % (cn, spaced(ct)))
        self.h.append('json_t *qapi_out_%s(%sv);\n' % (cn, spaced(ct)))
        if t.kind == 'object':
            self.h.append('bool qapi_in_%s_members(QapiIn *in, %s *obj, GError **errp);\n'
                          % (cn, cn))
            self.h.append('bool qapi_in_%s_body(const QapiIn *up, const char *name, '
                          'json_t *v,\n    %s *obj, GError **errp);\n' % (cn, cn))
            self.h.append('void qapi_out_%s_members(json_t *dict, const %s *obj);\n'
                          % (cn, cn))
        if t.kind in ('object', 'alternate', 'array') and not t.is_implicit():
            self.h.append('%sqapi_%s_from_json(json_t *v, GError **errp);\n'
                          '%sqapi_%s_from_keyval(json_t *v, GError **errp);\n'
                          'json_t *qapi_%s_to_json(const %s *obj);\n'
                          % (spaced(ct), cn, spaced(ct), cn, cn, cn))
            self.c.append('%sqapi_%s_from_json(json_t *v, GError **errp)\n{\n'
                          '    QapiIn root;\n    %sout = NULL;\n'
                          '    qapi_in_init(&root, false);\n'
                          '    return qapi_in_%s(&root, NULL, v, &out, errp) ? out : NULL;\n}\n\n'
                          % (spaced(ct), cn, spaced(ct), cn))
            self.c.append('%sqapi_%s_from_keyval(json_t *v, GError **errp)\n{\n'
                          '    QapiIn root;\n    %sout = NULL;\n'
                          '    qapi_in_init(&root, true);\n'
                          '    return qapi_in_%s(&root, NULL, v, &out, errp) ? out : NULL;\n}\n\n'
                          % (spaced(ct), cn, spaced(ct), cn))
            self.c.append('json_t *qapi_%s_to_json(const %s *obj)\n{\n'
                          '    return qapi_out_%s((%s *)obj);\n}\n\n' % (cn, cn, cn, cn))
        self.h.append('\n')

    def v_builtin(self, t):
        cn, ct = fn(t), ctype(t)
        C = self.c
        C.append('bool qapi_in_%s(const QapiIn *up, const char *name, json_t *v,\n'
                 '    %s*out, GError **errp)\n{\n' % (cn, spaced(ct)))
        if t.name in NARROW:
            lim, kind = NARROW[t.name]
            if kind == 'int':
                C.append('    int64_t val;\n    if (!qapi_read_int(up, name, v, %s_MIN, %s_MAX, '
                         '"%s", &val, errp)) {\n        return false;\n    }\n'
                         % (lim, lim, t.ctype))
            else:
                C.append('    uint64_t val;\n    if (!qapi_read_uint(up, name, v, %s_MAX, '
                         '"%s", &val, errp)) {\n        return false;\n    }\n'
                         % (lim, t.ctype))
            C.append('    *out = val;\n    return true;\n}\n\n')
        else:
            C.append('    %s\n}\n\n' % BUILTIN_IN[t.name])
        out = BUILTIN_OUT.get(t.name, 'return json_integer(v);')
        C.append('json_t *qapi_out_%s(%sv)\n{\n    %s\n}\n\n' % (cn, spaced(ct), out))

    def v_enum(self, t):
        cn = fn(t)
        self.c.append('bool qapi_in_%s(const QapiIn *up, const char *name, json_t *v,\n'
                      '    %s *out, GError **errp)\n{\n    int val;\n'
                      '    if (!qapi_read_enum(up, name, v, %s_lookup, %s, &val, errp)) {\n'
                      '        return false;\n    }\n    *out = val;\n    return true;\n}\n\n'
                      % (cn, cn, cn, t.max_const()))
        self.c.append('json_t *qapi_out_%s(%s v)\n{\n    return json_string(%s_str(v));\n}\n\n'
                      % (cn, cn, cn))

    def v_array(self, t):
        cn, e = fn(t), t.element
        C = self.c
        C.append('bool qapi_in_%s(const QapiIn *up, const char *name, json_t *v,\n'
                 '    %s **out, GError **errp)\n{\n' % (cn, cn))
        C.append('    QapiIn in;\n    %s *head = NULL, **tail = &head;\n'
                 '    size_t i;\n    json_t *e;\n\n'
                 '    if (!qapi_in_is_array(up, name, v, errp)) {\n        return false;\n    }\n'
                 '    qapi_in_push(&in, up, name, v);\n'
                 '    json_array_foreach(v, i, e) {\n'
                 '        %s *node = g_new0(%s, 1);\n'
                 '        *tail = node;\n        tail = &node->next;\n'
                 '        in.index = i;\n'
                 '        if (!qapi_in_%s(&in, NULL, e, &node->value, errp)) {\n'
                 '            qapi_in_pop(&in);\n            qapi_free_%s(head);\n'
                 '            return false;\n        }\n    }\n'
                 '    qapi_in_pop(&in);\n    *out = head;\n    return true;\n}\n\n'
                 % (cn, cn, cn, fn(e), cn))
        C.append('json_t *qapi_out_%s(%s *v)\n{\n    json_t *a = json_array();\n'
                 '    for (; v; v = v->next) {\n'
                 '        json_array_append_new(a, qapi_out_%s(v->value));\n'
                 '    }\n    return a;\n}\n\n' % (cn, cn, fn(e)))

    def read_member(self, m, lv):
        cn = m.c_name()
        out = '    v = qapi_in_member(in, "%s");\n    if (v) {\n' % m.name
        if m.has_flag():
            out += '        obj->has_%s = true;\n' % cn
        out += ('        if (!qapi_in_%s(in, "%s", v, &%s, errp)) {\n'
                '            return false;\n        }\n    }' % (fn(m.type), m.name, lv))
        if not m.optional:
            out += ' else {\n        return qapi_in_missing(in, "%s", errp);\n    }' % m.name
        return out + '\n'

    def v_object(self, t):
        cn = fn(t)
        C = self.c
        C.append('bool qapi_in_%s_members(QapiIn *in, %s *obj, GError **errp)\n{\n' % (cn, cn))
        if t.local_members:
            C.append('    json_t *v;\n\n')
        if t.base:
            C.append('    if (!qapi_in_%s_members(in, (%s *)obj, errp)) {\n'
                     '        return false;\n    }\n' % (fn(t.base), t.base.c_name()))
        for m in t.local_members:
            C.append(self.read_member(m, 'obj->' + m.c_name()))
        variants = [(c, vt) for c, vt in (t.variants or []) if not vt.is_empty()]
        if variants:
            C.append('    switch (obj->%s) {\n' % t.tag_member.c_name())
            for case, vt in variants:
                C.append('    case %s:\n        return qapi_in_%s_members(in, &obj->u.%s, errp);\n'
                         % (t.tag_member.type.const(case), fn(vt), c_name_m(case)))
            C.append('    default:\n        break;\n    }\n')
        C.append('    return true;\n}\n\n')

        C.append('bool qapi_in_%s_body(const QapiIn *up, const char *name, json_t *v,\n'
                 '    %s *obj, GError **errp)\n{\n    QapiIn in;\n    bool ok;\n\n'
                 '    if (!qapi_in_is_object(up, name, v, errp)) {\n        return false;\n    }\n'
                 '    qapi_in_push(&in, up, name, v);\n'
                 '    ok = qapi_in_%s_members(&in, obj, errp) &&\n'
                 '         qapi_in_check_struct(&in, errp);\n'
                 '    qapi_in_pop(&in);\n    return ok;\n}\n\n' % (cn, cn, cn))
        C.append('bool qapi_in_%s(const QapiIn *up, const char *name, json_t *v,\n'
                 '    %s **out, GError **errp)\n{\n    %s *obj = g_new0(%s, 1);\n\n'
                 '    if (!qapi_in_%s_body(up, name, v, obj, errp)) {\n'
                 '        qapi_free_%s(obj);\n        return false;\n    }\n'
                 '    *out = obj;\n    return true;\n}\n\n' % (cn, cn, cn, cn, cn, cn))

        C.append('void qapi_out_%s_members(json_t *dict, const %s *obj)\n{\n' % (cn, cn))
        if t.base:
            C.append('    qapi_out_%s_members(dict, (const %s *)obj);\n'
                     % (fn(t.base), t.base.c_name()))
        for m in t.local_members:
            mc = m.c_name()
            set_ = 'json_object_set_new(dict, "%s", qapi_out_%s(obj->%s));' % (
                m.name, fn(m.type), mc)
            if m.has_flag():
                C.append('    if (obj->has_%s) {\n        %s\n    }\n' % (mc, set_))
            elif m.optional:
                C.append('    if (obj->%s) {\n        %s\n    }\n' % (mc, set_))
            else:
                C.append('    %s\n' % set_)
        if variants:
            C.append('    switch (obj->%s) {\n' % t.tag_member.c_name())
            for case, vt in variants:
                C.append('    case %s:\n        qapi_out_%s_members(dict, &obj->u.%s);\n'
                         '        break;\n'
                         % (t.tag_member.type.const(case), fn(vt), c_name_m(case)))
            C.append('    default:\n        break;\n    }\n')
        C.append('}\n\n')
        C.append('json_t *qapi_out_%s(%s *v)\n{\n    json_t *d = json_object();\n'
                 '    if (v) {\n        qapi_out_%s_members(d, v);\n    }\n    return d;\n}\n\n'
                 % (cn, cn, cn))

    def v_alternate(self, t):
        cn = fn(t)
        C = self.c
        C.append('bool qapi_in_%s(const QapiIn *up, const char *name, json_t *v,\n'
                 '    %s **out, GError **errp)\n{\n    %s *obj = g_new0(%s, 1);\n'
                 '    bool ok;\n\n' % (cn, cn, cn, cn))
        conds = []
        by_kind = {json_kind(bt): (n, bt) for n, bt in t.branches}
        for kind, test in (('object', 'json_is_object(v)'), ('string', 'json_is_string(v)'),
                           ('number', 'json_is_number(v)'), ('boolean', 'json_is_boolean(v)'),
                           ('null', 'json_is_null(v)')):
            if kind in by_kind:
                conds.append((test, kind))
        # Keyval mode: strings stand for numbers and bools when no branch
        # takes a string.
        if 'string' not in by_kind:
            if 'number' in by_kind:
                jt = 'number' if by_kind['number'][1].name == 'number' else 'int'
                conds.append(('qapi_in_keyval_looks(up, v, "%s")' % jt, 'number'))
            if 'boolean' in by_kind:
                conds.append(('qapi_in_keyval_looks(up, v, "boolean")', 'boolean'))
        first = True
        for test, kind in conds:
            n, bt = by_kind[kind]
            field = 'obj->u.' + c_name_m(n)
            C.append('    %sif (%s) {\n        obj->type = %s;\n'
                     % ('' if first else '} else ', test, QTYPE[kind]))
            if bt.kind == 'object':
                C.append('        ok = qapi_in_%s_body(up, name, v, &%s, errp);\n'
                         % (fn(bt), field))
            else:
                C.append('        ok = qapi_in_%s(up, name, v, &%s, errp);\n' % (fn(bt), field))
            first = False
        C.append('    } else {\n        qapi_in_alternate_error(name, "%s", errp);\n'
                 '        g_free(obj);\n        return false;\n    }\n' % t.name)
        C.append('    if (!ok) {\n        qapi_free_%s(obj);\n        return false;\n    }\n'
                 '    *out = obj;\n    return true;\n}\n\n' % cn)
        C.append('json_t *qapi_out_%s(%s *v)\n{\n    switch (v ? v->type : QTYPE_NONE) {\n'
                 % (cn, cn))
        for n, bt in t.branches:
            field = 'v->u.' + c_name_m(n)
            if bt.kind == 'object':
                expr = 'qapi_out_%s(&%s)' % (fn(bt), field)
            else:
                expr = 'qapi_out_%s(%s)' % (fn(bt), field)
            C.append('    case %s:\n        return %s;\n' % (QTYPE[json_kind(bt)], expr))
        C.append('    default:\n        return json_null();\n    }\n}\n\n')
