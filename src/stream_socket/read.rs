//! The read side of a stream socket: the read loop and the delivery of the ending.
//!
//! Readiness is edge-triggered (mio): a readable socket is read until `WouldBlock`, a
//! short read (the kernel had less than the buffer's room, and the peer has not closed),
//! or the per-event budget is spent. A short read drains the socket as surely as
//! `WouldBlock` does (data that arrives later raises a new edge) and saves one `read`
//! per event. When the budget is spent, and when reading restarts after `stop_read`, no
//! new edge will come for data already waiting, so the handle asks the loop to serve it
//! again on this iteration.
//!
//! Once the stream has ended (end of stream or an error), the ending is kept: a reader
//! started later hears the same ending, once, from the loop (`read_side`).

use std::io;

use bytes::BytesMut;
use socket2::SockRef;

use super::{StreamState, state, update_active};
use crate::error::Error;
use crate::event_loop::Loop;
use crate::handle::RawId;
use crate::read_side::ReadEnd;
use crate::socket::StreamSock;

/// Bytes read from one socket per event before other handles get their turn.
const READ_BUDGET: usize = 256 * 1024;

/// Serves a handle without an event: a reader waiting to hear the ending, or a reader
/// whose socket may hold data whose edge is gone.
pub(super) fn serve(lp: &mut Loop, id: RawId) {
    let Ok(t) = state(lp, id) else { return };
    if let Some((mut cb, heard)) = t.read.take_late_reader() {
        update_active(lp, id);
        cb(lp, heard);
    } else if t.read.can_deliver() && t.connected() {
        read_loop(lp, id, false);
    }
}

/// Ends the read side with `end` and tells the current reader (from the loop), if any.
pub(super) fn end_reading(lp: &mut Loop, id: RawId, end: ReadEnd) {
    let Ok(t) = state(lp, id) else { return };
    let reader = t.read.end(end);
    update_active(lp, id);
    if let Some((mut cb, heard)) = reader {
        cb(lp, heard);
    }
}

/// Reads and delivers data until `WouldBlock`, a short read (when `short_read_drains`),
/// the end of stream, an error, `stop_read`, or the budget.
pub(super) fn read_loop(lp: &mut Loop, id: RawId, short_read_drains: bool) {
    let mut budget = READ_BUDGET;
    loop {
        match state(lp, id) {
            Ok(t) if t.read.can_deliver() && t.connected() => {}
            _ => return,
        }
        let mut buf = lp.take_read_buf();
        let room = buf.capacity() - buf.len();
        let res = match state(lp, id).map(|t| t.sock.as_ref()) {
            Ok(Some(sock)) => read_into_spare(sock, &mut buf),
            _ => Ok(0), // unreachable: checked above, nothing ran in between
        };
        let data = match res {
            Ok(0) => {
                lp.put_read_buf(buf);
                let end = match state(lp, id).ok().and_then(|t| lost_connection(t)) {
                    Some(e) => Err(e),
                    None => Ok(()),
                };
                end_reading(lp, id, end);
                return;
            }
            Ok(n) => buf.split_to(n).freeze(),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                lp.put_read_buf(buf);
                return;
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {
                lp.put_read_buf(buf);
                continue;
            }
            Err(e) => {
                lp.put_read_buf(buf);
                end_reading(lp, id, Err(Error::from(e)));
                return;
            }
        };
        lp.put_read_buf(buf);
        let n = data.len();
        let Some(mut taken) = state(lp, id).ok().and_then(|t| t.read.take()) else {
            return;
        };
        (taken.cb)(lp, Ok(Some(data)));
        if let Ok(t) = state(lp, id) {
            t.read.restore(taken);
        }
        if n < room && short_read_drains {
            return; // the socket is drained; new data brings a new edge
        }
        budget = budget.saturating_sub(n);
        if budget == 0 {
            lp.serve_soon(id);
            return;
        }
    }
}

/// Reads from `sock` into the spare capacity of `buf`, which is not zero-filled first,
/// and counts the bytes read into `buf`. Zero-filling each new 256 KiB chunk of the
/// per-loop buffer cost 1.6-1.8 % of a TLS echo server's CPU.
#[allow(unsafe_code)]
fn read_into_spare(sock: &StreamSock, buf: &mut BytesMut) -> io::Result<usize> {
    let spare = buf.spare_capacity_mut();
    let room = spare.len();
    let n = match sock {
        StreamSock::Tcp(s) => SockRef::from(s).recv(spare),
        StreamSock::Unix(s) => SockRef::from(s).recv(spare),
    }?
    .min(room);
    // SAFETY: `n` is at most the spare capacity's length, and those `n` bytes are
    // initialised: recv(2) returns how many bytes it wrote, contiguously from the start of
    // the buffer it was given, which is the start of `buf`'s spare capacity (socket2
    // passes the slice's pointer and length to the system call unchanged).
    unsafe { buf.set_len(buf.len() + n) };
    Ok(n)
}

/// The error a read reports instead of end of stream. The kernel reports a connection's
/// error (a reset, a timeout) once, to whichever call comes first, and reads return 0
/// after it: when a write got it (a flush on the error event, or a write from a read
/// callback), the reader must still see the reset, not a clean EOF. `EPIPE` is not such
/// an error: it only means the error was reported already.
fn lost_connection(t: &StreamState) -> Option<Error> {
    t.write_error
        .clone()
        .filter(|e| e.io_kind().is_some_and(|k| k != io::ErrorKind::BrokenPipe))
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use bytes::BufMut;

    use super::*;

    #[test]
    fn read_into_spare_appends_exactly_the_bytes_read() {
        let (a, mut b) = mio::net::UnixStream::pair().expect("socket pair");
        let sock = StreamSock::Unix(a);
        // A buffer holding a prefix, whose spare capacity holds stale bytes.
        let mut buf = BytesMut::with_capacity(64);
        buf.put_bytes(0xee, 64);
        buf.truncate(3);
        let data: Vec<u8> = (0..40u8).collect();
        b.write_all(&data).expect("write");
        assert_eq!(read_into_spare(&sock, &mut buf).expect("read"), 40);
        assert_eq!(&buf[..3], &[0xee; 3]);
        assert_eq!(&buf[3..], &data[..]);
        // More than the spare room: the read stops at the capacity.
        b.write_all(&[7; 100]).expect("write");
        assert_eq!(read_into_spare(&sock, &mut buf).expect("read"), 64 - 43);
        assert_eq!(buf.len(), 64);
        assert!(buf[43..].iter().all(|&x| x == 7));
        // Nothing waiting: WouldBlock, and the buffer is unchanged.
        let mut fresh = BytesMut::with_capacity(16);
        b.write_all(&[1; 100 - 21]).expect("write");
        let mut drained = 0;
        while let Ok(n) = read_into_spare(&sock, &mut fresh) {
            drained += n;
            fresh.clear();
        }
        assert_eq!(drained, 100 - 21 + 100 - 21);
        let err = read_into_spare(&sock, &mut fresh).expect_err("nothing to read");
        assert_eq!(err.kind(), io::ErrorKind::WouldBlock);
        assert!(fresh.is_empty());
    }
}
