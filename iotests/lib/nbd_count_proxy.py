"""A unix-socket relay in front of an NBD server that counts what it sees,
for the nbd-client-multi-conn test: the connections a client opens, which
of them finished the handshake (the server's ACK to NBD_OPT_GO went
through), and which carried requests (the request magic at the start of a
client message; the tests write constant patterns, which cannot contain
it).  Replies can be held back (hold/release).  Each accepted connection gets its own connection to the server; when
either side closes, so does the other."""
import os
import socket
import threading

GO_ACK = (bytes.fromhex('0003e889045565a9') + (7).to_bytes(4, 'big') +
          (1).to_bytes(4, 'big') + (0).to_bytes(4, 'big'))
REQUEST_MAGIC = bytes.fromhex('25609513')


def count_requests(data):
    """Requests other than NBD_CMD_DISC (type 2) in a client's stream."""
    n, i = 0, data.find(REQUEST_MAGIC)
    while i >= 0:
        if data[i + 6:i + 8] != b'\x00\x02':
            n += 1
        i = data.find(REQUEST_MAGIC, i + 1)
    return n


class Conn:
    def __init__(self):
        self.up = b''         # client to server, kept for the search
        self.down = b''       # server to client, up to the handshake's end
        self.ready = False
        self.requests = 0
        self.socks = []


class CountProxy:
    def __init__(self, path, server_path):
        self.server_path = server_path
        self.conns = []
        self.lock = threading.Lock()
        self.flow = threading.Event()
        self.flow.set()
        if os.path.exists(path):
            os.unlink(path)
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.bind(path)
        self.sock.listen(16)
        t = threading.Thread(target=self._accept, daemon=True)
        t.start()

    def _accept(self):
        while True:
            try:
                cli, _ = self.sock.accept()
            except OSError:
                return
            c = Conn()
            with self.lock:
                self.conns.append(c)
            threading.Thread(target=self._relay, args=(c, cli),
                             daemon=True).start()

    def _relay(self, c, cli):
        srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            srv.connect(self.server_path)
        except OSError:
            cli.close()
            return
        with self.lock:
            c.socks = [cli, srv]
        # One thread each way: a relay that waits to send one way while
        # the other way fills up would deadlock both ends.
        threading.Thread(target=self._pump, args=(c, srv, cli, False),
                         daemon=True).start()
        self._pump(c, cli, srv, True)

    def _pump(self, c, src, dst, upward):
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                with self.lock:
                    was_ready = c.ready
                    if not upward and not c.ready:
                        c.down += data
                        c.ready = GO_ACK in c.down
                    elif upward and c.ready:
                        c.up += data
                        c.requests = count_requests(c.up)
                if not upward and was_ready:
                    self.flow.wait()
                dst.sendall(data)
        except OSError:
            pass
        for s in (src, dst):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def hold(self):
        """Hold the servers' replies (handshakes go through): requests
        sent meanwhile are all in flight at once."""
        self.flow.clear()

    def release(self):
        self.flow.set()

    def drop(self, index):
        """Cut the index-th connection (both sides see it end)."""
        with self.lock:
            socks = self.conns[index].socks
        for s in socks:
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def accepted(self):
        with self.lock:
            return len(self.conns)

    def ready(self):
        with self.lock:
            return sum(1 for c in self.conns if c.ready)

    def used(self):
        """Connections that carried at least one request."""
        with self.lock:
            return sum(1 for c in self.conns if c.requests)

    def reset(self):
        with self.lock:
            self.conns = []

    def close(self):
        self.sock.close()
