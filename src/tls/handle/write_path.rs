//! The write path of a `Tls` handle as a pure type: plaintext accepted by `write`, the
//! requests waiting on it, and the offsets that tie each request to the ciphertext that
//! carries its last byte.
//!
//! A request completes when the inner stream reports written the ciphertext chunk that
//! holds the record with its last plaintext byte. Offsets make that cheap: each request
//! records the plaintext offset of its end; once encrypted, the ciphertext offset of the
//! end of the record that carries it; acknowledgements advance one ciphertext offset.
//! Nothing here touches OpenSSL or the loop: [`Encrypt`] stands for the session.

use std::collections::VecDeque;

use bytes::{Buf, Bytes};

use crate::error::{Error, Result};

/// Plaintext gathered into one record from small writes.
pub(super) const RECORD: usize = 16 * 1024;

/// What the write path needs from a TLS session.
pub(super) trait Encrypt {
    /// Encrypts some of `data` (at least one byte unless `data` is empty) and returns
    /// how many bytes it took.
    fn encrypt(&mut self, data: &[u8]) -> Result<usize>;
    /// The ciphertext offset where the next record would start: everything handed to
    /// the transport so far plus what is waiting to be taken.
    fn cipher_position(&self) -> u64;
}

struct Req<C> {
    /// Plaintext offset of the request's last byte.
    plain_end: u64,
    /// Ciphertext offset of the end of the record that carries it, once encrypted.
    cipher_end: Option<u64>,
    cb: C,
}

/// Plaintext and requests, by offset.
pub(super) struct WritePath<C> {
    /// Plaintext accepted and not yet encrypted, front first.
    pending: VecDeque<Bytes>,
    pending_bytes: usize,
    plain_queued: u64,
    plain_encrypted: u64,
    reqs: VecDeque<Req<C>>,
    /// How many requests at the front of `reqs` have their `cipher_end`.
    marked: usize,
    /// Ciphertext handed to the inner stream, and how far it reported it written.
    cipher_sent: u64,
    cipher_acked: u64,
}

impl<C> Default for WritePath<C> {
    fn default() -> Self {
        WritePath {
            pending: VecDeque::new(),
            pending_bytes: 0,
            plain_queued: 0,
            plain_encrypted: 0,
            reqs: VecDeque::new(),
            marked: 0,
            cipher_sent: 0,
            cipher_acked: 0,
        }
    }
}

impl<C> WritePath<C> {
    /// Accepts a write request.
    pub(super) fn push(&mut self, bufs: impl IntoIterator<Item = Bytes>, cb: C) {
        for b in bufs {
            if !b.is_empty() {
                self.pending_bytes += b.len();
                self.plain_queued += b.len() as u64;
                self.pending.push_back(b);
            }
        }
        self.reqs.push_back(Req {
            plain_end: self.plain_queued,
            cipher_end: None,
            cb,
        });
    }

    /// Plaintext accepted and not yet encrypted.
    pub(super) fn pending_bytes(&self) -> usize {
        self.pending_bytes
    }

    pub(super) fn has_pending(&self) -> bool {
        !self.pending.is_empty()
    }

    /// Whether any request waits for its callback.
    pub(super) fn has_unfinished(&self) -> bool {
        !self.reqs.is_empty()
    }

    #[cfg(test)]
    pub(super) fn has_requests(&self) -> bool {
        !self.reqs.is_empty()
    }

    /// Plaintext encrypted so far (for statistics).
    pub(super) fn plain_encrypted(&self) -> u64 {
        self.plain_encrypted
    }

    /// Ciphertext handed to the inner stream so far.
    pub(super) fn cipher_sent(&self) -> u64 {
        self.cipher_sent
    }

    /// Ciphertext the inner stream reported written so far.
    pub(super) fn cipher_acked(&self) -> u64 {
        self.cipher_acked
    }

