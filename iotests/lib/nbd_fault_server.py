#!/usr/bin/env python3
"""A tiny NBD server that misbehaves on purpose, for the client tests.

    nbd_fault_server.py SOCKET SIZE [--classic] [--drop EVENT] [--once]

It serves SIZE bytes (zeroes at first; writes are kept in memory) on a
unix SOCKET, with the handshake of the oldest servers: old-style
(--classic) or newstyle without the "fixed" bit, and no transmission flags
at all (0), which QEMU accepts and libnbd alone does not.  Only READ, WRITE
and DISC exist, with simple replies.

--drop EVENT closes the connection at the first EVENT: "accept" (before
sending anything), "greeting" (after the first 8 bytes), "request" (before
reading a request), "data" (after reading a write's data, before
replying), "reply" (after sending a reply).  --once exits after the first
connection ends, like a server that goes away for good.  "Listening" on
stdout says the socket is ready; "Closing connection" that a drop happened.
"""

import os
import socket
import struct
import sys

NBD_MAGIC = b'NBDMAGIC'
CLISERV_MAGIC = 0x00420281861253
OPTS_MAGIC = b'IHAVEOPT'
REQUEST_MAGIC = 0x25609513
SIMPLE_REPLY_MAGIC = 0x67446698
OPT_EXPORT_NAME = 1
CMD_READ, CMD_WRITE, CMD_DISC = 0, 1, 2
EINVAL = 22


class Dropped(Exception):
    pass


def recv_all(conn, n):
    buf = b''
    while len(buf) < n:
        chunk = conn.recv(n - len(buf))
        if not chunk:
            raise EOFError
        buf += chunk
    return buf


def handshake(conn, size, classic):
    if classic:
        conn.sendall(NBD_MAGIC + struct.pack('>QQI', CLISERV_MAGIC, size, 0)
                     + b'\0' * 124)
        return
    conn.sendall(NBD_MAGIC + OPTS_MAGIC + struct.pack('>H', 0))
    recv_all(conn, 4)                           # client flags
    magic, opt, length = struct.unpack('>8sII', recv_all(conn, 16))
    if magic != OPTS_MAGIC or opt != OPT_EXPORT_NAME:
        raise EOFError
    recv_all(conn, length)                      # any export name will do
    conn.sendall(struct.pack('>QH', size, 0) + b'\0' * 124)


def serve(conn, disk, classic, drop):
    if drop == 'accept':
        raise Dropped
    if drop == 'greeting':
        conn.sendall(NBD_MAGIC)
        raise Dropped
    handshake(conn, len(disk), classic)
    while True:
        if drop == 'request':
            raise Dropped
        magic, _, cmd, handle, offset, length = struct.unpack(
            '>IHHQQI', recv_all(conn, 28))
        if magic != REQUEST_MAGIC:
            return
        err = 0 if offset + length <= len(disk) else EINVAL
        if cmd == CMD_DISC:
            return
        if cmd == CMD_WRITE:
            data = recv_all(conn, length)
            if drop == 'data':
                raise Dropped
            if not err:
                disk[offset:offset + length] = data
        elif cmd != CMD_READ:
            err = EINVAL
        reply = struct.pack('>IIQ', SIMPLE_REPLY_MAGIC, err, handle)
        if cmd == CMD_READ and not err:
            reply += bytes(disk[offset:offset + length])
        conn.sendall(reply)
        if drop == 'reply':
            raise Dropped


def main(argv):
    args = argv[1:]
    classic = '--classic' in args
    once = '--once' in args
    drop = None
    if '--drop' in args:
        drop = args[args.index('--drop') + 1]
    path, size = args[0], int(args[1])
    disk = bytearray(size)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.bind(path)
    sock.listen(1)
    print('Listening', flush=True)
    while True:
        conn, _ = sock.accept()
        try:
            serve(conn, disk, classic, drop)
        except Dropped:
            print('Closing connection', flush=True)
        except (EOFError, ConnectionError):
            pass
        conn.close()
        if once:
            sock.close()
            os.unlink(path)
            return 0


if __name__ == '__main__':
    sys.exit(main(sys.argv))
