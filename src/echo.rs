//! An echo service written once against [`Stream`], so it runs unchanged over
//! [`Tcp`](crate::Tcp), [`Tls`](crate::Tls) or any other stream handle.
//!
//! It is the logic behind the `tcp_echo_server` and `tls_echo_server` examples and a
//! worked example of flow control: it stops reading a peer whose write queue passes a
//! high-water mark and resumes when [`Stream::on_drain`] says the queue is down to a
//! low-water mark, so a client that sends but never reads its replies cannot grow the
//! server's memory.

use std::cell::Cell;
use std::rc::Rc;

use crate::error::{Error, Result};
use crate::event_loop::Loop;
use crate::stream::Stream;

/// Water marks for [`echo`].
#[derive(Debug, Clone, Copy)]
pub struct EchoOptions {
    /// Stop reading when the write queue holds more than this many bytes.
    pub high_water: usize,
    /// Resume reading when it has drained to this many bytes or fewer.
    pub low_water: usize,
}

impl Default for EchoOptions {
    fn default() -> Self {
        EchoOptions {
            high_water: 1024 * 1024,
            low_water: 256 * 1024,
        }
    }
}

/// What ended an echo session, given to the `on_close` callback of [`echo_with`].
#[derive(Debug)]
pub enum EchoEnd {
    /// The peer ended its side cleanly and all echoed data was flushed.
    Done,
    /// A read, write or shutdown failed.
    Failed(Error),
}

type OnClose<S> = Box<dyn FnOnce(&mut Loop, S, &EchoEnd)>;

struct Session<S> {
    opts: EchoOptions,
    paused: Cell<bool>,
    on_close: Cell<Option<OnClose<S>>>,
}

/// Echoes everything read from `stream` back to it until the peer ends its side, then
/// shuts down and closes the stream.
///
/// # Errors
/// The error of the first `start_read` (a closed handle); later failures close the stream.
pub fn echo<S: Stream>(lp: &mut Loop, stream: S, opts: EchoOptions) -> Result<()> {
    echo_with(lp, stream, opts, |_, _, _| {})
}

/// Like [`echo`], and calls `on_close` once when the stream is closed, with the reason.
///
/// # Errors
/// The error of the first `start_read` (a closed handle); later failures close the stream.
pub fn echo_with<S: Stream>(
    lp: &mut Loop,
    stream: S,
    opts: EchoOptions,
    on_close: impl FnOnce(&mut Loop, S, &EchoEnd) + 'static,
) -> Result<()> {
    let session = Rc::new(Session {
        opts,
        paused: Cell::new(false),
        on_close: Cell::new(Some(Box::new(on_close))),
    });
    start(lp, stream, session)
}

fn finish<S: Stream>(lp: &mut Loop, s: S, session: &Session<S>, end: EchoEnd) {
    if let EchoEnd::Failed(e) = &end {
        log::debug!("{s:?}: echo ended: {e}");
    }
    if let Some(cb) = session.on_close.take() {
        cb(lp, s, &end);
    }
    s.close(lp, |_, _| {});
}

fn start<S: Stream>(lp: &mut Loop, stream: S, session: Rc<Session<S>>) -> Result<()> {
    session.paused.set(false);
    stream.start_read(lp, move |lp, s, result| match result {
        Ok(Some(data)) => {
            let sess = Rc::clone(&session);
            let queued = s.write(lp, data, move |lp, s, r| match r {
                Ok(()) | Err(Error::Cancelled) => {}
                Err(e) => finish(lp, s, &sess, EchoEnd::Failed(e)),
            });
            if let Err(e) = queued {
                finish(lp, s, &session, EchoEnd::Failed(e));
            } else if s.write_queue_size(lp) > session.opts.high_water {
                // Stop reading until the peer has taken its replies (down to the low
                // mark): a peer that never reads cannot grow our queue.
                session.paused.set(true);
                // Stopping can only fail on a closed handle, which reads no more anyway.
                let _ = s.stop_read(lp);
                let sess = Rc::clone(&session);
                let watched = s.on_drain(lp, session.opts.low_water, move |lp, s, r| match r {
                    Ok(()) => {
                        if let Err(e) = start(lp, s, Rc::clone(&sess)) {
                            finish(lp, s, &sess, EchoEnd::Failed(e));
                        }
                    }
                    Err(Error::Cancelled) => {}
                    Err(e) => finish(lp, s, &sess, EchoEnd::Failed(e)),
                });
                if let Err(e) = watched {
                    finish(lp, s, &session, EchoEnd::Failed(e));
                }
            }
        }
        Ok(None) => {
            let sess = Rc::clone(&session);
            let shut = s.shutdown(lp, move |lp, s, r| {
                let end = match r {
                    Ok(()) => EchoEnd::Done,
                    Err(e) => EchoEnd::Failed(e),
                };
                finish(lp, s, &sess, end);
            });
            if let Err(e) = shut {
                finish(lp, s, &session, EchoEnd::Failed(e));
            }
        }
        Err(e) => finish(lp, s, &session, EchoEnd::Failed(e)),
    })
}
