"""QMP daemons for iotests: the same scenario against qemu-storage-daemon
7.2 (oracle mode, which writes the goldens) and strata-daemon.

    import qmp
    d = qmp.Daemon(['--blockdev', 'null-co,node-name=n0'])
    c = d.client()                 # connected, greeting read
    c.log_greeting()
    c.negotiate()
    c.cmd('query-version')         # sends, logs the reply
    c.send_raw(b'{"execute": "nosuch"}')
    c.log_next()
    d.stop()                       # SIGTERM, logs the exit status

Everything logged goes through iotests.log() plus this module's filters:
timestamps become SECS/USECS, the QEMU micro version and package string
(the Debian build's 7.2.22 and strata's 7.2.0 both implement 7.2) become
MICRO/PACKAGE, program names DAEMON, automatic node names NODE_NAME;
strata's extension members (x-strata-*, integers) are left out.

Daemon(system=True) is for the commands qemu-storage-daemon 7.2 lacks but
QEMU 7.2 has (getfd, add-fd, query-fdsets): in oracle mode it starts
qemu-system-x86_64 with no machine, whose QMP monitor has them.

SHUTDOWN: strata-daemon sends it at quit and on SIGTERM/SIGINT/SIGHUP, as
QEMU 7.2's system emulator does; qemu-storage-daemon 7.2 never does.  So
output compared with qsd's goldens drops SHUTDOWN events, and only those:
a Client (unless system=True) skips them, and filter_qsd_shutdown() takes
them out of a stdio monitor's output.  _SHUTDOWN below is the one pattern
both use, the one place where strata's output is edited to match qsd's.
A Client of a Daemon(system=True) keeps them: there the oracle is
qemu-system-x86_64, which sends them (qmp-event-shutdown checks them).
"""

import array
import json
import os
import re
import signal
import socket
import subprocess

import iotests as t
from filters import filter_sanitizer_notices

STRATA_DAEMON_PROG = os.environ.get('STRATA_DAEMON_PROG') or os.path.join(
    t.BUILD_DIR, 'strata-daemon')
QEMU_SYSTEM_PROG = os.environ.get('QEMU_SYSTEM_PROG') or 'qemu-system-x86_64'

_TIMESTAMP = [(re.compile(r'"seconds": \d+'), '"seconds": SECS'),
              (re.compile(r'"microseconds": \d+'), '"microseconds": USECS')]
_VERSION = [(re.compile(r'"micro": \d+'), '"micro": MICRO'),
            (re.compile(r'"package": "[^"]*"'), '"package": "PACKAGE"')]
# a SHUTDOWN event, compact or pretty, with its line end
_SHUTDOWN = re.compile(r'\{\s*"timestamp": \{[^{}]*\},\s*"event": "SHUTDOWN",'
                       r'\s*"data": \{[^{}]*\}\s*\}(?:\r?\n)?')
# strata's integer extension members (query-jobs' x-strata-rate and
# x-strata-eta), which qsd never sends: left out of what is compared
_EXTENSIONS = [(re.compile(r',\s*"x-strata-[a-z-]+": -?\d+'), ''),
               (re.compile(r'"x-strata-[a-z-]+": -?\d+,\s*'), '')]
_DAEMON_NAME = re.compile(r'(?:\S*/)?\b(?:qemu-storage-daemon|strata-daemon|'
                          r'qemu-system-x86_64)\b')


def filter_qmp(text):
    for pattern, repl in _TIMESTAMP + _VERSION + _EXTENSIONS:
        text = pattern.sub(repl, text)
    return _DAEMON_NAME.sub('DAEMON', text)


def log(text):
    t.log(text, extra_filters=(filter_qmp,))


def daemon_prog(system=False):
    """The program under test; QEMU's in oracle mode."""
    if t.oracle_mode():
        return QEMU_SYSTEM_PROG if system else t.QSD_PROG
    return STRATA_DAEMON_PROG


