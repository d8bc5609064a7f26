"""The value query-qmp-schema returns (SchemaInfo list, QEMU's layout).

Commands and events come first (in schema order), then every type they
reach, each once.
Type names other than the built-ins are replaced by numbers in order of
first use, as QEMU does, so clients cannot come to depend on them.
"""

import json

from schema import Object, Command


class IntrospectGen:
    def __init__(self, schema, unmask=False):
        self.s = schema
        self.unmask = unmask
        self.names = {}
        self.queue = []
        self.count = 0
        self.empty = Object('q_empty', None, None, [])

    def ref(self, t):
        """The name type t goes by; queues t for output on first use.

        As in QEMU, a type is queued before the types it names (an array
        before its element), built-ins included, so the numbers and the
        order of the output follow the first use."""
        if t is None:
            t = self.empty
        if t.builtin:
            key = t.intro_name()
            if key not in self.names:
                self.names[key] = key
                self.queue.append([key, self.s.types[key]])
            return key
        if t.kind == 'array':
            e = t.element
            key = '[%s' % (e.intro_name() if e.builtin else e.name)
            if key not in self.names:
                entry = [None, t]
                self.queue.append(entry)
                self.names[key] = entry
                entry[0] = '[%s]' % self.ref(e)
            return self.names[key][0]
        if t.name not in self.names:
            self.names[t.name] = t.name if self.unmask else str(self.count)
            self.count += 1
            self.queue.append([self.names[t.name], t])
        return self.names[t.name]

    @staticmethod
    def features(d, feats):
        if feats:
            d['features'] = list(feats)
        return d

    def tree(self):
        out = []
        for ent in self.s.entities:
            if isinstance(ent, Command):
                d = {'name': ent.name, 'meta-type': 'command',
                     'arg-type': self.ref(ent.arg_type), 'ret-type': self.ref(ent.ret)}
                if 'QMP_CMD_ALLOW_OOB' in ent.flags:
                    d['allow-oob'] = True
            else:
                d = {'name': ent.name, 'meta-type': 'event',
                     'arg-type': self.ref(ent.arg_type)}
            out.append(self.features(d, ent.features))
        i = 0
        while i < len(self.queue):
            name, t = self.queue[i]
            i += 1
            out.append(self.type_info(name, t))
        return out

    def type_info(self, name, t):
        if t.builtin:
            return {'name': name, 'meta-type': 'builtin', 'json-type': t.json_type}
        if t.kind == 'array':
            return {'name': name, 'meta-type': 'array',
                    'element-type': self.ref(t.element)}
        if t.kind == 'enum':
            return self.features({'name': name, 'meta-type': 'enum',
                                  'members': [self.features({'name': v}, f)
                                              for v, f in t.values],
                                  'values': [v for v, _ in t.values]}, t.features)
        if t.kind == 'alternate':
            return self.features({'name': name, 'meta-type': 'alternate',
                                  'members': [{'type': self.ref(bt)}
                                              for _, bt in t.branches]}, t.features)
        members = []
        for m in t.all_members():
            md = {'name': m.name, 'type': self.ref(m.type)}
            if m.optional:
                md['default'] = None
            members.append(self.features(md, m.features))
        d = {'name': name, 'meta-type': 'object', 'members': members}
        if t.variants is not None:
            d['tag'] = t.tag
            declared = dict(t.variants)
            d['variants'] = [{'case': v, 'type': self.ref(declared.get(v))}
                             for v, _ in t.tag_member.type.values]
        return self.features(d, t.features)

    def gen(self):
        text = json.dumps(self.tree(), separators=(',', ':'))
        lines = []
        for i in range(0, len(text), 100):
            chunk = text[i:i + 100].replace('\\', '\\\\').replace('"', '\\"')
            lines.append('    "%s"\n' % chunk)
        return ('/* query-qmp-schema, generated from the schema: do not edit. */\n'
                '#include <jansson.h>\n#include "strata/qmp.h"\n\n'
                'static const char schema_json[] =\n%s;\n\n'
                'json_t *qmp_introspection(void)\n{\n'
                '    static json_t *cached;\n'
                '    if (!cached) {\n'
                '        cached = json_loads(schema_json, 0, NULL);\n'
                '    }\n'
                '    /* A copy: the caller owns it and may change it. */\n'
                '    return json_deep_copy(cached);\n}\n' % ''.join(lines))
