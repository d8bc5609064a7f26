"""The schema model: definitions checked and resolved into types.

Naming rules (docs/qapi.md): C names replace '-' and '.' by '_' and prefix
C keywords and names the C compiler predefines with 'q_'; enum constants are
the enum's name in upper case with '_' between words, then the value.
"""

import re

from qapi_parser import SchemaError

C_WORDS = set('''
auto break case char const continue default do double else enum extern float
for goto if inline int long register restrict return short signed sizeof
static struct switch typedef union unsigned void volatile while _Alignas
_Alignof _Atomic _Bool _Complex _Generic _Imaginary _Noreturn _Static_assert
_Thread_local asm typeof bool true false errno unix linux i386 mips sparc
'''.split())

SPECIAL_FEATURES = ('deprecated', 'unstable')


def c_name(name, protect=True):
    name = re.sub(r'[^A-Za-z0-9_]', '_', name)
    if protect and (name in C_WORDS or name[0].isdigit()):
        return 'q_' + name
    return name


def camel_to_upper(value):
    """BlockdevDriver -> BLOCKDEV_DRIVER, QMPCapability -> QMP_CAPABILITY."""
    s = c_name(value, False)
    if value.isupper():
        return s
    out = ''
    for i, ch in enumerate(s):
        if ch.isupper() and i > 0 and s[i - 1] != '_':
            if i + 1 < len(s) and s[i + 1].islower():
                out += '_'
            elif s[i - 1].isdigit():
                out += '_'
        out += ch
    return out.lstrip('_').upper()


class Type:
    kind = None
    builtin = False

    def __init__(self, name, where=None):
        self.name = name
        self.where = where
        self.features = []

    def c_name(self):
        return c_name(self.name, False)

    def is_implicit(self):
        return self.name.startswith('q_')


class Builtin(Type):
    kind = 'builtin'
    builtin = True
    # name: (C type, JSON type in introspection, pointer?)
    TABLE = {
        'str': ('char *', 'string'),
        'int': ('int64_t', 'int'),
        'int8': ('int8_t', 'int'), 'int16': ('int16_t', 'int'),
        'int32': ('int32_t', 'int'), 'int64': ('int64_t', 'int'),
        'uint8': ('uint8_t', 'int'), 'uint16': ('uint16_t', 'int'),
        'uint32': ('uint32_t', 'int'), 'uint64': ('uint64_t', 'int'),
        'size': ('uint64_t', 'int'),
        'number': ('double', 'number'),
        'bool': ('bool', 'boolean'),
        'any': ('json_t *', 'value'),
        'null': ('json_t *', 'null'),
    }

    def __init__(self, name):
        super().__init__(name)
        self.ctype, self.json_type = self.TABLE[name]

    def is_pointer(self):
        return self.ctype.endswith('*')

    def intro_name(self):
        # Introspection folds the integer widths into 'int', as QEMU does.
        return {'string': 'str', 'int': 'int', 'number': 'number',
                'boolean': 'bool', 'value': 'any', 'null': 'null'}[self.json_type]


class Enum(Type):
    kind = 'enum'

    def __init__(self, name, where, values, prefix):
        super().__init__(name, where)
        self.values = values            # list of (name, features)
        self.prefix = prefix
        # pragma 'library-enums': the header of the library that defines
        # the C enum (the generated code checks it instead of defining it).
        self.library = None

    def const(self, value):
        pre = self.prefix if self.prefix is not None else camel_to_upper(self.name)
        return (pre + '_' + c_name(value, False)).upper()

    def max_const(self):
        pre = self.prefix if self.prefix is not None else camel_to_upper(self.name)
        return (pre + '__MAX').upper()


class Array(Type):
    kind = 'array'

    def __init__(self, element):
        super().__init__(element.name + 'List')
        self.element = element

    def c_name(self):
        return c_name(self.element.name, False) + 'List'


class Member:
    def __init__(self, name, typ, optional, features):
        self.name = name
        self.type = typ                 # a name until resolved, then a Type
        self.optional = optional
        self.features = features

    def c_name(self):
        return c_name(self.name)

    def has_flag(self):
        """Optional members whose absence a NULL cannot tell."""
        t = self.type
        return self.optional and (t.kind == 'enum' or
                                  (t.builtin and not t.is_pointer()))


