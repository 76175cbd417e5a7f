//! The server's wait for the ClientHello: what a server session holds before it creates
//! its OpenSSL `SSL`.
//!
//! An `SSL` with its record layers costs about 20 KiB once it has read a byte, and a
//! peer that sends half a ClientHello and then nothing would hold that until the
//! handshake timeout. So a server session first collects the records of the client's
//! ClientHello here, as plain bytes (at most [`HOLD_LIMIT`]), and creates the `SSL` only
//! once the message is complete, or once something arrives that OpenSSL must judge at
//! once. The bytes are handed to OpenSSL unchanged, so every refusal (and its alert) is
//! OpenSSL's own: this module never refuses anything itself.
//!
//! Hand over at once ([`Flight::Ready`]) whatever OpenSSL refuses at the record header
//! (a version whose major byte is not 3, which includes HTTP and other plain text, or a
//! length over 16 KiB), a record that is not a handshake record, a handshake message that
//! is not a ClientHello, an empty record, and a ClientHello too large to hold. Wait
//! ([`Flight::Need`]) while a record or the ClientHello is incomplete. SSLv2-format
//! ClientHellos, which OpenSSL still parses, are waited for the same way. This module
//! must never copy more than [`HOLD_LIMIT`] bytes, and never panics on peer bytes.

use std::collections::VecDeque;

use bytes::Bytes;

/// The most plaintext a TLS record may carry (2^14), and so the longest first record
/// OpenSSL accepts.
const MAX_PLAIN: usize = 16 * 1024;
/// Record header length.
const HEADER: usize = 5;
/// Bytes of ClientHello records held, at most: one full record's worth.
pub(crate) const HOLD_LIMIT: usize = MAX_PLAIN + HEADER;
/// Content type of handshake records.
const HANDSHAKE: u8 = 22;
/// Handshake message type of a ClientHello.
const CLIENT_HELLO: u8 = 1;
/// Handshake message header: type and a 24-bit length.
const MSG_HEADER: usize = 4;
/// The shortest SSLv2 ClientHello OpenSSL reads (its `MIN_SSL2_RECORD_LEN`).
const MIN_SSL2_LEN: usize = 9;

/// What the bytes collected so far say.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Flight {
    /// Incomplete: no decision before this many bytes in all (a lower bound while a
    /// header is incomplete).
    Need(usize),
    /// Create the `SSL` now and hand it everything: the ClientHello is complete, or
    /// OpenSSL must judge what arrived.
    Ready,
}

/// Where the scan of the held bytes has got to, so that bytes arriving one at a time
/// are each looked at once.
#[derive(Debug, Default)]
struct Scan {
    /// Offset of the next record header.
    next_record: usize,
    /// The handshake message header, as far as received.
    msg_header: [u8; MSG_HEADER],
    /// Handshake payload bytes received so far (all records).
    payload: usize,
}

impl Scan {
    /// Scans the complete records of `held` from where the last call stopped.
    fn status(&mut self, held: &[u8]) -> Flight {
        if self.next_record == 0
            && let Some(flight) = sslv2(held)
        {
            return flight;
        }
        loop {
            let at = self.next_record;
            let Some(header) = held.get(at..at + HEADER) else {
                return Flight::Need(at + HEADER);
            };
            let len = usize::from(u16::from_be_bytes([header[3], header[4]]));
            let end = at + HEADER + len;
            // What OpenSSL refuses at the header, and what would not fit.
            if header[1] != 3 || len > MAX_PLAIN || end > HOLD_LIMIT {
                return Flight::Ready;
            }
            let Some(body) = held.get(at + HEADER..end) else {
                return Flight::Need(end);
            };
            if header[0] != HANDSHAKE || body.is_empty() {
                return Flight::Ready;
            }
            // The first bytes of the payload are the message header.
            for (i, byte) in body.iter().enumerate() {
                let Some(slot) = self.msg_header.get_mut(self.payload + i) else {
                    break;
                };
                *slot = *byte;
            }
            self.payload += len;
            self.next_record = end;
            if self.payload >= MSG_HEADER {
                let [kind, l0, l1, l2] = self.msg_header;
                let msg_len = usize::from(l0) << 16 | usize::from(l1) << 8 | usize::from(l2);
                if kind != CLIENT_HELLO || self.payload >= MSG_HEADER + msg_len {
                    return Flight::Ready;
                }
                // The records still to come need a header each: if even their payload
                // cannot fit, OpenSSL takes over now.
                if end + (MSG_HEADER + msg_len - self.payload) > HOLD_LIMIT {
                    return Flight::Ready;
                }
            }
        }
    }
}

