#!/usr/bin/env python3
"""Summarise `throughput --perf DIR` profiles of tls_echo_server as Markdown tables.

    python3 examples/throughput/perf_summary.py data DIR/003-echo-64-KiB-biotls.data ...
    python3 examples/throughput/perf_summary.py handshake DIR/001-handshakes--full--X25519-biotls.data ...

`data` groups each sample by what its innermost frames are doing (AES-GCM, the kernel's
copies, the memory BIO's copies, zero-filling, ...); `handshake` groups by the phase of
the handshake found anywhere on the stack (key exchange, key schedule, tickets, ...),
with a few costs counted across phases. One column per profile; shares of all samples.
Needs `perf` (it runs `perf script`); a file not ending in `.data` is read as the text
`perf script -F comm,tid,ip,sym` prints.
"""

import collections
import subprocess
import sys

# Frames (substrings) that say which system call a kernel sample is in.
SYSCALLS = [
    ("read", ("__sys_recvfrom", "sock_recvmsg", "ksys_read", "vfs_read", "__libc_recv",
              "__libc_read", "__GI___libc_read", "__GI___recv")),
    ("write", ("do_writev", "vfs_writev", "ksys_write", "vfs_write", "__sys_sendto",
               "sock_sendmsg", "__GI___writev", "__libc_write", "__libc_send", "__GI___send")),
    ("epoll_wait", ("do_epoll_wait", "ep_poll", "epoll_wait")),
    ("accept", ("do_accept", "__sys_accept4", "__libc_accept", "accept4")),
    ("close", ("__x64_sys_close", "__fput", "__GI___close")),
    ("shutdown", ("__sys_shutdown",)),
    ("epoll_ctl", ("do_epoll_ctl",)),
    ("setsockopt", ("__sys_setsockopt", "do_sock_setsockopt")),
    ("getpeername", ("__sys_getpeername",)),
    ("memory", ("__do_sys_brk", "do_mmap", "__vm_munmap", "do_madvise")),
    ("getrandom", ("__do_sys_getrandom", "get_random_bytes_user")),
]

RUST = ("biotls::", "<biotls::", "tls_echo_server::", "mio::", "<mio::", "bytes::",
        "<bytes::", "alloc::", "<alloc::", "core::", "<core::", "std::", "<std::", "<T as",
        "hashbrown", "<&", "env_logger", "<env_logger", "log::")
ALLOC = ("malloc", "free", "realloc", "calloc", "cfree", "_int_", "tcache", "unlink_chunk",
         "malloc_consolidate", "__libc_malloc", "__libc_free", "__libc_calloc",
         "__libc_realloc", "__GI___libc_malloc", "__GI___libc_free", "CRYPTO_malloc",
         "CRYPTO_free", "CRYPTO_zalloc", "__rust_alloc", "__rust_dealloc")
FETCH = ("EVP_CIPHER_fetch", "EVP_MD_fetch", "evp_generic_fetch", "inner_evp_generic_fetch",
         "ossl_method_store", "EVP_KEYMGMT_fetch", "EVP_SIGNATURE_fetch", "EVP_KEM_fetch",
         "EVP_KEYEXCH_fetch", "EVP_MAC_fetch", "EVP_KDF_fetch", "ossl_namemap",
         "ossl_decoder", "OSSL_DECODER", "ossl_lib_ctx", "ossl_property", "ossl_ht_",
         "ossl_fnv1a_hash")

PHASES = [
    ("session tickets (ASN.1 encoding, encryption, HMAC; biotls sends one per handshake)",
     ("tls_construct_new_session_ticket", "construct_stateless_ticket", "create_ticket_prequel")),
    ("CertificateVerify (ECDSA P-256 signature)", ("tls_construct_cert_verify",)),
    ("key exchange (key share generation, derivation, ML-KEM encapsulation)",
     ("tls_parse_ctos_key_share", "tls_construct_stoc_key_share", "ssl_generate_pkey",
      "ssl_derive", "ssl_encapsulate", "ssl_gensecret")),
    ("key schedule (HKDF, traffic keys, cipher contexts)",
     ("tls13_change_cipher_state", "tls13_generate_secret", "tls13_generate_handshake_secret",
      "tls13_generate_master_secret", "tls13_hkdf_expand", "tls13_final_finish_mac",
      "tls13_derive")),
    ("`SSL` object and record layers, created and freed",
     ("ssl_set_new_record_layer", "SSL_new", "ossl_ssl_connection_new", "TlsSession::server",
      "SSL_free", "ossl_ssl_connection_free", "drop_in_place<biotls::tls::session::TlsSession>",
      "drop_in_place<openssl::ssl::SslStream")),
    ("ClientHello processing",
     ("tls_process_client_hello", "tls_post_process_client_hello",
      "tls_early_post_process_client_hello", "tls_parse_extension", "tls_collect_extensions")),
    ("Certificate message",
     ("tls_construct_server_certificate", "ssl3_output_cert_chain", "ssl_add_cert_chain")),
    ("other messages, state machine",
     ("state_machine", "SSL_do_handshake", "ossl_statem", "SSL_read", "SSL_write",
      "SSL_shutdown", "ssl3_read_bytes", "ssl3_write_bytes")),
]