class Object(Type):
    """A struct, or a union when variants is set."""
    kind = 'object'

    def __init__(self, name, where, base, members, features=()):
        super().__init__(name, where)
        self.base = base
        self.local_members = members
        self.features = list(features)
        self.tag = None                 # discriminator member name
        self.variants = None            # list of (case, Object or None)

    def all_members(self):
        base = self.base.all_members() if self.base else []
        return base + self.local_members

    def is_empty(self):
        return not self.all_members() and not self.variants


class Alternate(Type):
    kind = 'alternate'

    def __init__(self, name, where, branches, features=()):
        super().__init__(name, where)
        self.branches = branches        # list of (name, Type)
        self.features = list(features)


class Command:
    def __init__(self, name, where, arg_type, boxed, ret, flags, features):
        self.name = name
        self.where = where
        self.arg_type = arg_type
        self.boxed = boxed
        self.ret = ret
        self.flags = flags
        self.features = features


class Event:
    def __init__(self, name, where, arg_type, boxed, features):
        self.name = name
        self.where = where
        self.arg_type = arg_type
        self.boxed = boxed
        self.features = features


KEYS = {
    'enum': ({'enum', 'data'}, {'prefix', 'features', 'if'}),
    'struct': ({'struct', 'data'}, {'base', 'features', 'if'}),
    'union': ({'union', 'base', 'discriminator', 'data'}, {'features', 'if'}),
    'alternate': ({'alternate', 'data'}, {'features', 'if'}),
    'command': ({'command'}, {'data', 'returns', 'boxed', 'allow-oob',
                              'allow-preconfig', 'success-response',
                              'features', 'if', 'coroutine', 'gen'}),
    'event': ({'event'}, {'data', 'boxed', 'features', 'if'}),
}

NAME_RE = re.compile(r'^[A-Za-z][A-Za-z0-9_.-]*$')
# Enum values may start with a digit ('3des'): the constant has a prefix.
VALUE_RE = re.compile(r'^[A-Za-z0-9][A-Za-z0-9_.-]*$')


