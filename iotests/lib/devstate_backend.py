"""Test back ends for device state streams (docs/migration.md "Device
state"): they hand their state to strata-daemon over a pipe, as a
vhost-user back end does with SET_DEVICE_STATE_FD, and read it back on
restore.  Standard library only.

    b = PlainBackend(size, seed)       # a state of size bytes, generated
    b.register(mon, 'dev0')            # pipe + getfd + x-strata-device-state-add
    ... migrate ...; b.join()          # b.sent_digest, b.sent
    r = PlainRestore(); r.register(mon, 'dev0')
    ... migrate-incoming ...; r.join() # r.digest, r.received

    it = IterativeBackend(size, seed)  # a state that changes between rounds
    it.register(mon, 'fs0'); it.round(); it.change(); it.round(); ...
    it.finish()                        # the final round (VM paused), close

States are generated and hashed piece by piece: a 64 MiB state is never
held by the test either.
"""

import hashlib
import os
import random
import struct
import threading

PIECE = 1 << 16


def piece(seed, i, n):
    """Piece i (n bytes) of the generated state of a seed: cheap, and
    different for every piece and seed."""
    head = struct.pack('>QQ', seed, i)
    return (head * (n // 16 + 1))[:n]


def _pipe():
    r, w = os.pipe2(os.O_CLOEXEC)
    return r, w


def _hand(mon, fd, id, iterative=False):
    """Passes fd with getfd and registers it; returns the reply."""
    r = mon.cmd('getfd', fds=[fd], fdname='ds-' + id)
    os.close(fd)
    if 'error' in r:
        raise RuntimeError('getfd: %s' % r['error']['desc'])
    args = {'id': id, 'fd': 'ds-' + id}
    if iterative:
        args['iterative'] = True
    return mon.cmd('x-strata-device-state-add', **args)


class PlainBackend:
    """Writes size bytes of generated state into the pipe, then closes."""

    def __init__(self, size, seed=1):
        self.size = size
        self.seed = seed
        self.sent = 0
        self.error = None
        self.sent_digest = None

    def register(self, mon, id):
        r, self.w = _pipe()
        reply = _hand(mon, r, id)
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()
        return reply

    def _run(self):
        h = hashlib.sha256()
        try:
            i = 0
            while self.sent < self.size:
                n = min(PIECE, self.size - self.sent)
                p = piece(self.seed, i, n)
                h.update(p)
                view = memoryview(p)
                while view:
                    k = os.write(self.w, view)
                    view = view[k:]
                self.sent += n
                i += 1
        except OSError as e:
            self.error = e
        finally:
            os.close(self.w)
            self.sent_digest = h.hexdigest()

    def join(self, timeout=120):
        self.thread.join(timeout)
        return not self.thread.is_alive()

    @staticmethod
    def digest_of(size, seed=1):
        h = hashlib.sha256()
        i = done = 0
        while done < size:
            n = min(PIECE, size - done)
            h.update(piece(seed, i, n))
            done += n
            i += 1
        return h.hexdigest()


class PlainRestore:
    """Reads what the daemon hands back until EOF: its size and digest."""

    def __init__(self):
        self.received = 0
        self.digest = None
        self.eof = False

    def register(self, mon, id):
        self.r, w = _pipe()
        reply = _hand(mon, w, id)
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()
        return reply

    def _run(self):
        h = hashlib.sha256()
        while True:
            b = os.read(self.r, 1 << 20)
            if not b:
                break
            h.update(b)
            self.received += len(b)
        os.close(self.r)
        self.digest = h.hexdigest()
        self.eof = True

    def join(self, timeout=120):
        self.thread.join(timeout)
        return self.eof


def records(payloads):
    """One round on the pipe: records (u32 length > 0, bytes), then 0."""
    out = b''.join(struct.pack('>I', len(p)) + p for p in payloads)
    return out + struct.pack('>I', 0)


class IterativeBackend:
    """A back end whose state (size bytes) keeps changing: round 1 sends it
    whole, each later round the regions changed since the round before
    (records of u64 offset + bytes), the final one after finish()."""

    REGION = 4096

    def __init__(self, size, seed=7):
        self.size = size
        self.state = bytearray(random.Random(seed).randbytes(size))
        self.rng = random.Random(seed + 1)
        self.dirty = set(range(0, size, self.REGION))
        self.raw = hashlib.sha256()     # every byte written into the pipe
        self.round_raw = []             # each round as written
        self.rounds = 0

    def register(self, mon, id):
        r, self.w = _pipe()
        return _hand(mon, r, id, iterative=True)

    def change(self, regions=8):
        """The device runs: some regions get new bytes."""
        for _ in range(regions):
            off = self.rng.randrange(0, self.size, self.REGION)
            n = min(self.REGION, self.size - off)
            self.state[off:off + n] = self.rng.randbytes(n)
            self.dirty.add(off)

    def _write(self, data):
        self.raw.update(data)
        view = memoryview(data)
        while view:
            view = view[os.write(self.w, view):]

    def round(self):
        """Sends the regions changed since the last round as one round."""
        payloads = []
        for off in sorted(self.dirty):
            n = min(self.REGION, self.size - off)
            payloads.append(struct.pack('>Q', off)
                            + bytes(self.state[off:off + n]))
        self.dirty = set()
        data = records(payloads)
        self.round_raw.append(data)
        self._write(data)
        self.rounds += 1

    def finish(self):
        """The VM is paused: the last round, then the end of the stream."""
        self.round()
        os.close(self.w)
        return bytes(self.state)


class IterativeRestore:
    """Reads rounds back (records of u64 offset + bytes, 0 ends a round)
    until EOF and applies them in order to an empty state."""

    def __init__(self, size):
        self.state = bytearray(size)
        self.rounds = 0
        self.raw = hashlib.sha256()
        self.error = None
        self.done = False

    def register(self, mon, id):
        self.r, w = _pipe()
        reply = _hand(mon, w, id, iterative=True)
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()
        return reply

    def _read(self, n):
        out = b''
        while len(out) < n:
            b = os.read(self.r, n - len(out))
            if not b:
                return out
            out += b
        self.raw.update(out)
        return out

    def _run(self):
        try:
            while True:
                h = self._read(4)
                if not h:
                    break
                if len(h) != 4:
                    raise ValueError('EOF inside a record header')
                n = struct.unpack('>I', h)[0]
                if n == 0:
                    self.rounds += 1
                    continue
                rec = self._read(n)
                if len(rec) != n:
                    raise ValueError('EOF inside a record')
                off = struct.unpack('>Q', rec[:8])[0]
                self.state[off:off + n - 8] = rec[8:]
        except (OSError, ValueError) as e:
            self.error = e
        os.close(self.r)
        self.done = True

    def join(self, timeout=120):
        self.thread.join(timeout)
        return self.done
