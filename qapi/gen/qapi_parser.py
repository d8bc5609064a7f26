"""Read QAPI schema files: QEMU's JSON dialect (single-quoted strings,
'#' comments, a sequence of top-level objects) with 'include' resolved.

Every error names the file and line, so a schema author sees where to look.
"""

import os


class SchemaError(Exception):
    pass


class Expr:
    """One top-level definition with where it came from."""

    def __init__(self, data, fname, line, module):
        self.data = data
        self.fname = fname
        self.line = line
        # Files in the order their include was met (the top file is 0):
        # QEMU lists commands and events by file in this order.
        self.module = module

    def where(self):
        return '%s:%d' % (self.fname, self.line)


class _Lexer:
    def __init__(self, text, fname):
        self.text = text
        self.fname = fname
        self.pos = 0
        self.line = 1

    def error(self, msg):
        raise SchemaError('%s:%d: %s' % (self.fname, self.line, msg))

    def skip_space(self):
        t = self.text
        while self.pos < len(t):
            c = t[self.pos]
            if c == '#':
                while self.pos < len(t) and t[self.pos] != '\n':
                    self.pos += 1
            elif c == '\n':
                self.line += 1
                self.pos += 1
            elif c in ' \t\r':
                self.pos += 1
            else:
                break

    def peek(self):
        self.skip_space()
        return self.text[self.pos] if self.pos < len(self.text) else ''

    def value(self):
        c = self.peek()
        if c == '{':
            return self.obj()
        if c == '[':
            return self.array()
        if c == "'":
            return self.string()
        for word, val in (('true', True), ('false', False)):
            if self.text.startswith(word, self.pos):
                self.pos += len(word)
                return val
        if c == '':
            self.error('unexpected end of file')
        self.no_double_quotes()
        self.error("stray '%s'" % c)

    def no_double_quotes(self):
        if self.peek() == '"':
            self.error("strings take single quotes in a QAPI schema, not '\"'")

    def expect(self, ch):
        if self.peek() != ch:
            self.error("expected '%s'" % ch)
        self.pos += 1

    def string(self):
        self.expect("'")
        out = []
        t = self.text
        while True:
            if self.pos >= len(t) or t[self.pos] == '\n':
                self.error('missing terminating "\'"')
            c = t[self.pos]
            self.pos += 1
            if c == "'":
                return ''.join(out)
            if c == '\\':
                self.error('escape sequences are not supported in schema strings')
            if not (32 <= ord(c) < 127):
                self.error('funny character in string')
            out.append(c)

    def obj(self):
        self.expect('{')
        out = {}
        if self.peek() == '}':
            self.pos += 1
            return out
        while True:
            self.no_double_quotes()
            if self.peek() != "'":
                self.error('expected string as object key')
            key = self.string()
            if key in out:
                self.error("duplicate key '%s'" % key)
            self.expect(':')
            out[key] = self.value()
            c = self.peek()
            self.pos += 1
            if c == '}':
                return out
            if c != ',':
                self.error("expected ',' or '}'")

    def array(self):
        self.expect('[')
        out = []
        if self.peek() == ']':
            self.pos += 1
            return out
        while True:
            out.append(self.value())
            c = self.peek()
            self.pos += 1
            if c == ']':
                return out
            if c != ',':
                self.error("expected ',' or ']'")


def parse_file(path, seen=None, exprs=None):
    """All definitions of path and the files it includes, in order."""
    path = os.path.normpath(path)
    if seen is None:
        seen, exprs = [], []
    if path in seen:
        return exprs
    seen.append(path)
    module = len(seen) - 1
    try:
        with open(path, encoding='utf-8') as f:
            text = f.read()
    except OSError as e:
        raise SchemaError('%s: %s' % (path, e.strerror))
    lex = _Lexer(text, path)
    while lex.peek():
        line = lex.line
        if lex.peek() != '{':
            lex.error('expected a top-level object')
        data = lex.obj()
        if 'include' in data:
            if len(data) != 1 or not isinstance(data['include'], str):
                raise SchemaError("%s:%d: 'include' takes only a file name"
                                  % (path, line))
            inc = os.path.join(os.path.dirname(path), data['include'])
            if not os.path.exists(inc):
                raise SchemaError("%s:%d: included file '%s' not found"
                                  % (path, line, data['include']))
            parse_file(inc, seen, exprs)
            continue
        exprs.append(Expr(data, path, line, module))
    return exprs