    /// Encrypts all pending plaintext, gathering small writes into records of up to
    /// [`RECORD`] bytes, and gives each request whose plaintext is then all encrypted the
    /// ciphertext offset that completes it. `stage` is scratch space for gathering.
    pub(super) fn encrypt(&mut self, enc: &mut impl Encrypt, stage: &mut Vec<u8>) -> Result<()> {
        while let Some(front_len) = self.pending.front().map(Bytes::len) {
            let n = if front_len >= RECORD || self.pending.len() == 1 {
                let Some(front) = self.pending.front_mut() else {
                    break;
                };
                let n = enc.encrypt(front)?;
                front.advance(n);
                if front.is_empty() {
                    self.pending.pop_front();
                }
                n
            } else {
                // Several small buffers: one record instead of one each.
                stage.clear();
                while stage.len() < RECORD {
                    let Some(b) = self.pending.front_mut() else {
                        break;
                    };
                    let take = b.len().min(RECORD - stage.len());
                    stage.extend_from_slice(&b[..take]);
                    b.advance(take);
                    if b.is_empty() {
                        self.pending.pop_front();
                    }
                }
                let mut off = 0;
                while off < stage.len() {
                    match enc.encrypt(&stage[off..])? {
                        0 => return Err(no_progress()),
                        n => off += n,
                    }
                }
                off
            };
            if n == 0 {
                return Err(no_progress());
            }
            // `n` is at most the plaintext taken from `pending`, which `pending_bytes`
            // counts.
            self.pending_bytes -= n;
            self.plain_encrypted += n as u64;
            self.mark(enc.cipher_position());
        }
        // Zero-length writes at the end of the queue.
        self.mark(enc.cipher_position());
        Ok(())
    }

    /// Records plaintext encrypted outside `write` (`try_write`): no request waits on it.
    pub(super) fn encrypted_directly(&mut self, n: usize) {
        self.plain_queued += n as u64;
        self.plain_encrypted += n as u64;
    }

    /// Gives the requests whose plaintext is now all encrypted the ciphertext offset
    /// `cipher_now`. `reqs[..marked]` are marked already, so each is visited once.
    fn mark(&mut self, cipher_now: u64) {
        while let Some(req) = self.reqs.get_mut(self.marked) {
            if req.plain_end > self.plain_encrypted {
                break;
            }
            req.cipher_end = Some(cipher_now);
            self.marked += 1;
        }
    }

    /// Records `len` bytes of ciphertext handed to the inner stream; returns the offset
    /// of their end (the inner write's acknowledgement).
    pub(super) fn sent(&mut self, len: usize) -> u64 {
        self.cipher_sent += len as u64;
        self.cipher_sent
    }

    /// The inner stream wrote the ciphertext up to `end`.
    pub(super) fn acked(&mut self, end: u64) {
        self.cipher_acked = self.cipher_acked.max(end);
    }

    /// Pops the front request if the ciphertext that completes it is acknowledged, or
    /// (with `upto`) lies before that offset: used when the inner stream reports the
    /// chunk ending at `upto` failed or cancelled.
    pub(super) fn pop_done(&mut self, upto: Option<u64>) -> Option<C> {
        let limit = upto.unwrap_or(self.cipher_acked).max(self.cipher_acked);
        let front = self.reqs.front()?;
        if front.cipher_end.is_none_or(|end| end > limit) {
            return None;
        }
        self.marked -= 1;
        self.reqs.pop_front().map(|r| r.cb)
    }

    /// Takes the requests whose ciphertext is not acknowledged (a failure), front first,
    /// and drops the pending plaintext; acknowledged ones stay at the front, to complete
    /// `Ok` in order.
    pub(super) fn take_unacked(&mut self) -> Vec<C> {
        self.pending.clear();
        self.pending_bytes = 0;
        let acked = self.cipher_acked;
        let keep = self
            .reqs
            .iter()
            .take_while(|r| r.cipher_end.is_some_and(|end| end <= acked))
            .count();
        self.marked = self.marked.min(keep);
        self.reqs
            .split_off(keep)
            .into_iter()
            .map(|r| r.cb)
            .collect()
    }

    /// Takes every request still waiting (failure or close), front first, and drops the
    /// pending plaintext.
    pub(super) fn take_all(&mut self) -> impl Iterator<Item = C> + use<C> {
        self.pending.clear();
        self.pending_bytes = 0;
        self.marked = 0;
        std::mem::take(&mut self.reqs).into_iter().map(|r| r.cb)
    }
}