def samples(path):
    """Yields each sample's stack, innermost frame first (symbol names only)."""
    if path.endswith(".data"):
        text = subprocess.run(["perf", "script", "-F", "comm,tid,ip,sym", "-i", path],
                              capture_output=True, text=True, errors="replace",
                              check=True).stdout
    else:
        with open(path, errors="replace") as f:
            text = f.read()
    stack = []
    for line in text.split("\n"):
        if not line.strip():
            if stack:
                yield stack
            stack = []
        elif line[0] in "\t ":
            parts = line.strip().split(None, 1)
            stack.append(parts[1] if len(parts) > 1 else "?")
        else:
            stack = []
    if stack:
        yield stack


def has(stack, *names):
    return any(n in frame for frame in stack for n in names)


def syscall(stack):
    for frame in stack:
        for name, keys in SYSCALLS:
            if any(k in frame for k in keys):
                return name
    return None


def data_cost(st):
    """What the innermost frames of a data-path sample are doing."""
    leaf = st[0]
    call = syscall(st)
    if call:
        if call == "write" and leaf in ("_copy_from_iter", "_copy_from_user"):
            return "kernel: copying into the socket (`writev`)"
        if call == "read" and leaf in ("_copy_to_iter", "_copy_to_user"):
            return "kernel: copying out of the socket (`read`)"
        if call == "write":
            return "kernel: rest of sending (TCP, loopback delivery to the client, wake-ups)"
        if call == "read":
            return "kernel: rest of receiving (TCP, ACKs, softirq)"
        if call == "epoll_wait":
            return "kernel: `epoll_wait` and switching"
        return "other"
    if "aes_gcm" in leaf or "ghash" in leaf.lower() or "aesni" in leaf or "vaes" in leaf \
            or ("gcm_" in leaf.lower() and "ossl_gcm_stream" not in leaf):
        return "AES-128-GCM (VAES/AVX-512, both directions)"
    if "memmove" in leaf or "memcpy" in leaf:
        if has(st, "MemDuplex", "BIO_read", "bread_conv", "tls_default_read_n", "bio_read"):
            return "memory BIO: ciphertext copied into OpenSSL"
        if has(st, "ssl3_read_bytes"):
            return "`SSL_read` copying plaintext to the caller"
        if has(st, "BIO_write", "bwrite_conv", "bio_write", "extend_from_slice",
               "tls_write_records"):
            return "memory BIO: ciphertext copied out of OpenSSL"
        return "other"
    if ("memset" in leaf or "write_bytes" in leaf) and has(st, "TlsSession::read"):
        return "zero-filling the buffer before `SSL_read`"
    if ("memset" in leaf or "write_bytes" in leaf) and has(st, "take_read_buf"):
        return "zero-filling the socket read buffer (`Loop::take_read_buf`)"
    if leaf.startswith(ALLOC):
        return "malloc/free"
    if "ErrorStack::get" in leaf or leaf.startswith(("ERR_", "ossl_err_", "err_")):
        return "OpenSSL record layer, EVP, error queue, thread-locals"
    if leaf.startswith(RUST):
        return "biotls and Rust std (loop, handles, queues)"
    if any(k in leaf for k in ("ssl", "SSL", "tls", "ossl", "EVP", "evp", "OPENSSL", "OSSL",
                               "BIO", "CRYPTO", "WPACKET", "PACKET", "pthread")):
        return "OpenSSL record layer, EVP, error queue, thread-locals"
    return "other"


def handshake_phase(st):
    for name, keys in PHASES:
        if has(st, *keys):
            return name
    if syscall(st) or has(st, "handle_softirqs", "entry_SYSCALL"):
        return "kernel: accept, reads, writes, loopback delivery, close, epoll"
    if st[0].startswith(RUST):
        return "biotls, Rust std, the connection's log line"
    return "other"


def handshake_extras(st):
    """Costs counted across phases."""
    out = []
    if has(st[:12], *FETCH):
        out.append("across phases: OpenSSL algorithm fetches and property lookups")
    if st[0].startswith(ALLOC):
        out.append("across phases: malloc/free")
    if has(st, "env_logger", "log::__private_api"):
        out.append("across phases: the one log line per connection (env_logger)")
    return out


def main():
    if len(sys.argv) < 3 or sys.argv[1] not in ("data", "handshake"):
        sys.exit(__doc__)
    mode, paths = sys.argv[1], sys.argv[2:]
    columns = []
    for path in paths:
        counts, extras, total = collections.Counter(), collections.Counter(), 0
        for st in samples(path):
            total += 1
            if mode == "data":
                counts[data_cost(st)] += 1
            else:
                counts[handshake_phase(st)] += 1
                extras.update(handshake_extras(st))
        columns.append((path.rsplit("/", 1)[-1], total, counts, extras))
    rows = sorted({k for c in columns for k in c[2]}, key=lambda k: -columns[0][2][k])
    rows = [r for r in rows if r != "other"] + ["other"]
    rows += sorted({k for c in columns for k in c[3]})
    print("| " + ("cost" if mode == "data" else "phase") + " | "
          + " | ".join(f"{name} ({total} samples)" for name, total, _, _ in columns) + " |")
    print("|---|" + "---:|" * len(columns))
    for row in rows:
        cells = []
        for _, total, counts, extras in columns:
            n = counts[row] if row in counts else extras[row]
            cells.append(f"{100 * n / max(total, 1):.1f}%")
        print(f"| {row} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
