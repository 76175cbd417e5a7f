//! What a [`Tls`] handle holds on the receive side, for flow-control checks and tests.

use super::{Tls, st_ref};
use crate::event_loop::Loop;
use crate::stream::Stream;

impl<S: Stream> Tls<S> {
    /// Ciphertext received from the inner stream and not yet decrypted (0 when closed).
    ///
    /// It stays small: the handle reads the inner stream only while the handshake needs
    /// input or the user is reading, so a peer that sends to a handle whose user stopped
    /// reading fills the transport's buffers (the kernel's, for TCP), not this one.
    pub fn buffered_ciphertext_in(self, lp: &Loop) -> usize {
        st_ref::<S>(lp, self.0).map_or(0, |t| t.session.buffered_ciphertext_in())
    }
}
