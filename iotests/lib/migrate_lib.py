"""Helpers of the migrate-* iotests: a strata-daemon (or QEMU 10 system
emulator) with a QMP client that keeps events, RAM backing files filled
with known bytes, waiting for a migration's end by its events."""

import json
import os
import signal
import socket
import subprocess
import time

import iotests as t
import qmp

QEMU10 = os.environ.get('QEMU10_PROG') or '/opt/qemu10/bin/qemu-system-x86_64'
MiB = 1 << 20


def requires_qemu10():
    if not os.access(QEMU10, os.X_OK):
        t.skip('QEMU 10 not installed (%s; run ../shared/tools/qemu10-install)'
               % QEMU10)


class Mon:
    """A QMP connection that returns replies and keeps the events."""

    def __init__(self, path):
        # the socket file appears at bind(), a moment before listen()
        deadline = time.monotonic() + t.TIMEOUT
        while True:
            self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            self.sock.settimeout(t.TIMEOUT)
            try:
                self.sock.connect(path)
                break
            except ConnectionRefusedError:
                self.sock.close()
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.01)
        self.f = self.sock.makefile('rb')
        self.events = []
        self._read()
        self.cmd('qmp_capabilities')

    def _read(self):
        line = self.f.readline()
        if not line:
            raise EOFError('monitor closed')
        return json.loads(line)

    def cmd(self, cmd, fds=(), **args):
        req = {'execute': cmd}
        if args:
            req['arguments'] = {k.replace('_', '-'): v
                                for k, v in args.items()}
        data = json.dumps(req).encode()
        if fds:
            import array
            self.sock.sendmsg([data], [(socket.SOL_SOCKET, socket.SCM_RIGHTS,
                                        array.array('i', fds).tobytes())])
        else:
            self.sock.sendall(data)
        while True:
            msg = self._read()
            if 'event' in msg:
                self.events.append(msg)
            else:
                return msg

    def ok(self, cmd, **args):
        r = self.cmd(cmd, **args)
        if 'error' in r:
            raise RuntimeError('%s: %s' % (cmd, r['error']['desc']))
        return r['return']

    def wait_end(self, timeout=t.TIMEOUT):
        """Wait for a MIGRATION event with a final status; returns it."""
        deadline = time.monotonic() + timeout
        while True:
            for e in self.events:
                if e['event'] == 'MIGRATION' and e['data']['status'] in (
                        'completed', 'failed', 'cancelled'):
                    return e['data']['status']
            if time.monotonic() > deadline:
                raise TimeoutError('no end of migration')
            self.sock.settimeout(max(0.1, deadline - time.monotonic()))
            self.events.append(self._read())

    def event_list(self):
        """The events so far as 'NAME data' strings, then forgotten."""
        out = ['%s %s' % (e['event'], json.dumps(e['data'], sort_keys=True))
               for e in self.events]
        self.events = []
        return out


class Strata:
    """strata-daemon with one monitor."""
    _n = 0

    def __init__(self):
        Strata._n += 1
        self.sock = os.path.join(t.TEST_DIR, 'mig%d.sock' % Strata._n)
        self.log = open(os.path.join(t.TEST_DIR, 'mig%d.log' % Strata._n),
                        'wb')
        self.proc = subprocess.Popen(
            [qmp.STRATA_DAEMON_PROG, '--chardev',
             'socket,id=m0,path=%s,server=on,wait=off' % self.sock,
             '--monitor', 'chardev=m0'],
            stdin=subprocess.DEVNULL, stdout=self.log, stderr=subprocess.STDOUT,
            cwd=t.TEST_DIR)
        t._children.append(self.proc)
        t._wait_for(lambda: os.path.exists(self.sock), 10, 'strata-daemon',
                    self.proc)
        self.mon = Mon(self.sock)

    def backend(self, id, path, size):
        self.mon.ok('object-add', qom_type='memory-backend-file', id=id,
                    mem_path=path, size=size, share=True)

    def output(self):
        self.log.flush()
        with open(self.log.name, 'rb') as f:
            return f.read().decode('utf-8', 'replace')

    def kill(self):
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(t.TIMEOUT)

    def stop(self):
        try:
            self.mon.cmd('quit')
        except (OSError, EOFError):
            pass
        self.proc.wait(t.TIMEOUT)


class Qemu10:
    """A stopped q35 TCG VM of QEMU 10 whose RAM is the backend ram0 in
    mem_path (share=on)."""
    _n = 0

    def __init__(self, mem_path, size, extra=(), backend=None):
        """backend: another -object for ram0 (e.g. a memfd), which must
        have id=ram0 and the size; mem_path is then unused."""
        Qemu10._n += 1
        self.sock = os.path.join(t.TEST_DIR, 'q10-%d.sock' % Qemu10._n)
        self.log = open(os.path.join(t.TEST_DIR, 'q10-%d.log' % Qemu10._n),
                        'wb')
        self.proc = subprocess.Popen(
            [QEMU10, '-S', '-nodefaults', '-display', 'none', '-accel', 'tcg',
             '-machine', 'q35,memory-backend=ram0', '-m', str(size // MiB)
             + 'M', '-object', backend or 'memory-backend-file,id=ram0,'
             'share=on,mem-path=%s,size=%d' % (mem_path, size),
             '-qmp', 'unix:%s,server=on,wait=off' % self.sock] + list(extra),
            stdin=subprocess.DEVNULL, stdout=self.log, stderr=subprocess.STDOUT)
        t._children.append(self.proc)
        t._wait_for(lambda: os.path.exists(self.sock), 30, 'QEMU 10',
                    self.proc)
        self.mon = Mon(self.sock)

    def output(self):
        self.log.flush()
        with open(self.log.name, 'rb') as f:
            return f.read().decode('utf-8', 'replace')

    def stop(self):
        try:
            self.mon.cmd('quit')
        except (OSError, EOFError):
            pass
        self.proc.wait(t.TIMEOUT)


def caps(mon, **states):
    mon.ok('migrate-set-capabilities', capabilities=[
        {'capability': k.replace('_', '-'), 'state': v}
        for k, v in states.items()])


def write_file(path, data):
    with open(path, 'wb') as f:
        f.write(data)


def read_file(path):
    with open(path, 'rb') as f:
        return f.read()


def same(a, b):
    """'identical' or where the first difference is."""
    if a == b:
        return 'identical'
    if len(a) != len(b):
        return 'sizes differ (%d, %d)' % (len(a), len(b))
    i = next(k for k in range(len(a)) if a[k] != b[k])
    return 'differ from byte %d (page %d)' % (i, i // 4096)