class Schema:
    def __init__(self, exprs):
        self.types = {}                 # name -> Type, in definition order
        self.commands = []
        self.events = []
        # pragma 'command-returns-exceptions': commands allowed a scalar.
        self.returns_exceptions = set()
        # pragma 'library-enums': enum name -> library header.
        self.library_enums = {}
        self._library_where = {}
        self.entities = []              # commands and events, in order
        for b in Builtin.TABLE:
            self._add_type(Builtin(b), None)
        for e in exprs:
            self._module = e.module
            self._define(e)
        self._resolve()
        self.entities.sort(key=lambda ent: ent.module)

    # -- definition -------------------------------------------------------
    def _err(self, where, msg):
        raise SchemaError('%s: %s' % (where, msg))

    def _add_type(self, t, where):
        if t.name in self.types:
            self._err(where, "'%s' is already defined" % t.name)
        self.types[t.name] = t
        return t

    def _check_name(self, where, what, name):
        regex = VALUE_RE if what == 'enum value' else NAME_RE
        if not isinstance(name, str) or not regex.match(name):
            self._err(where, "%s name '%s' is not a valid name" % (what, name))

    def _features(self, where, raw):
        if raw is None:
            return []
        if not isinstance(raw, list):
            self._err(where, "'features' must be an array")
        out = []
        for f in raw:
            if isinstance(f, dict):
                if 'if' in f:
                    self._err(where, "'if' is not supported (conditional "
                              "compilation: strata builds everything)")
                f = f.get('name')
            if not isinstance(f, str):
                self._err(where, "feature must be a string")
            out.append(f)
        return out

    def _members(self, where, owner, data):
        if not isinstance(data, dict):
            self._err(where, "'data' of '%s' must be an object" % owner)
        out = []
        for key, val in data.items():
            opt = key.startswith('*')
            name = key[1:] if opt else key
            self._check_name(where, 'member', name)
            feats = []
            if isinstance(val, dict):
                if 'if' in val:
                    self._err(where, "member '%s': 'if' is not supported" % name)
                extra = set(val) - {'type', 'features'}
                if extra or 'type' not in val:
                    self._err(where, "member '%s' must have 'type' and may "
                              "have 'features' only" % name)
                feats = self._features(where, val.get('features'))
                val = val['type']
            out.append(Member(name, self._typeref(where, val), opt, feats))
        names = [m.name for m in out]
        for n in names:
            if names.count(n) > 1 or (c_name(n) != n and
                                      [c_name(x) for x in names].count(c_name(n)) > 1):
                self._err(where, "'%s' has member '%s' twice" % (owner, n))
        return out

    def _pragma(self, where, d):
        if len(d) != 1 or not isinstance(d['pragma'], dict):
            self._err(where, "'pragma' takes an object and nothing else")
        for key, val in d['pragma'].items():
            if key == 'command-returns-exceptions':
                if not isinstance(val, list) or not all(isinstance(v, str) for v in val):
                    self._err(where, "pragma '%s' must be a list of names" % key)
                self.returns_exceptions.update(val)
            elif key == 'library-enums':
                if not isinstance(val, dict) or not all(
                        isinstance(v, str) for v in val.values()):
                    self._err(where, "pragma 'library-enums' must map enum "
                              "names to header names")
                for name, hdr in val.items():
                    if name in self.library_enums:
                        self._err(where, "pragma 'library-enums' names '%s' "
                                  "twice" % name)
                    self.library_enums[name] = hdr
                    self._library_where[name] = where
            # Other pragmas govern QEMU's documentation and naming checks.

    def _typeref(self, where, val):
        if isinstance(val, list):
            if len(val) != 1 or not isinstance(val[0], str):
                self._err(where, 'an array type must contain one type name')
            return ('list', val[0])
        if not isinstance(val, str):
            self._err(where, 'a type must be a name or an array of one name')
        return val

    def _implicit(self, where, name, data):
        """An anonymous object type for an inline 'data' or 'base'."""
        t = Object(name, where, None, self._members(where, name, data))
        return self._add_type(t, where)

    def _define(self, e):
        d = e.data
        where = e.where()
        if 'pragma' in d:
            self._pragma(where, d)
            return
        meta = [k for k in KEYS if k in d]
        if len(meta) != 1:
            self._err(where, 'a definition must have exactly one of %s'
                      % ', '.join("'%s'" % k for k in KEYS))
        meta = meta[0]
        required, optional = KEYS[meta]
        for k in required:
            if k not in d:
                self._err(where, "%s '%s' lacks '%s'" % (meta, d[meta], k))
        for k in d:
            if k not in required and k not in optional:
                self._err(where, "%s '%s' has unknown key '%s'" % (meta, d[meta], k))
        if 'if' in d:
            self._err(where, "'if' is not supported (conditional compilation: "
                      "strata builds everything)")
        name = d[meta]
        self._check_name(where, meta, name)
        feats = self._features(where, d.get('features'))
        for f in feats:
            self._check_name(where, 'feature', f)

        if meta == 'enum':
            vals = []
            if not isinstance(d['data'], list):
                self._err(where, "enum '%s': 'data' must be an array" % name)
            for v in d['data']:
                vf = []
                if isinstance(v, dict):
                    if 'if' in v:
                        self._err(where, "enum value: 'if' is not supported")
                    vf = self._features(where, v.get('features'))
                    v = v.get('name')
                self._check_name(where, 'enum value', v)
                if v in [x[0] for x in vals]:
                    self._err(where, "enum '%s' has value '%s' twice" % (name, v))
                vals.append((v, vf))
            t = Enum(name, where, vals, d.get('prefix'))
            t.features = feats
            self._add_type(t, where)
        elif meta == 'struct':
            base = d.get('base')
            if base is not None and not isinstance(base, str):
                self._err(where, "struct '%s': 'base' must be a type name" % name)
            t = Object(name, where, base, self._members(where, name, d['data']), feats)
            self._add_type(t, where)
        elif meta == 'union':
            base = d['base']
            if isinstance(base, dict):
                base = self._implicit(where, 'q_obj_%s-base' % name, base).name
            t = Object(name, where, base, [], feats)
            t.tag = d['discriminator']
            if not isinstance(d['data'], dict):
                self._err(where, "union '%s': 'data' must be an object" % name)
            t.variants = []
            for case, vt in d['data'].items():
                if isinstance(vt, dict):
                    if set(vt) != {'type'}:
                        self._err(where, "union '%s' branch '%s': only 'type' "
                                  "is supported" % (name, case))
                    vt = vt['type']
                if not isinstance(vt, str):
                    self._err(where, "union '%s' branch '%s' must name a "
                              "struct type" % (name, case))
                t.variants.append((case, vt))
            self._add_type(t, where)
        elif meta == 'alternate':
            if not isinstance(d['data'], dict) or not d['data']:
                self._err(where, "alternate '%s' needs at least one branch" % name)
            br = [(k, self._typeref(where, v)) for k, v in d['data'].items()]
            self._add_type(Alternate(name, where, br, feats), where)
        elif meta in ('command', 'event'):
            data = d.get('data')
            boxed = d.get('boxed', False)
            if isinstance(data, dict):
                if boxed:
                    self._err(where, "'boxed': true needs 'data' naming a type")
                suffix = 'arg' if meta == 'command' else 'arg'
                data = self._implicit(where, 'q_obj_%s-%s' % (name, suffix), data).name
            elif data is not None and not isinstance(data, str):
                self._err(where, "'data' must be an object or a type name")
            elif boxed and data is None:
                self._err(where, "'boxed': true needs 'data'")
            if meta == 'command':
                if d.get('gen') is False:
                    self._err(where, "'gen': false is not supported")
                flags = []
                for key, flag, default in (('allow-oob', 'QMP_CMD_ALLOW_OOB', False),
                                           ('allow-preconfig', 'QMP_CMD_ALLOW_PRECONFIG', False),
                                           ('success-response', 'QMP_CMD_NO_SUCCESS_REPLY', True),
                                           ('boxed', None, False),
                                           ('coroutine', None, False)):
                    v = d.get(key, default)
                    if not isinstance(v, bool):
                        self._err(where, "'%s' must be true or false" % key)
                    if flag and v != default:
                        flags.append(flag)
                if 'deprecated' in feats:
                    flags.append('QMP_CMD_DEPRECATED')
                if 'unstable' in feats:
                    flags.append('QMP_CMD_UNSTABLE')
                ret = d.get('returns')
                if ret is not None:
                    ret = self._typeref(where, ret)
                if name in [c.name for c in self.commands]:
                    self._err(where, "command '%s' is defined twice" % name)
                self.commands.append(Command(name, where, data, boxed, ret, flags, feats))
                self.commands[-1].module = self._module
                self.entities.append(self.commands[-1])
            else:
                if not name.isupper():
                    self._err(where, "event name '%s' must be upper case" % name)
                if name in [ev.name for ev in self.events]:
                    self._err(where, "event '%s' is defined twice" % name)
                self.events.append(Event(name, where, data, boxed, feats))
                self.events[-1].module = self._module
                self.entities.append(self.events[-1])

    # -- resolution -------------------------------------------------------
    def lookup(self, where, ref, allow=None):
        if isinstance(ref, tuple):
            elem = self.lookup(where, ref[1])
            name = elem.name + 'List'
            t = self.types.get(name)
            if t is None:
                t = Array(elem)
                self.types[name] = t
            return t
        t = self.types.get(ref)
        if t is None:
            self._err(where, "uses unknown type '%s'" % ref)
        if allow and t.kind not in allow:
            self._err(where, "'%s' is a %s, but a %s is needed here"
                      % (ref, t.kind, ' or '.join(allow)))
        return t

    def _resolve(self):
        for name, hdr in self.library_enums.items():
            t = self.types.get(name)
            if not isinstance(t, Enum):
                self._err(self._library_where[name], "pragma 'library-enums': "
                          "'%s' is not an enum of the schema" % name)
            t.library = hdr
        for t in list(self.types.values()):
            if isinstance(t, Object):
                if isinstance(t.base, str):
                    t.base = self.lookup(t.where, t.base, ['object'])
                    if t.base.variants:
                        self._err(t.where, "base '%s' of '%s' is a union"
                                  % (t.base.name, t.name))
                for m in t.local_members:
                    m.type = self.lookup(t.where, m.type)
            elif isinstance(t, Alternate):
                t.branches = [(n, self.lookup(t.where, r)) for n, r in t.branches]
        for t in list(self.types.values()):
            if isinstance(t, Object):
                self._check_object(t)
            elif isinstance(t, Alternate):
                self._check_alternate(t)
        for c in self.commands:
            if c.arg_type is not None:
                c.arg_type = self.lookup(c.where, c.arg_type, ['object'])
                if c.arg_type.variants and not c.boxed:
                    self._err(c.where, "command '%s': a union as 'data' needs "
                              "'boxed': true" % c.name)
            if c.ret is not None:
                c.ret = self.lookup(c.where, c.ret)
                r = c.ret.element if c.ret.kind == 'array' else c.ret
                if (r.kind not in ('object', 'alternate') and r.name != 'any'
                        and c.name not in self.returns_exceptions):
                    self._err(c.where, "command '%s' must return an object type "
                              "or an array of them" % c.name)
        for ev in self.events:
            if ev.arg_type is not None:
                ev.arg_type = self.lookup(ev.where, ev.arg_type, ['object'])
                if ev.arg_type.variants and not ev.boxed:
                    self._err(ev.where, "event '%s': a union as 'data' needs "
                              "'boxed': true" % ev.name)

    def _check_object(self, t):
        # Checked once; a union branch is checked before the union using it.
        state = getattr(t, '_checked', None)
        if state == 'done':
            return
        if state == 'busy':
            self._err(t.where, "union '%s' contains itself as a branch" % t.name)
        t._checked = 'busy'
        self._check_object_once(t)
        t._checked = 'done'

    def _check_object_once(self, t):
        seen = {}
        for m in t.all_members():
            if m.name in seen:
                self._err(t.where, "'%s' has member '%s' twice (with its base)"
                          % (t.name, m.name))
            seen[m.name] = m
        if t.variants is None:
            return
        tag = seen.get(t.tag)
        if tag is None or tag not in t.base.all_members():
            self._err(t.where, "discriminator '%s' is not a member of the base of "
                      "union '%s'" % (t.tag, t.name))
        if tag.optional or tag.type.kind != 'enum':
            self._err(t.where, "discriminator '%s' of union '%s' must be a "
                      "mandatory enum member" % (t.tag, t.name))
        t.tag_member = tag
        values = [v for v, _ in tag.type.values]
        resolved = []
        for case, vt in t.variants:
            if case not in values:
                self._err(t.where, "union '%s' branch '%s' is not a value of '%s'"
                          % (t.name, case, tag.type.name))
            vt = self.lookup(t.where, vt, ['object'])
            # A branch may itself be a union (QEMU's MigrationAddress has
            # SocketAddress as its 'socket' branch): its members, those of
            # each of its own branches too, must not clash with ours.
            if vt.variants:
                self._check_object(vt)     # its branches resolved first
            for m in self._reachable_members(vt):
                if m.name in seen:
                    self._err(t.where, "union '%s' branch '%s' repeats member '%s'"
                              % (t.name, case, m.name))
            resolved.append((case, vt))
        t.variants = resolved

    def _reachable_members(self, t):
        """Every member an object of type t can have: its own, and those
        of each of its branches (recursively: a branch can be a union)."""
        out = list(t.all_members())
        for _, vt in t.variants or []:
            out += self._reachable_members(vt)
        return out

    def _check_alternate(self, t):
        used = {}
        for n, bt in t.branches:
            if bt.kind == 'array':
                self._err(t.where, "alternate '%s' branch '%s' cannot be an array"
                          % (t.name, n))
            q = json_kind(bt)
            if q == 'any':
                self._err(t.where, "alternate '%s' branch '%s' cannot be 'any'"
                          % (t.name, n))
            if q in used:
                self._err(t.where, "alternate '%s' branches '%s' and '%s' cannot "
                          "be told apart" % (t.name, used[q], n))
            used[q] = n

    def object_types(self):
        return [t for t in self.types.values() if isinstance(t, Object)]


def json_kind(t):
    """The JSON type an alternate tells a branch by."""
    if t.kind == 'enum':
        return 'string'
    if t.kind == 'object':
        return 'object'
    if t.kind == 'alternate':
        return 'alternate'
    return {'string': 'string', 'int': 'number', 'number': 'number',
            'boolean': 'boolean', 'null': 'null', 'value': 'any'}[t.json_type]
