#!/usr/bin/env python3
"""Checks an echo server with a peer we did not write: Python's socket and ssl modules.

    python3 tests/peers/py_echo_check.py HOST PORT NBYTES [--tls --ca FILE --server-name NAME]

Sends NBYTES random bytes while reading the echo concurrently (one thread, selectors,
so a server that stops reading until we read cannot deadlock us), then half-closes
(TLS: close_notify, then TCP FIN) and checks that the echo is byte-identical and ends
cleanly. Prints "ok N bytes" and exits 0 on success; prints "FAIL: reason" to stderr and
exits 1 otherwise. Every wait is bounded by --timeout (whole run) and --stall (no
progress either way).

TLS runs over ssl.MemoryBIO (ssl.SSLObject), so plain and TLS share one socket loop.
"""

import argparse
import os
import selectors
import socket
import ssl
import sys
import time

CHUNK = 64 * 1024
# Bytes encrypted ahead of what the socket has taken: keeps memory bounded.
MAX_PENDING = 256 * 1024


def fail(reason):
    print(f"FAIL: {reason}", file=sys.stderr)
    sys.exit(1)


class Plain:
    """Identity framing: wire bytes are application bytes."""

    handshake_done = True

    def handshake(self):
        return b""

    def encrypt(self, data):
        return data

    def end(self):
        return b""

    def decrypt(self, raw):
        return raw, False, b""

    def transport_eof(self):
        return None  # for plain TCP, FIN is the clean end


class Tls:
    """A TLS client over a memory-BIO pair, verifying the server against --ca."""

    def __init__(self, ca, server_name):
        ctx = ssl.create_default_context(cafile=ca)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        self.rx = ssl.MemoryBIO()
        self.tx = ssl.MemoryBIO()
        self.obj = ctx.wrap_bio(self.rx, self.tx, server_hostname=server_name)
        self.handshake_done = False
        self.clean_eof = False

    def handshake(self):
        try:
            self.obj.do_handshake()
            self.handshake_done = True
        except ssl.SSLWantReadError:
            pass
        except ssl.SSLError as e:
            fail(f"TLS handshake: {e}")
        return self.tx.read()

    def encrypt(self, data):
        self.obj.write(data)
        return self.tx.read()

    def end(self):
        # Sends close_notify; the peer's close_notify arrives later through decrypt().
        try:
            self.obj.unwrap()
        except ssl.SSLWantReadError:
            pass
        return self.tx.read()

    def decrypt(self, raw):
        self.rx.write(raw)
        if not self.handshake_done:
            return b"", False, self.handshake()
        out = bytearray()
        while True:
            try:
                chunk = self.obj.read(CHUNK)
            except ssl.SSLWantReadError:
                break
            except ssl.SSLZeroReturnError:
                self.clean_eof = True
                break
            except ssl.SSLError as e:
                fail(f"TLS error after {len(out)} bytes of this read: {e}")
            if not chunk:
                self.clean_eof = True
                break
            out += chunk
        return bytes(out), self.clean_eof, self.tx.read()

    def transport_eof(self):
        if not self.clean_eof:
            return "TCP EOF without TLS close_notify (truncated)"
        return None


def check(sock, framing, data, timeout, stall):
    sock.setblocking(False)
    sel = selectors.DefaultSelector()
    sel.register(sock, selectors.EVENT_READ)
    wire = bytearray(framing.handshake())
    sent_app = 0  # application bytes handed to framing
    ended = False  # end() queued
    write_closed = False  # TCP write side shut down
    received = bytearray()
    eof = False
    deadline = time.monotonic() + timeout
    last_progress = time.monotonic()

    while not eof:
        now = time.monotonic()
        if now > deadline:
            fail(f"timeout after {timeout}s: sent {sent_app}, received {len(received)}")
        if now - last_progress > stall:
            fail(f"no progress for {stall}s: sent {sent_app}, received {len(received)}")

        # Encrypt more application data while the wire buffer is short.
        if framing.handshake_done:
            while sent_app < len(data) and len(wire) < MAX_PENDING:
                chunk = data[sent_app : sent_app + CHUNK]
                wire += framing.encrypt(chunk)
                sent_app += len(chunk)
            if sent_app == len(data) and not ended:
                wire += framing.end()
                ended = True

        want = selectors.EVENT_READ | (selectors.EVENT_WRITE if wire else 0)
        sel.modify(sock, want)
        for _key, mask in sel.select(timeout=0.5):
            if mask & selectors.EVENT_WRITE and wire:
                try:
                    n = sock.send(wire)
                    del wire[:n]
                    last_progress = time.monotonic()
                except (BlockingIOError, InterruptedError):
                    pass
                except OSError as e:
                    fail(f"send: {e} (sent {sent_app}, received {len(received)})")
            if mask & selectors.EVENT_READ:
                try:
                    raw = sock.recv(256 * 1024)
                except (BlockingIOError, InterruptedError):
                    continue
                except OSError as e:
                    fail(f"recv: {e} (sent {sent_app}, received {len(received)})")
                last_progress = time.monotonic()
                if not raw:
                    reason = framing.transport_eof()
                    if reason:
                        fail(reason)
                    eof = True
                    break
                plain, clean_eof, reply = framing.decrypt(raw)
                wire += reply
                start = len(received)
                received += plain
                if len(received) > len(data):
                    fail(f"received {len(received)} bytes, more than the {len(data)} sent")
                if received[start:] != data[start : len(received)]:
                    at = next(i for i in range(start, len(received)) if received[i] != data[i])
                    fail(f"echo differs from what was sent at byte offset {at}")
                if clean_eof:
                    eof = True
                    break
        if ended and not wire and not write_closed:
            sock.shutdown(socket.SHUT_WR)
            write_closed = True

    if len(received) != len(data):
        fail(f"echo ended after {len(received)} of {len(data)} bytes")
    sel.close()


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("host")
    ap.add_argument("port", type=int)
    ap.add_argument("nbytes", type=int)
    ap.add_argument("--tls", action="store_true", help="speak TLS (verified against --ca)")
    ap.add_argument("--ca", help="CA certificate (PEM) that signed the server's certificate")
    ap.add_argument("--server-name", help="name to verify and send as SNI (default: HOST)")
    ap.add_argument("--timeout", type=float, default=60.0, help="whole run, seconds")
    ap.add_argument("--stall", type=float, default=15.0, help="max seconds without progress")
    args = ap.parse_args()
    if args.tls and not args.ca:
        ap.error("--tls needs --ca")

    framing = Tls(args.ca, args.server_name or args.host) if args.tls else Plain()
    data = os.urandom(args.nbytes)
    try:
        sock = socket.create_connection((args.host, args.port), timeout=args.stall)
    except OSError as e:
        fail(f"connect to {args.host}:{args.port}: {e}")
    with sock:
        check(sock, framing, data, args.timeout, args.stall)
    print(f"ok {len(data)} bytes")


if __name__ == "__main__":
    main()
