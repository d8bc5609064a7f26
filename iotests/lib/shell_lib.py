"""Helpers for the strata-shell iotests (iotests/tests/shell-*).

The subject is BUILD/strata-shell; with ./check --oracle (and --regen) it
is QEMU 7.2's own qmp-shell (python/qemu/qmp/qmp_shell.py from the QEMU
source tree), so goldens come from QEMU.  Where qmp-shell has no such
feature, the tests compute the expected result from the daemon's own
answers instead.
"""

import json
import os
import pty
import select
import signal
import socket
import subprocess
import sys
import time

import iotests as t
import qmp



def daemon_prog():
    """The daemon the shell talks to: strata-daemon, or qemu-storage-daemon
    7.2 in oracle mode (chosen as iotests/lib/qmp.py chooses it);
    SHELL_DAEMON_PROG overrides both."""
    return os.environ.get('SHELL_DAEMON_PROG') or qmp.daemon_prog()

STRATA_SHELL_PROG = os.environ.get('STRATA_SHELL_PROG') or os.path.join(
    t.BUILD_DIR, 'strata-shell')
QEMU_PYTHON = os.environ.get('QEMU_PYTHON_DIR') or os.path.expanduser(
    '~/.cache/strata-iotests/qemu-7.2.0/python')


def oracle():
    return t.oracle_mode()


def requires_shell():
    """Skip unless the shell under test and the daemon can run."""
    if not t._find(daemon_prog()):
        t.skip('%s not found' % os.path.basename(daemon_prog()))
    if oracle():
        if not os.path.exists(os.path.join(QEMU_PYTHON, 'qemu', 'qmp',
                                           'qmp_shell.py')):
            t.skip('QEMU python tree not found (QEMU_PYTHON_DIR)')
    elif not t._find(STRATA_SHELL_PROG):
        t.skip('strata-shell not built')


def shell_argv(args):
    if oracle():
        return [sys.executable, '-m', 'qemu.qmp.qmp_shell'] + list(args)
    return [STRATA_SHELL_PROG] + list(args)


def shell_env(home=None):
    env = dict(os.environ, TERM='xterm', PYTHONUNBUFFERED='1')
    env['PYTHONPATH'] = QEMU_PYTHON
    env.pop('INPUTRC', None)
    if home:
        env['HOME'] = home
    return env


def run_shell(args, input=None, env=None):
    """Run the shell with stdin from INPUT (a pipe, not a terminal)."""
    return t.run(shell_argv(args), input=input.encode() if input else None,
                 env=env or shell_env())


class Daemon:
    """The daemon with two QMP monitors: `sock` for the shell and a second
    one the test itself talks to (a monitor serves one client at a time)."""

    def __init__(self, args=()):
        self.sock = t.test_path('shell.qmp')
        self.sock2 = t.test_path('test.qmp')
        for p in (self.sock, self.sock2):
            if os.path.exists(p):
                os.unlink(p)
        argv = [daemon_prog()] + list(args) + [
            '--chardev', 'socket,id=m1,path=%s,server=on,wait=off' % self.sock,
            '--monitor', 'chardev=m1',
            '--chardev', 'socket,id=m2,path=%s,server=on,wait=off' % self.sock2,
            '--monitor', 'chardev=m2']
        self.log = open(t.test_path('daemon.log'), 'wb')
        self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL,
                                     stdout=self.log, stderr=subprocess.STDOUT,
                                     cwd=t.TEST_DIR)
        t._children.append(self.proc)
        self._s = None
        t._wait_for(lambda: os.path.exists(self.sock) and self._connect(),
                    10, daemon_prog(), self.proc)
        if self._s is None:
            raise RuntimeError('%s exited' % daemon_prog())

    def _connect(self):
        if not os.path.exists(self.sock2):
            return False
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(t.TIMEOUT)
        try:
            s.connect(self.sock2)
        except OSError:
            s.close()
            return False
        self._s, self._f = s, s.makefile('rb')
        json.loads(self._f.readline())
        self.qmp('qmp_capabilities')
        return True

    def qmp(self, cmd, **args):
        """A command on the test's own monitor; the reply (events dropped)."""
        req = {'execute': cmd}
        if args:
            req['arguments'] = args
        self._s.sendall(json.dumps(req).encode() + b'\n')
        while True:
            msg = json.loads(self._f.readline())
            if 'event' not in msg:
                return msg

    def stop(self):
        if self._s:
            self._s.close()
        self.proc.terminate()
        self.proc.wait(10)
        self.log.close()


class Pty:
    """The shell on a pseudo-terminal: keys in, the screen's bytes out."""

    def __init__(self, args, home):
        pid, fd = pty.fork()
        if pid == 0:
            try:
                os.chdir(t.TEST_DIR)
                argv = shell_argv(args)
                os.execvpe(argv[0], argv, shell_env(home))
            finally:
                os._exit(127)
        self.pid, self.fd = pid, fd
        self.out = b''
        self.seen = 0

    def _read(self, timeout):
        r, _, _ = select.select([self.fd], [], [], timeout)
        if not r:
            return False
        try:
            data = os.read(self.fd, 65536)
        except OSError:         # EIO: the child has gone
            data = b''
        if not data:
            raise EOFError('shell exited: %r' % self.out[self.seen:])
        self.out += data
        return True

    def expect(self, text, timeout=20):
        """Wait until TEXT appears after what earlier expects consumed;
        returns the bytes from there to the end of TEXT."""
        want = text.encode()
        deadline = time.monotonic() + timeout
        while want not in self.out[self.seen:]:
            left = deadline - time.monotonic()
            if left <= 0 or not self._read(left):
                raise TimeoutError('no %r in %r' % (text,
                                                    self.out[self.seen:]))
        i = self.out.index(want, self.seen) + len(want)
        got, self.seen = self.out[self.seen:i], i
        return got.decode('utf-8', 'replace')

    def send(self, keys):
        os.write(self.fd, keys.encode())

    def close(self):
        """End input with ^D; the exit status."""
        self.send('\x04')
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            pid, status = os.waitpid(self.pid, os.WNOHANG)
            if pid:
                os.close(self.fd)
                return os.waitstatus_to_exitcode(status)
            try:
                self._read(0.1)
            except EOFError:
                pass
        os.kill(self.pid, signal.SIGKILL)
        os.waitpid(self.pid, 0)
        os.close(self.fd)
        return -1


def sent_commands(text):
    """The requests a -v shell echoed: lines that are {"execute": ...}."""
    out = []
    for line in text.replace('\r', '').split('\n'):
        i = line.find('{"execute"')
        if i >= 0:
            out.append(json.loads(line[i:]))
    return out
