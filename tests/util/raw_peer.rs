//! A TLS peer driven by hand: a sans-I/O `TlsSession` over one end of a `Duplex`, for
//! tests that need a peer to misbehave in ways a `Tls` handle never would (never read,
//! flood KeyUpdates, send garbage or alerts, stop mid-record).

use std::cell::RefCell;
use std::rc::Rc;

use biotls::tls::{ReadOutcome, TlsSession};
use biotls::{Duplex, Loop, Stream};
use bytes::{Bytes, BytesMut};

/// What the raw peer has seen.
#[derive(Default)]
pub struct Seen {
    pub plaintext: Vec<u8>,
    pub ended: Option<String>,
}

/// A raw TLS peer on `end`.
pub struct RawPeer {
    pub end: Duplex,
    pub session: Rc<RefCell<TlsSession>>,
    pub seen: Rc<RefCell<Seen>>,
}

impl RawPeer {
    /// Starts driving `session` over `end`: it reads, answers the handshake and
    /// decrypts whatever arrives until [`stop_reading`](RawPeer::stop_reading).
    pub fn start(lp: &mut Loop, end: Duplex, session: TlsSession) -> RawPeer {
        let peer = RawPeer {
            end,
            session: Rc::new(RefCell::new(session)),
            seen: Rc::new(RefCell::new(Seen::default())),
        };
        peer.read(lp);
        // A client's ClientHello.
        let _ = peer.session.borrow_mut().handshake();
        peer.flush(lp);
        peer
    }

    fn read(&self, lp: &mut Loop) {
        let (session, seen) = (Rc::clone(&self.session), Rc::clone(&self.seen));
        self.end
            .start_read(lp, move |lp, end, r| {
                let mut s = session.borrow_mut();
                match r {
                    Ok(Some(data)) => s.feed_ciphertext(data),
                    Ok(None) => s.feed_eof(),
                    Err(e) => {
                        seen.borrow_mut().ended = Some(format!("{e}"));
                        return;
                    }
                }
                let mut buf = BytesMut::new();
                loop {
                    match s.read(&mut buf) {
                        Ok(ReadOutcome::Data(_)) => {}
                        Ok(ReadOutcome::WantRead) => break,
                        Ok(ReadOutcome::Eof) => {
                            seen.borrow_mut().ended = Some("eof".into());
                            break;
                        }
                        Err(e) => {
                            seen.borrow_mut().ended = Some(format!("{e}"));
                            break;
                        }
                    }
                }
                seen.borrow_mut().plaintext.extend_from_slice(&buf);
                if let Some(c) = s.take_ciphertext() {
                    let _ = end.write(lp, c, |_, _, _| {});
                }
            })
            .unwrap();
    }

    /// Sends whatever ciphertext the session has.
    pub fn flush(&self, lp: &mut Loop) {
        let data = self.session.borrow_mut().take_ciphertext();
        if let Some(data) = data {
            // A transport that refuses (after an injected fault) just drops it.
            let _ = self.end.write(lp, data, |_, _, _| {});
        }
    }

    /// Sends raw bytes, bypassing the session.
    pub fn send_raw(&self, lp: &mut Loop, data: &[u8]) {
        let _ = self
            .end
            .write(lp, Bytes::copy_from_slice(data), |_, _, _| {});
    }

    pub fn stop_reading(&self, lp: &mut Loop) {
        let _ = self.end.stop_read(lp);
    }

    pub fn handshake_done(&self) -> bool {
        self.session.borrow().is_handshake_complete()
    }
}
