"""A test VM monitor: guest RAM in memfds that strata-daemon maps, written
by a "guest" thread that records its writes in the shared dirty log.

It plays the part of a VMM (QEMU's system half, a small VMM) for the
migration tests: the monitor owns the memory, hands each block to the
daemon over QMP by descriptor passing, and reports the guest's writes the
way KVM's dirty log would tell a real monitor (docs/migration.md, "Memory").

    import vmm
    m = vmm.Monitor()
    ram = m.add_block('ram0', 8 << 20)       # memfd + dirty log memfd
    ram.fill(seed=1, zero_every=8)           # a pattern, 1 page in 8 zero
    ram.hand_over(client)                    # add-fd x2 + object-add
    g = m.start_guest([ram], seed=2,         # keeps writing, marking bits
                      rate=50 << 20)         # (at most 50 MiB/s)
    g.wait_rounds(10)                        # it has written something
    ...
    g.pause()                                # the guest stops: RAM frozen
    expected = ram.snapshot()
    ...                                      # restore, then:
    assert not vmm.diff_pages(expected, ram.snapshot())

vmm.reply(client) reads the reply to the command just sent past events;
daemon_mapping() and daemon_read() look at the daemon's own view of a
memfd (/proc/PID/maps and /proc/PID/mem).

The dirty log is one bit per page, page i at bit i % 64 of the native
64-bit word i // 64.  This monitor has one writer, so it sets bits with a
plain read-modify-write of the word: against the daemon's atomic
take-and-clear that can only put back bits just taken (a page sent twice),
never lose one (see migration/ram-dirty.c).  The page's content is written
before its bit.

Only the standard library: os.memfd_create, mmap, socket.send_fds.
"""

import mmap
import os
import random
import threading
import time

PAGE = 4096


def page_pattern(block_id, page, generation, page_size=PAGE):
    """The content the monitor writes to a page: recognisable (block,
    page, generation) and not compressible to a zero page."""
    head = ('%s:%d:%d;' % (block_id, page, generation)).encode()
    reps = page_size // len(head) + 1
    return (head * reps)[:page_size]


def reply(client):
    """The reply to the command just sent; events before it are dropped
    (the caller's test waits for the events it cares about itself)."""
    while True:
        msg = client.recv()
        if msg is None or 'event' not in msg:
            return msg


