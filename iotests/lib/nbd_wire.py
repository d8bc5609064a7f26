"""A raw NBD client for tests that must send what libnbd never would:
bad lengths, unknown options and commands, oversized and truncated
requests, early hang-ups.  Only the socket and struct modules; every call
has a timeout, and what it reads is returned, not interpreted."""

import socket
import struct

NBDMAGIC = 0x4e42444d41474943
IHAVEOPT = 0x49484156454f5054
REPLY_MAGIC = 0x3e889045565a9
REQUEST_MAGIC = 0x25609513
SIMPLE_MAGIC = 0x67446698
STRUCTURED_MAGIC = 0x668e33ef

OPT = {'export-name': 1, 'abort': 2, 'list': 3, 'starttls': 5, 'info': 6,
       'go': 7, 'structured-reply': 8, 'list-meta': 9, 'set-meta': 10}
REP = {1: 'ACK', 2: 'SERVER', 3: 'INFO', 4: 'META_CONTEXT',
       0x80000001: 'ERR_UNSUP', 0x80000002: 'ERR_POLICY',
       0x80000003: 'ERR_INVALID', 0x80000004: 'ERR_PLATFORM',
       0x80000005: 'ERR_TLS_REQD', 0x80000006: 'ERR_UNKNOWN',
       0x80000007: 'ERR_SHUTDOWN', 0x80000008: 'ERR_BLOCK_SIZE_REQD'}
CMD = {'read': 0, 'write': 1, 'disc': 2, 'flush': 3, 'trim': 4, 'cache': 5,
       'write-zeroes': 6, 'block-status': 7}
CHUNK = {0: 'NONE', 1: 'OFFSET_DATA', 2: 'OFFSET_HOLE', 5: 'BLOCK_STATUS',
         0x8001: 'ERROR', 0x8002: 'ERROR_OFFSET'}


class Closed(Exception):
    pass


class Wire:
    def __init__(self, path, timeout=10):
        self.s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.s.settimeout(timeout)
        self.s.connect(path)

    def recv(self, n):
        buf = b''
        while len(buf) < n:
            try:
                chunk = self.s.recv(n - len(buf))
            except ConnectionResetError:
                chunk = b''
            if not chunk:
                raise Closed('closed after %d of %d bytes' % (len(buf), n))
            buf += chunk
        return buf

    def send(self, data):
        self.s.sendall(data)

    def closed_by_server(self):
        """True if the server has hung up (reads end of file)."""
        try:
            return self.s.recv(1) == b''
        except ConnectionResetError:
            return True
        except socket.timeout:
            return False

    def close(self):
        self.s.close()

    # -- handshake
    def greeting(self):
        magic, opts, flags = struct.unpack('>QQH', self.recv(18))
        return magic == NBDMAGIC and opts == IHAVEOPT, flags

    def client_flags(self, flags=3):
        self.send(struct.pack('>I', flags))

    def option(self, opt, payload=b'', length=None):
        opt = OPT.get(opt, opt)
        self.send(struct.pack('>QII', IHAVEOPT, opt,
                              len(payload) if length is None else length)
                  + payload)

    def reply(self):
        """(type name, payload) of one option reply."""
        magic, opt, rtype, length = struct.unpack('>QIII', self.recv(20))
        assert magic == REPLY_MAGIC, hex(magic)
        return REP.get(rtype, hex(rtype)), self.recv(length)

    def replies(self):
        """Option replies up to the final one (ACK or an error)."""
        out = []
        while True:
            name, payload = self.reply()
            out.append((name, payload))
            if name != 'SERVER' and name != 'INFO' and name != 'META_CONTEXT':
                return out

    def go(self, name=b'', structured=True):
        if structured:
            self.option('structured-reply')
            self.reply()
        self.option('go', struct.pack('>I', len(name)) + name
                    + struct.pack('>H', 0))
        return self.replies()

    # -- transmission
    def request(self, cmd, offset=0, length=0, flags=0, handle=1,
                payload=b''):
        self.send(struct.pack('>IHHQQI', REQUEST_MAGIC, flags,
                              CMD.get(cmd, cmd), handle, offset, length)
                  + payload)

    def simple_reply(self, data_len=0):
        magic, err, handle = struct.unpack('>IIQ', self.recv(16))
        assert magic == SIMPLE_MAGIC, hex(magic)
        data = self.recv(data_len) if not err and data_len else b''
        return err, handle, data

    def chunk(self):
        """(flags, type name, handle, payload) of one structured chunk."""
        magic, flags, ctype, handle, length = struct.unpack(
            '>IHHQI', self.recv(20))
        assert magic == STRUCTURED_MAGIC, hex(magic)
        return flags, CHUNK.get(ctype, hex(ctype)), handle, self.recv(length)

    def chunks(self):
        out = []
        while True:
            c = self.chunk()
            out.append(c)
            if c[0] & 1:
                return out


def describe_chunk(c):
    """A stable one-line description of a structured chunk."""
    flags, name, handle, payload = c
    if name == 'ERROR':
        err, mlen = struct.unpack('>IH', payload[:6])
        return '%s error=%d "%s"' % (name, err,
                                     payload[6:6 + mlen].decode())
    if name == 'OFFSET_DATA':
        return '%s offset=%d len=%d' % (name, struct.unpack(
            '>Q', payload[:8])[0], len(payload) - 8)
    if name == 'OFFSET_HOLE':
        return '%s offset=%d len=%d' % ((name,) + struct.unpack('>QI',
                                                                 payload))
    if name == 'BLOCK_STATUS':
        ctx = struct.unpack('>I', payload[:4])[0]
        ext = struct.unpack('>%dI' % ((len(payload) - 4) // 4), payload[4:])
        return '%s context=%d extents=%s' % (name, ctx, list(zip(
            ext[0::2], ext[1::2])))
    return name + (' done' if flags & 1 else '')
