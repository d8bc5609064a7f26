"""An independent reader of QEMU's migration stream with mapped-ram RAM,
written from QEMU's documented layout (docs/devel/migration/mapped-ram.rst,
the stream's section format), not from strata's C reader: the tests decode
strata's files with it and check every field.

    f = mapped_ram.parse(path)          # raises ValueError on any fault
    f.blocks[0].id, .used, .page_size, .bitmap_offset, .pages_offset
    f.page(block, index)                # the page's bytes (zeros if clear)
    f.block_bytes(block)                # the block's whole contents
    f.states['ID']                      # device state "x-strata-state:ID":
        .iterative, .rounds (per round its chunks' (offset, length)),
        f.state_bytes('ID', round=None) # its data (one round or all)
        f.round_bytes('ID', i)          # round i framed as the back end wrote it
"""

import json
import struct
import zlib

MAGIC = 0x5145564d
VERSION = 3
HDR_VERSION = 1
PAGE = 4096
ALIGN = 1 << 20

EOF_, START, PART, END, FULL, SUB, VMDESC, CONFIG, COMMAND = \
    0, 1, 2, 3, 4, 5, 6, 7, 8
FOOTER = 0x7e
FLAG_MEM_SIZE, FLAG_EOS, FLAG_MULTIFD_FLUSH = 0x04, 0x10, 0x200


