//! Arbitrary bytes from a server, fed to a client `TlsSession` (which has sent its
//! ClientHello) in chunks: nothing may panic. See `src/lib.rs` for the input format.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|input: &[u8]| {
    let mut session = biotls_fuzz::client();
    let _ = biotls_fuzz::drive(&mut session, input);
    let _ = biotls_fuzz::finish(&mut session);
});