/// The status of an SSLv2-format ClientHello (which OpenSSL reads as a first record),
/// or `None` if `held` does not start like one.
fn sslv2(held: &[u8]) -> Option<Flight> {
    let first = *held.first()?;
    if first & 0x80 == 0 {
        return None;
    }
    let &[_, low, kind, ..] = held else {
        return Some(Flight::Need(3));
    };
    if kind != CLIENT_HELLO {
        return None; // read as a TLS header, which OpenSSL refuses at once
    }
    let len = usize::from(first & 0x7f) << 8 | usize::from(low);
    if !(MIN_SSL2_LEN..=MAX_PLAIN).contains(&len) {
        return Some(Flight::Ready);
    }
    Some(if held.len() >= 2 + len {
        Flight::Ready
    } else {
        Flight::Need(2 + len)
    })
}

/// The ciphertext a server session received before creating its `SSL`.
#[derive(Debug, Default)]
pub(crate) struct Hello {
    /// The first bytes, copied out of the transport's buffers (which an incomplete
    /// ClientHello must not keep alive), at most [`HOLD_LIMIT`].
    held: Vec<u8>,
    scan: Scan,
    /// Chunks after the decision point, kept as they came (no copy).
    after: VecDeque<Bytes>,
    ready: bool,
    /// The transport ended.
    eof: bool,
}

impl Hello {
    /// Takes a chunk from the transport.
    pub(crate) fn feed(&mut self, mut data: Bytes) {
        if self.ready {
            self.after.push_back(data);
            return;
        }
        if self.held.is_empty() {
            // Usually the whole ClientHello arrives in one read: decide on it as it is.
            let mut scan = Scan::default();
            if scan.status(&data) == Flight::Ready {
                self.ready = true;
                self.after.push_back(data);
                return;
            }
        }
        while !data.is_empty() {
            match self.scan.status(&self.held) {
                Flight::Ready => {
                    self.ready = true;
                    self.after.push_back(data);
                    return;
                }
                Flight::Need(total) => {
                    // `total` never exceeds HOLD_LIMIT, and `held` is below it.
                    let missing = total.saturating_sub(self.held.len());
                    if missing == 0 {
                        // Cannot happen (the scan asks only for bytes it lacks); if it
                        // did, OpenSSL judges rather than this loop spinning.
                        self.ready = true;
                        self.after.push_back(data);
                        return;
                    }
                    let take = missing.min(data.len());
                    // Room for what arrived, grown by doubling up to the total: a header
                    // alone reserves nothing for the record it announces, and bytes
                    // arriving one at a time are copied O(n) times in all.
                    let needed = self.held.len() + take;
                    if needed > self.held.capacity() {
                        let target = needed.max((2 * self.held.capacity()).min(total));
                        self.held.reserve_exact(target - self.held.len());
                    }
                    self.held.extend_from_slice(&data.split_to(take));
                }
            }
        }
        self.ready = self.scan.status(&self.held) == Flight::Ready;
    }

    /// Records the transport's end: OpenSSL must see what there is, and the end.
    pub(crate) fn feed_eof(&mut self) {
        self.eof = true;
    }

    /// Whether the `SSL` should be created now.
    pub(crate) fn is_ready(&self) -> bool {
        self.ready || self.eof
    }

    /// Whether the transport ended.
    pub(crate) fn eof(&self) -> bool {
        self.eof
    }