def requires_daemon(system=False):
    """Skip unless the daemon under test (QEMU's in oracle mode) exists."""
    prog = daemon_prog(system)
    if not t._find(prog):
        t.skip('%s not found' % os.path.basename(prog))


def filter_qsd_shutdown(text):
    """A stdio monitor's output as qsd 7.2 writes it: without SHUTDOWN."""
    return _SHUTDOWN.sub('', text)


def _is_shutdown(text):
    return _SHUTDOWN.fullmatch(text) is not None


class Client:
    """One QMP connection.  Messages are read as QEMU wrote them (one line,
    or several with pretty=on) and kept as text for byte-exact goldens."""

    def __init__(self, path, timeout=t.TIMEOUT, system=False):
        # see the module's docstring: against qsd's goldens, no SHUTDOWN
        self.drop_shutdown = not system
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(timeout)
        self.sock.connect(path)
        self.buf = b''
        self.decoder = json.JSONDecoder()

    @classmethod
    def accept(cls, listener, timeout=t.TIMEOUT):
        """The connection a daemon made to listener (a client chardev,
        server=off): QMP runs over it as over one the client made."""
        listener.settimeout(timeout)
        conn, _ = listener.accept()
        self = cls.__new__(cls)
        self.drop_shutdown = True
        self.sock = conn
        self.sock.settimeout(timeout)
        self.buf = b''
        self.decoder = json.JSONDecoder()
        return self

    def close(self):
        self.sock.close()

    def send_raw(self, data, fds=()):
        """Send bytes as they are (with descriptors by SCM_RIGHTS)."""
        if isinstance(data, str):
            data = data.encode()
        if fds:
            anc = [(socket.SOL_SOCKET, socket.SCM_RIGHTS,
                    array.array('i', fds).tobytes())]
            self.sock.sendmsg([data], anc)
        else:
            self.sock.sendall(data)

    def send(self, cmd, args=None, id=None, key='execute', fds=()):
        req = {key: cmd}
        if args is not None:
            req['arguments'] = args
        if id is not None:
            req['id'] = id
        self.send_raw(json.dumps(req), fds)

    def recv_text(self):
        """The next message's text, or None at end of stream (SHUTDOWN
        skipped when compared with qsd: see the module's docstring)."""
        while True:
            text = self._recv_text()
            if not (self.drop_shutdown and text is not None
                    and _is_shutdown(text)):
                return text

    def _recv_text(self):
        """QEMU writes ASCII only (it escapes the rest), so decoding cannot
        split a character."""
        while True:
            text = self.buf.decode('ascii', 'replace')
            start = len(text) - len(text.lstrip())
            end = None
            if start < len(text):
                try:
                    _, end = self.decoder.raw_decode(text, start)
                except ValueError:
                    pass
            if end is not None and text[end:end + 2] == '\r\n':
                self.buf = self.buf[end + 2:]
                msg = text[start:end]
                # QEMU's monitor ends every line with CR LF, pretty ones too
                if re.search(r'(?<!\r)\n', msg):
                    log('[a line of this message ends without CR]')
                return msg.replace('\r\n', '\n')
            if end is not None and len(text) > end + 1:
                log('[message not followed by CR LF: %r]'
                    % text[end:end + 2])
                self.buf = self.buf[end + 1:]
                return text[start:end]
            data = self.sock.recv(65536)
            if not data:
                return None
            self.buf += data

    def recv(self):
        text = self.recv_text()
        return None if text is None else json.loads(text)

    def log_next(self):
        """Log the next message as the daemon wrote it."""
        text = self.recv_text()
        log('<EOF>' if text is None else text)
        return None if text is None else json.loads(text)

    def log_greeting(self):
        return self.log_next()

    def cmd(self, cmd, args=None, id=None, key='execute', fds=()):
        """Send a request and log its reply (events before it too)."""
        self.send(cmd, args, id, key, fds)
        while True:
            msg = self.log_next()
            if msg is None or 'event' not in msg:
                return msg

    def negotiate(self, oob=False):
        args = {'enable': ['oob']} if oob else None
        return self.cmd('qmp_capabilities', args)