fn no_progress() -> Error {
    Error::InvalidState("TLS write made no progress")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Encrypts into records of at most `max` bytes with `overhead` bytes each.
    struct Fake {
        max: usize,
        overhead: u64,
        position: u64,
        records: Vec<usize>,
    }

    impl Encrypt for Fake {
        fn encrypt(&mut self, data: &[u8]) -> Result<usize> {
            let n = data.len().min(self.max);
            self.position += n as u64 + self.overhead;
            self.records.push(n);
            Ok(n)
        }
        fn cipher_position(&self) -> u64 {
            self.position
        }
    }

    fn fake() -> Fake {
        Fake {
            max: RECORD,
            overhead: 22,
            position: 0,
            records: Vec::new(),
        }
    }

    #[test]
    fn small_writes_share_a_record_and_complete_with_its_acknowledgement() {
        let mut w: WritePath<u32> = WritePath::default();
        let mut enc = fake();
        w.push([Bytes::from_static(b"ab")], 1);
        w.push([Bytes::from_static(b"cde")], 2);
        w.push([], 3); // zero-length
        w.encrypt(&mut enc, &mut Vec::new()).unwrap();
        assert_eq!(enc.records, [5]);
        let end = w.sent(27);
        assert_eq!(w.pop_done(None), None, "nothing acknowledged yet");
        w.acked(end - 1);
        assert_eq!(w.pop_done(None), None);
        w.acked(end);
        assert_eq!(w.pop_done(None), Some(1));
        assert_eq!(w.pop_done(None), Some(2));
        assert_eq!(w.pop_done(None), Some(3));
        assert!(!w.has_requests());
    }

    #[test]
    fn a_large_write_completes_with_the_chunk_that_carries_its_last_record() {
        let mut w: WritePath<u32> = WritePath::default();
        let mut enc = fake();
        w.push([Bytes::from(vec![7u8; RECORD * 2 + 10])], 1);
        w.push([Bytes::from_static(b"x")], 2);
        w.encrypt(&mut enc, &mut Vec::new()).unwrap();
        // The tail of the large write and the small one share the third record.
        assert_eq!(enc.records, [RECORD, RECORD, 11]);
        // Two chunks handed to the inner stream: the first two records, then the third.
        let first = w.sent(RECORD * 2 + 2 * 22);
        let second = w.sent(11 + 22);
        w.acked(first);
        assert_eq!(
            w.pop_done(None),
            None,
            "its last byte is in the third record"
        );
        w.acked(second);
        assert_eq!(w.pop_done(None), Some(1));
        assert_eq!(w.pop_done(None), Some(2));
    }

    #[test]
    fn a_failed_chunk_settles_only_the_requests_it_carried() {
        let mut w: WritePath<u32> = WritePath::default();
        let mut enc = fake();
        w.push([Bytes::from_static(b"a")], 1);
        w.encrypt(&mut enc, &mut Vec::new()).unwrap();
        let first = w.sent(23);
        w.push([Bytes::from_static(b"b")], 2);
        w.encrypt(&mut enc, &mut Vec::new()).unwrap();
        w.sent(23);
        w.push([Bytes::from_static(b"c")], 3); // not encrypted yet
        assert_eq!(w.pop_done(Some(first)), Some(1));
        assert_eq!(w.pop_done(Some(first)), None);
        let rest: Vec<u32> = w.take_all().collect();
        assert_eq!(rest, [2, 3]);
        assert_eq!(w.pending_bytes(), 0);
    }

    #[test]
    fn a_failure_leaves_acknowledged_requests_to_complete_in_order() {
        let mut w: WritePath<u32> = WritePath::default();
        let mut enc = fake();
        w.push([Bytes::from_static(b"a")], 1);
        w.encrypt(&mut enc, &mut Vec::new()).unwrap();
        let first = w.sent(23);
        w.push([Bytes::from_static(b"b")], 2);
        w.encrypt(&mut enc, &mut Vec::new()).unwrap();
        w.sent(23);
        w.push([Bytes::from_static(b"c")], 3);
        w.acked(first);
        assert_eq!(w.take_unacked(), [2, 3]);
        assert_eq!(w.pop_done(None), Some(1));
        assert!(!w.has_requests());
    }

    #[test]
    fn writes_accepted_before_the_handshake_wait_unmarked() {
        let mut w: WritePath<u32> = WritePath::default();
        w.push([Bytes::from_static(b"early")], 1);
        w.acked(1000); // handshake bytes acknowledged: not this request's
        assert_eq!(w.pop_done(None), None);
        assert_eq!(w.pending_bytes(), 5);
    }
}