    /// Bytes received.
    pub(crate) fn len(&self) -> usize {
        self.held.len() + self.after.iter().map(Bytes::len).sum::<usize>()
    }

    /// Everything received, in order, for the memory transport.
    pub(crate) fn into_chunks(self) -> VecDeque<Bytes> {
        let mut chunks = self.after;
        if !self.held.is_empty() {
            chunks.push_front(Bytes::from(self.held));
        }
        chunks
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(kind: u8, payload: &[u8]) -> Vec<u8> {
        let len = u16::try_from(payload.len()).expect("short payload");
        let mut r = vec![kind, 3, 1];
        r.extend_from_slice(&len.to_be_bytes());
        r.extend_from_slice(payload);
        r
    }

    /// A ClientHello message of `body` bytes (content irrelevant here).
    fn hello_message(body: usize) -> Vec<u8> {
        let mut m = vec![
            CLIENT_HELLO,
            (body >> 16) as u8,
            (body >> 8) as u8,
            body as u8,
        ];
        m.resize(MSG_HEADER + body, 0xab);
        m
    }

    fn status(bytes: &[u8]) -> Flight {
        Scan::default().status(bytes)
    }

    #[test]
    fn a_complete_client_hello_record_is_ready() {
        let r = record(HANDSHAKE, &hello_message(300));
        assert_eq!(status(&r), Flight::Ready);
        assert_eq!(status(&r[..r.len() - 1]), Flight::Need(r.len()));
        assert_eq!(status(&r[..3]), Flight::Need(HEADER));
        assert_eq!(status(&[]), Flight::Need(HEADER));
    }

    #[test]
    fn a_client_hello_over_several_records_waits_for_the_last() {
        let m = hello_message(100);
        let (a, b) = m.split_at(2); // the message header itself is cut
        let mut flight = record(HANDSHAKE, a);
        let first = flight.len();
        flight.extend(record(HANDSHAKE, b));
        assert_eq!(status(&flight[..first]), Flight::Need(first + HEADER));
        assert_eq!(status(&flight[..first + 7]), Flight::Need(flight.len()));
        assert_eq!(status(&flight), Flight::Ready);
    }

    #[test]
    fn what_openssl_refuses_at_the_header_is_handed_over_at_once() {
        assert_eq!(status(b"GET / HTTP/1.1\r\n"), Flight::Ready);
        assert_eq!(status(&[22, 0xfe, 0xfd, 0, 10]), Flight::Ready); // DTLS version
        assert_eq!(status(&[22, 3, 1, 0xff, 0xff]), Flight::Ready); // 64 KiB record
        assert_eq!(status(&[22, 3, 1, 0x40, 0x01]), Flight::Ready); // 16 KiB + 1
        assert_eq!(status(&[22, 3, 1, 0, 0]), Flight::Ready); // empty record
    }

    #[test]
    fn other_records_and_messages_are_read_whole_then_handed_over() {
        let app = record(23, &[0; 40]);
        assert_eq!(status(&app[..20]), Flight::Need(app.len()));
        assert_eq!(status(&app), Flight::Ready);
        let finished = record(HANDSHAKE, &[20, 0, 0, 32]);
        assert_eq!(status(&finished), Flight::Ready);
    }

    #[test]
    fn a_client_hello_too_large_to_hold_is_handed_over() {
        // Declares 20 KiB in a first record of 1 KiB: it cannot be held whole.
        let m = hello_message(20 * 1024);
        let r = record(HANDSHAKE, &m[..1024]);
        assert_eq!(status(&r), Flight::Ready);
        // A full 16 KiB record of a larger message: also handed over.
        let m = hello_message(MAX_PLAIN);
        let r = record(HANDSHAKE, &m[..MAX_PLAIN]);
        assert_eq!(r.len(), HOLD_LIMIT);
        assert_eq!(status(&r), Flight::Ready);
    }

    #[test]
    fn sslv2_client_hellos_are_read_whole() {
        let mut v2 = vec![0x80, 20, CLIENT_HELLO, 3, 1];
        v2.resize(22, 0);
        assert_eq!(status(&v2[..2]), Flight::Need(3));
        assert_eq!(status(&v2[..10]), Flight::Need(22));
        assert_eq!(status(&v2), Flight::Ready);
        assert_eq!(status(&[0x80, 3, CLIENT_HELLO]), Flight::Ready); // too short
        // Not a ClientHello: OpenSSL reads a TLS record header (type 0x80).
        assert_eq!(status(&[0x80, 0x10, 2, 3, 1]), Flight::Ready); // version 0x1002
        assert_eq!(status(&[0x80, 3, 2, 3, 1]), Flight::Need(5 + 0x301)); // a record
    }

    #[test]
    fn bytes_fed_one_at_a_time_are_held_once_and_handed_over_in_order() {
        let mut flight = record(HANDSHAKE, &hello_message(500));
        let hello_len = flight.len();
        flight.extend_from_slice(&[20, 3, 3, 0, 1, 1]); // a change_cipher_spec after it
        let mut hello = Hello::default();
        for (i, b) in flight.iter().enumerate() {
            assert_eq!(hello.is_ready(), i >= hello_len, "after {i} bytes");
            hello.feed(Bytes::copy_from_slice(&[*b]));
        }
        assert!(hello.is_ready());
        assert_eq!(hello.held.len(), hello_len);
        assert_eq!(
            hello.held.capacity(),
            hello_len,
            "grown to exactly the record"
        );
        assert_eq!(hello.len(), flight.len());
        let all: Vec<u8> = hello.into_chunks().iter().flatten().copied().collect();
        assert_eq!(all, flight);
    }

    #[test]
    fn a_whole_flight_in_one_chunk_is_not_copied() {
        let flight = Bytes::from(record(HANDSHAKE, &hello_message(200)));
        let mut hello = Hello::default();
        hello.feed(flight.clone());
        assert!(hello.is_ready());
        assert!(hello.held.is_empty());
        let chunks = hello.into_chunks();
        assert_eq!(chunks.len(), 1);
        assert_eq!(chunks[0].as_ptr(), flight.as_ptr());
    }

    #[test]
    fn a_chunk_running_past_the_client_hello_is_split_at_its_end() {
        let r = record(HANDSHAKE, &hello_message(100));
        let mut hello = Hello::default();
        hello.feed(Bytes::copy_from_slice(&r[..10]));
        assert!(!hello.is_ready());
        let mut rest = r[10..].to_vec();
        rest.extend_from_slice(&[0x55; 1000]);
        hello.feed(Bytes::from(rest));
        assert!(hello.is_ready());
        assert_eq!(hello.held.len(), r.len(), "only the ClientHello is copied");
        assert_eq!(hello.len(), r.len() + 1000);
    }

    #[test]
    fn no_more_than_the_limit_is_held_whatever_arrives() {
        // Records of one handshake byte each, the message declaring the maximum: the
        // scan hands over before the held bytes pass the limit.
        let m = hello_message(MAX_PLAIN - MSG_HEADER);
        let mut hello = Hello::default();
        for b in &m {
            if hello.is_ready() {
                break;
            }
            hello.feed(Bytes::from(record(HANDSHAKE, &[*b])));
            assert!(hello.held.len() <= HOLD_LIMIT);
        }
        assert!(hello.is_ready());
    }

    #[test]
    fn a_record_header_alone_reserves_nothing_for_the_record() {
        let mut hello = Hello::default();
        hello.feed(Bytes::from_static(&[
            HANDSHAKE,
            3,
            1,
            0x40,
            0x00,
            CLIENT_HELLO,
        ]));
        assert!(!hello.is_ready());
        assert!(hello.held.capacity() <= 12, "{}", hello.held.capacity());
    }

    #[test]
    fn the_end_of_the_transport_makes_it_ready() {
        let mut hello = Hello::default();
        hello.feed(Bytes::from_static(&[22, 3, 1]));
        assert!(!hello.is_ready());
        hello.feed_eof();
        assert!(hello.is_ready() && hello.eof());
    }
}