class Daemon:
    """A daemon with monitors on unix sockets in TEST_DIR, started the same
    way for QEMU and strata; killed at exit if not stopped."""

    _count = 0

    def __init__(self, args=(), monitors=1, pretty=False, system=False,
                 pidfile=True, timeout=10):
        Daemon._count += 1
        base = os.path.join(t.TEST_DIR, 'd%d' % Daemon._count)
        self.sockets = ['%s-m%d.sock' % (base, i) for i in range(monitors)]
        self.pidfile = base + '.pid' if pidfile else None
        self.logfile = base + '.log'
        self.system = system
        argv = [daemon_prog(system)]
        if system and t.oracle_mode():
            argv += ['-M', 'none', '-nodefaults', '-display', 'none']
            for i, path in enumerate(self.sockets):
                argv += ['-chardev', 'socket,id=qmp%d,path=%s,server=on,'
                         'wait=off' % (i, path),
                         '-mon', 'chardev=qmp%d,mode=control%s'
                         % (i, ',pretty=on' if pretty else '')]
            if self.pidfile:
                argv += ['-pidfile', self.pidfile]
        else:
            for i, path in enumerate(self.sockets):
                argv += ['--chardev', 'socket,id=qmp%d,path=%s,server=on,'
                         'wait=off' % (i, path),
                         '--monitor', 'chardev=qmp%d%s'
                         % (i, ',pretty=on' if pretty else '')]
            if self.pidfile:
                argv += ['--pidfile', self.pidfile]
        argv += list(args)
        self._log = open(self.logfile, 'wb')
        self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL,
                                     stdout=self._log,
                                     stderr=subprocess.STDOUT,
                                     cwd=t.TEST_DIR)
        t._children.append(self.proc)
        # QEMU's system emulator writes its pid file before its sockets
        ready = (lambda: (not self.pidfile or os.path.exists(self.pidfile))
                 and all(os.path.exists(s) for s in self.sockets))
        if not t._wait_for(ready, timeout, 'the daemon', self.proc):
            raise RuntimeError('daemon exited (%s):\n%s'
                               % (self.proc.returncode, self.output()))

    def client(self, monitor=0):
        return Client(self.sockets[monitor], system=self.system)

    def negotiated(self, monitor=0, oob=False):
        """A client past negotiation, nothing logged."""
        c = self.client(monitor)
        c.recv()
        c.send('qmp_capabilities', {'enable': ['oob']} if oob else None)
        c.recv()
        return c

    def output(self):
        if not self._log.closed:
            self._log.flush()
        with open(self.logfile, 'rb') as f:
            return f.read().decode('utf-8', 'replace')

    def wait(self, timeout=t.TIMEOUT):
        """Wait for the daemon to exit; log its exit status and output."""
        try:
            rc = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            rc = self.proc.wait(timeout)
            log('[daemon killed: did not exit]')
        self._log.close()
        out = filter_sanitizer_notices(self.output()).strip('\n')
        if out:
            log(out)
        log('[exit status %d]' % rc)
        return rc

    def stop(self, sig=signal.SIGTERM):
        """Signal the daemon and wait for it (logs as wait())."""
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        return self.wait()


def wait_for_file(path, timeout=10):
    return t._wait_for(lambda: os.path.exists(path), timeout, path)



def daemon_commands():
    """The names query-commands lists in the daemon under test."""
    probe = Daemon()
    c = probe.negotiated()
    c.send('query-commands')
    have = {e['name'] for e in c.recv()['return']}
    c.close()
    probe.proc.terminate()
    probe.proc.wait(t.TIMEOUT)
    return have
