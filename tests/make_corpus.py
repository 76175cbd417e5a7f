#!/usr/bin/env python3
"""Writes the hand-made inputs of tests/corpus/ (python3 tests/make_corpus.py).

Each input starts with the chunking header of fuzz/src/lib.rs: byte 0 is k (mod 8),
then k chunk sizes (a size byte s feeds s + 1 bytes); 0x00 feeds the rest whole.
The ClientHello and the server flight come from Python's ssl module (OpenSSL) over
memory BIOs, so their random fields change when this is run again. The fuzz-*.bin
inputs are not made here: they were picked from a cargo-fuzz run.
"""
import os
import ssl

HERE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "corpus")
CERTS = os.path.join(HERE, "..", "..", "certs")
WHOLE = b"\x00"


def hello_and_flight():
    cctx = ssl.create_default_context(cafile=os.path.join(CERTS, "ca.pem"))
    sctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    sctx.load_cert_chain(os.path.join(CERTS, "server.pem"), os.path.join(CERTS, "server.key"))
    c_in, c_out, s_in, s_out = (ssl.MemoryBIO() for _ in range(4))
    client = cctx.wrap_bio(c_in, c_out, server_hostname="localhost")
    server = sctx.wrap_bio(s_in, s_out, server_side=True)
    try:
        client.do_handshake()
    except ssl.SSLWantReadError:
        pass
    hello = c_out.read()
    s_in.write(hello)
    try:
        server.do_handshake()
    except ssl.SSLWantReadError:
        pass
    return hello, s_out.read()


def record(ctype, body, version=b"\x03\x03"):
    return bytes([ctype]) + version + len(body).to_bytes(2, "big") + body


def main():
    hello, flight = hello_and_flight()
    bad_len = bytearray(hello)
    bad_len[6:9] = b"\xff\xff\xff"  # handshake message length far past the record
    sslv2 = bytes([0x80, 0x2E, 0x01, 0x03, 0x01, 0x00, 0x15, 0x00, 0x00, 0x00, 0x10])
    sslv2 += bytes(range(21)) + bytes(16)
    inputs = {
        "http-request": WHOLE + b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n",
        "http-response": WHOLE + b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n",
        "huge-record-header": WHOLE + bytes([22, 3, 1, 0xFF, 0xFF]) + bytes([1]) * 300,
        "huge-application-record": WHOLE + bytes([23, 3, 3, 0xFF, 0xFF]) + bytes(600),
        "client-hello-cut": WHOLE + hello[: len(hello) // 2],
        "client-hello-twice": WHOLE + hello + hello,
        "client-hello-byte-by-byte": b"\x01\x00" + hello,
        "client-hello-bad-length": WHOLE + bytes(bad_len),
        "ccs-then-client-hello": WHOLE + record(20, b"\x01") + hello,
        "sslv2-client-hello": WHOLE + sslv2,
        "fatal-alert-first": WHOLE + record(21, b"\x02\x28"),
        "empty-handshake-records": b"\x01\x04" + record(22, b"") * 40,
        "application-data-first": WHOLE + record(23, b"hello"),
        "unknown-content-type": WHOLE + record(99, b"\x01\x02\x03\x04"),
        "dtls-record-version": WHOLE + record(22, b"\x01\x00\x00\x00", b"\xfe\xff"),
        "server-hello-garbage": WHOLE + record(22, b"\x02\x00\x00\x26" + bytes(range(38))),
        "server-flight": WHOLE + flight,
        "server-flight-chunked": b"\x03\x04\x10\xff" + flight,
    }
    for name, data in inputs.items():
        with open(os.path.join(HERE, name + ".bin"), "wb") as f:
            f.write(data)
        print(f"{name}.bin: {len(data)} bytes")


if __name__ == "__main__":
    main()