class Block:
    def __init__(self, id, used, version, page_size, bitmap_offset,
                 pages_offset):
        self.id = id
        self.used = used
        self.version = version
        self.page_size = page_size
        self.bitmap_offset = bitmap_offset
        self.pages_offset = pages_offset
        self.bitmap = b''

    def pages(self):
        return self.used // PAGE

    def stored(self, i):
        # unsigned longs in host order: little endian on x86, so bit i is
        # bit i % 8 of byte i // 8
        return (self.bitmap[i // 8] >> (i % 8)) & 1


STATE_PREFIX = 'x-strata-state:'


class State:
    """A device state stream (strata's sections after the RAM)."""

    def __init__(self, id, sid, iterative, version):
        self.id = id
        self.sid = sid
        self.iterative = iterative
        self.version = version
        self.rounds = []        # per round: [(data offset, length)], framing
        self.round_spans = []   # per round: (start, end) of its framing
        self.ended = False


class File:
    def __init__(self, path, data, offset):
        self.path = path
        self.data = data
        self.offset = offset
        self.machine = None
        self.capabilities = []
        self.blocks = []
        self.sections = []      # (type, id, name) in stream order
        self.vmdesc = None
        self.end = None         # offset just past QEMU_VM_EOF
        self.states = {}        # id -> State, in the file's order

    def state_bytes(self, id, round=None):
        st = self.states[id]
        rounds = st.rounds if round is None else [st.rounds[round]]
        return b''.join(self.data[o:o + n] for r in rounds for o, n in r)

    def round_bytes(self, id, i):
        a, b = self.states[id].round_spans[i]
        return self.data[a:b]

    def page(self, b, i):
        if not b.stored(i):
            return bytes(PAGE)
        off = b.pages_offset + i * PAGE
        return self.data[off:off + PAGE].ljust(PAGE, b'\0')

    def block_bytes(self, b):
        return b''.join(self.page(b, i) for i in range(b.pages()))


class _Cur:
    def __init__(self, data, pos):
        self.data = data
        self.pos = pos

    def take(self, n):
        if self.pos + n > len(self.data):
            raise ValueError('stream ends at %d, inside a field at %d'
                             % (len(self.data), self.pos))
        b = self.data[self.pos:self.pos + n]
        self.pos += n
        return b

    def u8(self):
        return self.take(1)[0]

    def be16(self):
        return struct.unpack('>H', self.take(2))[0]

    def be32(self):
        return struct.unpack('>I', self.take(4))[0]

    def be64(self):
        return struct.unpack('>Q', self.take(8))[0]

    def str8(self):
        return self.take(self.u8()).decode()


def _ram_words(c, f):
    while True:
        w = c.be64()
        flags, addr = w & (PAGE - 1), w & ~(PAGE - 1)
        if flags & FLAG_EOS:
            return
        if flags == FLAG_MULTIFD_FLUSH:
            continue
        if flags != FLAG_MEM_SIZE:
            raise ValueError('RAM flags 0x%x at %d' % (flags, c.pos - 8))
        left = addr
        while left:
            id = c.str8()
            used = c.be64()
            if not used or used % PAGE or used > left:
                raise ValueError('block %s: %d bytes, %d left of the RAM '
                                 'size' % (id, used, left))
            version, ps, bo, po = struct.unpack('>IQQQ', c.take(28))
            b = Block(id, used, version, ps, bo, po)
            if version != HDR_VERSION or ps != PAGE:
                raise ValueError('block %s: header version %d page size %d'
                                 % (id, version, ps))
            if po % ALIGN:
                raise ValueError('block %s: pages at %d, not 1 MiB aligned'
                                 % (id, po))
            nbytes = (b.pages() + 63) // 64 * 8
            if bo != c.pos or bo + nbytes > po:
                raise ValueError('block %s: bitmap at %d (header ends %d, '
                                 'pages at %d)' % (id, bo, c.pos, po))
            b.bitmap = f.data[bo:bo + nbytes]
            if len(b.bitmap) != nbytes:
                raise ValueError('block %s: bitmap past the end' % id)
            # bits past the block's last page are clear
            if int.from_bytes(b.bitmap, 'little') >> b.pages():
                raise ValueError('block %s: bits set past its %d pages'
                                 % (id, b.pages()))
            f.blocks.append(b)
            left -= used
            c.pos = po + used


def _chunks(c):
    """Chunks (u32 length, bytes) up to a 0 length."""
    out = []
    while True:
        n = c.be32()
        if n == 0:
            return out
        out.append((c.pos, n))
        c.take(n)


def _check_crc(c, id, data):
    """The u32 CRC-32 (zlib's) after a section's data: of `data`."""
    want = c.be32()
    if zlib.crc32(data) != want:
        raise ValueError('device state %s: CRC-32 0x%08x, file says 0x%08x'
                         % (id, zlib.crc32(data), want))


def _state_section(c, f, t, sid, name, instance, version):
    # version 2: a plain section's chunks and a round are followed by the
    # CRC-32 of the state bytes (plain) or of the round as the back end
    # wrote it (records and the 0)
    if instance != 0 or version != 2:
        raise ValueError('device state %s: instance %d version %d'
                         % (name, instance, version))
    id = name[len(STATE_PREFIX):]
    if id in f.states or any(s.sid == sid for s in f.states.values()):
        raise ValueError('device state %s: twice or id %d reused'
                         % (id, sid))
    st = State(id, sid, t == START, version)
    f.states[id] = st
    if t == START:
        if _chunks(c):
            raise ValueError('device state %s: data in START' % id)
    else:
        a = c.pos
        ch = _chunks(c)
        st.rounds.append(ch)
        st.round_spans.append((a, c.pos))
        st.ended = True
        _check_crc(c, id, b''.join(c.data[o:o + n] for o, n in ch))


def _state_part(c, st, t):
    if not st.iterative or st.ended:
        raise ValueError('device state %s continued after its end' % st.id)
    a = c.pos
    ch = _chunks(c)
    if t == PART:
        st.rounds.append(ch)
        st.round_spans.append((a, c.pos))
        _check_crc(c, st.id, c.data[a:c.pos])
    else:
        if ch:
            raise ValueError('device state %s: data in END' % st.id)
        st.ended = True


def parse(path, offset=0):
    with open(path, 'rb') as fh:
        data = fh.read()
    f = File(path, data, offset)
    c = _Cur(data, offset)
    if c.be32() != MAGIC or c.be32() != VERSION:
        raise ValueError('not a version 3 migration stream')
    while True:
        t = c.u8()
        if t == EOF_:
            f.end = c.pos
            break
        if t == CONFIG:
            f.machine = c.take(c.be32()).decode()
            while c.data[c.pos] == SUB:
                c.pos += 1
                name = c.str8()
                c.be32()
                if name == 'configuration/capabilities':
                    f.capabilities = [c.str8() for _ in range(c.be32())]
                else:
                    raise ValueError('subsection %s' % name)
            continue
        elif t in (START, FULL):
            sid = c.be32()
            name = c.str8()
            instance, version = c.be32(), c.be32()
            f.sections.append((t, sid, name, instance, version))
            if name.startswith(STATE_PREFIX) and f.blocks:
                _state_section(c, f, t, sid, name, instance, version)
            elif name != 'ram':
                raise ValueError('device section %s: not read here' % name)
            else:
                _ram_words(c, f)
        elif t in (PART, END):
            sid = c.be32()
            f.sections.append((t, sid, None, None, None))
            st = [s for s in f.states.values() if s.sid == sid]
            if st:
                _state_part(c, st[0], t)
            else:
                _ram_words(c, f)
        elif t == COMMAND:
            c.be16()
            c.take(c.be16())
            continue
        else:
            raise ValueError('section type 0x%x at %d' % (t, c.pos - 1))
        if c.u8() != FOOTER or c.be32() != f.sections[-1][1]:
            raise ValueError('no footer for section at %d' % c.pos)
    for st in f.states.values():
        if not st.ended:
            raise ValueError('device state %s has no END' % st.id)
    if c.pos < len(data) and data[c.pos] == VMDESC:
        c.pos += 1
        f.vmdesc = c.take(c.be32()).decode()
        if c.pos != len(data):
            raise ValueError('%d bytes after the description'
                             % (len(data) - c.pos))
        if not isinstance(json.loads(f.vmdesc).get('devices'), list):
            raise ValueError('description without a devices list')
    return f


def pattern(size):
    """Test RAM of size bytes that compresses well but has every page
    different: page i holds its index and a mix of it, repeated; every 8th
    page and pages 1000-1499 are zero; every 997th is pseudo-random."""
    import random
    out = bytearray(size)
    for i in range(size // PAGE):
        if i % 8 == 3 or 1000 <= i < 1500:
            continue
        if i % 997 == 5:
            page = random.Random(i).randbytes(PAGE)
        else:
            page = struct.pack('>QQ', i, (i * 0x9e3779b97f4a7c15)
                               & 0xffffffffffffffff) * (PAGE // 16)
        out[i * PAGE:(i + 1) * PAGE] = page
    return bytes(out)
