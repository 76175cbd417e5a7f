#!/usr/bin/env python3
"""Where a server's heap goes per connection, from a valgrind DHAT profile.

    cargo run --release --example throughput -- --servers biotls --only idle \\
        --groups X25519 --idle 300 --connect-parallel 2 --wrap "valgrind --tool=dhat --dhat-out-file=/tmp/dhat.%p"
    python3 examples/throughput/dhat_summary.py 300 /tmp/dhat.*

Takes the heap live at the profile's global peak (DHAT's "t-gmax": with idle or stalled
connections held open, the moment they are all there), groups each allocation by what
made it (the first group whose pattern matches a frame of its stack, in the order of
GROUPS; what was allocated outside the loop is start-up) and divides by the number of
connections. Process-wide state (configuration, OpenSSL's tables, the loop's buffers) is
divided too: it is small next to a few hundred connections, and listed on its own
lines. Establish the connections a few at a time (`--connect-parallel 2`), or the peak
comes while handshakes are in flight.
"""

import collections
import json
import re
import sys

GROUPS = [
    ("process start-up: configuration, OpenSSL's tables", None),
    ("OpenSSL: record layers (read and write)", r"^tls_int_new_record_layer @"),
    ("OpenSSL: the client's ML-KEM public key (kept until SSL_free)", r"ml_kem|mlx_kem"),
    ("OpenSSL: the SSL object", r"^ossl_ssl_connection_new_int @"),
    ("OpenSSL: cipher contexts (AES-GCM, both directions)",
     r"^aes_gcm_newctx @|^EVP_CIPHER_CTX_new @"),
    ("OpenSSL: the session (SSL_SESSION)", r"^ssl_session_dup|^SSL_SESSION_new @|^ssl_get_new_session @"),
    ("OpenSSL: key shares (ours and the client's)",
     r"^EVP_PKEY_generate @|^ecx_gen @|^ssl_generate_|^tls_accept_ksgroup @"),
    ("OpenSSL: handshake digests kept", r"^ssl3_digest_cached_records @|save_handshake_digest"),
    ("OpenSSL: memory BIOs", r"^BIO_new_ex @|^BIO_meth_new @"),
    # Matched against the innermost frame outside the allocator only.
    ("biotls: the loop's shared buffers (read, plaintext, ciphertext)",
     # (inlined frames have short names: `decrypt_batch<biotls::tcp::Tcp>`)
     r"^(biotls::stream_socket::read::read_loop|(\S*::)?decrypt_batch<|"
     r"(\S*::)?pump::(encrypt|flush)|(encrypt|flush)<|biotls::event_loop::Loop::new)"),
    # Matched against the innermost frame outside the allocator only: a C function
    # (no Rust path in its name) is OpenSSL's (libc's allocator frames are skipped).
    ("OpenSSL: anything else", r"^[A-Za-z_][A-Za-z0-9_.]* @"),
    ("biotls: TLS session and handle", r"biotls::tls::"),
    ("biotls: TCP handle, loop slots, timers", r"biotls::|mio::"),
    ("tls_echo_server and biotls::echo", r"."),
]


# The groups matched against the innermost frame outside the allocator, not any frame.
INNERMOST = (
    "biotls: the loop's shared buffers (read, plaintext, ciphertext)",
    "OpenSSL: anything else",
)
# Frames of the allocator and of the containers' growth, skipped to find who allocated.
ALLOCATOR = re.compile(
    r"^(alloc|__rust|malloc|calloc|realloc|UnknownInlinedFun|bytes::|<bytes::|"
    r"<alloc::|core::|<core::)|raw_vec|finish_grow|grow_|reserve|box_new|with_capacity|try_allocate")


def frame_name(text):
    """The function name in DHAT's frame text ("0x...: name (file:line)")."""
    m = re.search(r": (.*?) \(", text)
    return m.group(1) if m else text


def main():
    if len(sys.argv) < 3:
        sys.exit(__doc__)
    conns = float(sys.argv[1])
    for path in sys.argv[2:]:
        with open(path) as f:
            data = json.load(f)
        # Function names, and for OpenSSL's catch-all the whole text (with the file).
        frames = [frame_name(t) + " @ " + t for t in data["ftbl"]]
        patterns = [(name, p and re.compile(p)) for name, p in GROUPS]
        totals = collections.Counter()
        for pp in data["pps"]:
            live = pp.get("gb", 0)
            if not live:
                continue
            stack = [frames[i] for i in pp["fs"]]
            if not any("Loop::run" in s for s in stack):
                totals[GROUPS[0][0]] += live  # before the loop ran: start-up
                continue
            innermost = next((s for s in stack if not ALLOCATOR.search(s)), "")
            for name, pattern in patterns[1:]:
                if name in INNERMOST:
                    found = pattern.search(innermost)
                else:
                    found = any(pattern.search(s) for s in stack)
                if found:
                    totals[name] += live
                    break
        total = sum(totals.values())
        print(f"\n{path}: {total / conns / 1024:.1f} KiB of heap per connection "
              f"at the peak ({conns:.0f} connections)\n")
        print("| made by | bytes per connection |")
        print("|---|---:|")
        for name, _ in GROUPS:
            if totals[name]:
                print(f"| {name} | {totals[name] / conns:.0f} |")


if __name__ == "__main__":
    main()