class Block:
    """One RAM block: guest memory and its dirty log, both memfds."""

    def __init__(self, block_id, size, page_size=PAGE, dirty_log=True):
        if size % page_size:
            raise ValueError('size must be a multiple of the page size')
        self.id = block_id
        self.size = size
        self.page_size = page_size
        self.pages = size // page_size
        self.fd = os.memfd_create('vmm-' + block_id, os.MFD_CLOEXEC)
        os.ftruncate(self.fd, size)
        self.mem = mmap.mmap(self.fd, size, mmap.MAP_SHARED,
                             mmap.PROT_READ | mmap.PROT_WRITE)
        self.log_fd = None
        self.log = None
        self._words = None
        if dirty_log:
            self.log_len = (self.pages + 63) // 64 * 8
            self.log_fd = os.memfd_create('vmm-dirty-' + block_id,
                                          os.MFD_CLOEXEC)
            os.ftruncate(self.log_fd, self.log_len)
            self.log = mmap.mmap(self.log_fd, self.log_len, mmap.MAP_SHARED,
                                 mmap.PROT_READ | mmap.PROT_WRITE)
            self._words = memoryview(self.log).cast('Q')
        self.lock = threading.Lock()    # one writer at a time
        self.fdsets = {}

    def close(self):
        if self._words is not None:
            self._words.release()
            self.log.close()
            os.close(self.log_fd)
        self.mem.close()
        os.close(self.fd)

    # ---- the guest's writes ----

    def mark(self, page):
        """Record a write to page in the dirty log (after the write)."""
        if self._words is not None:
            self._words[page // 64] |= 1 << (page % 64)

    def write_page(self, page, data):
        """A guest write: content first, then its bit."""
        with self.lock:
            off = page * self.page_size
            self.mem[off:off + self.page_size] = data
            self.mark(page)

    def fill(self, seed=0, zero_every=0, generation=0):
        """Every page gets its pattern; with zero_every=N, pages whose
        index is a multiple of N stay zero (the file keeps holes there)."""
        with self.lock:
            for p in range(self.pages):
                off = p * self.page_size
                if zero_every and p % zero_every == 0:
                    self.mem[off:off + self.page_size] = bytes(self.page_size)
                else:
                    self.mem[off:off + self.page_size] = page_pattern(
                        self.id, p, generation + seed, self.page_size)

    def fill_random(self, seed=0, zero_every=0):
        """Pseudo-random page content (incompressible), reproducible."""
        rng = random.Random(seed)
        with self.lock:
            for p in range(self.pages):
                off = p * self.page_size
                if zero_every and p % zero_every == 0:
                    data = bytes(self.page_size)
                else:
                    data = rng.randbytes(self.page_size)
                self.mem[off:off + self.page_size] = data

    def snapshot(self):
        """A copy of the guest memory as it is now."""
        with self.lock:
            return bytes(self.mem)

    def clear_log(self):
        """Forget the marked pages (what the daemon's log start does)."""
        with self.lock:
            for w in range(len(self._words)):
                self._words[w] = 0

    def dirty_pages(self, log=None):
        """The pages a log holds (by default the monitor's view, now)."""
        words = self._words if log is None else memoryview(log).cast('Q')
        out = []
        for w in range(len(words)):
            v = words[w]
            while v:
                low = v & -v
                out.append(w * 64 + low.bit_length() - 1)
                v ^= low
        return [p for p in out if p < self.pages]

    # ---- handing it to the daemon ----

    def add_fd(self, client, fd, opaque):
        """add-fd over QMP with SCM_RIGHTS; returns the fdset id."""
        client.send('add-fd', {'opaque': opaque}, fds=[fd])
        r = reply(client)
        if 'return' not in r:
            raise RuntimeError('add-fd: %s' % r)
        return r['return']['fdset-id']

    def object_add_args(self, ram_set, log_set=None, **props):
        args = {'qom-type': 'memory-backend-file', 'id': self.id,
                'size': self.size, 'share': True,
                'mem-path': '/dev/fdset/%d' % ram_set}
        if log_set is not None:
            args['x-strata-dirty-log'] = '/dev/fdset/%d' % log_set
        args.update(props)
        return args

    def hand_over(self, client, **props):
        """Pass the memory (and dirty log) and create the backend; returns
        the object-add reply."""
        ram_set = self.add_fd(client, self.fd, 'vmm-ram:' + self.id)
        log_set = None
        if self.log_fd is not None:
            log_set = self.add_fd(client, self.log_fd,
                                  'vmm-dirty:' + self.id)
        self.fdsets = {'ram': ram_set, 'log': log_set}
        client.send('object-add', self.object_add_args(ram_set, log_set,
                                                       **props))
        r = reply(client)
        # the daemon keeps its own mapping: the sets are not needed
        for s in (ram_set, log_set):
            if s is not None:
                client.send('remove-fd', {'fdset-id': s})
                reply(client)
        return r


class Guest:
    """The guest: a thread writing pages of some blocks, each write
    followed by its dirty bit, until paused."""

    def __init__(self, blocks, seed=0, pages_per_round=64, hot_fraction=1.0,
                 rate=None):
        """rate: bytes per second to write at most (None: as fast as it
        can); hot_fraction: the share of each block's pages (from its
        start) that the guest writes."""
        self.blocks = blocks
        self.rate = rate
        self._started = None
        self.rng = random.Random(seed)
        self.pages_per_round = pages_per_round
        self.hot_fraction = hot_fraction
        self.generation = 0
        self.writes = 0
        self.written = {b.id: set() for b in blocks}   # pages, per block
        self.rounds = 0
        self._stop = threading.Event()
        self._round_done = threading.Condition()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _pace(self):
        """With a rate, wait until the bytes written so far are due."""
        if not self.rate:
            return
        if self._started is None:
            self._started = time.monotonic()
        page = self.blocks[0].page_size
        due = self._started + self.writes * page / self.rate
        delay = due - time.monotonic()
        if delay > 0:
            self._stop.wait(delay)

    def _run(self):
        while not self._stop.is_set():
            self._pace()
            self.generation += 1
            for _ in range(self.pages_per_round):
                b = self.rng.choice(self.blocks)
                hot = max(1, int(b.pages * self.hot_fraction))
                p = self.rng.randrange(hot)
                b.write_page(p, page_pattern(b.id, p, self.generation,
                                             b.page_size))
                self.written[b.id].add(p)
                self.writes += 1
            with self._round_done:
                self.rounds += 1
                self._round_done.notify_all()

    def wait_rounds(self, n, timeout=60):
        """Wait until the guest has written n more rounds."""
        with self._round_done:
            target = self.rounds + n
            if not self._round_done.wait_for(lambda: self.rounds >= target,
                                             timeout):
                raise TimeoutError('the guest did not write %d rounds' % n)

    def pause(self, timeout=60):
        """Stop writing; when it returns, guest memory no longer changes."""
        self._stop.set()
        self._thread.join(timeout)
        if self._thread.is_alive():
            raise TimeoutError('the guest thread did not stop')


class Monitor:
    """The VM monitor: its RAM blocks and its guest."""

    def __init__(self):
        self.blocks = []
        self.guest = None

    def add_block(self, block_id, size, page_size=PAGE, dirty_log=True):
        b = Block(block_id, size, page_size, dirty_log)
        self.blocks.append(b)
        return b

    def start_guest(self, blocks=None, **kw):
        self.guest = Guest(blocks or self.blocks, **kw)
        return self.guest

    def close(self):
        if self.guest:
            self.guest.pause()
        for b in self.blocks:
            b.close()


def diff_pages(a, b, page_size=PAGE):
    """The indexes of the pages where two memory images differ."""
    if len(a) != len(b):
        raise ValueError('images of %d and %d bytes' % (len(a), len(b)))
    out = []
    for off in range(0, len(a), page_size):
        if a[off:off + page_size] != b[off:off + page_size]:
            out.append(off // page_size)
    return out


def daemon_mapping(pid, memfd_name):
    """The daemon's mapping of a memfd of this monitor, from
    /proc/PID/maps: (start, end), or None."""
    with open('/proc/%d/maps' % pid) as f:
        for line in f:
            if ('/memfd:' + memfd_name + ' ') in line + ' ':
                start, end = line.split()[0].split('-')
                return int(start, 16), int(end, 16)
    return None


def daemon_read(pid, addr, length):
    """Read the daemon's memory (what it sees at addr), via /proc/PID/mem."""
    with open('/proc/%d/mem' % pid, 'rb', buffering=0) as f:
        f.seek(addr)
        return f.read(length)
