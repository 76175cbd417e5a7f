//! Async handles: wake the loop from another thread, like libuv's `uv_async_t`.
//!
//! Every loop has one `mio::Waker`; each async handle has an atomic flag. `send` sets
//! the flag and wakes the loop; the loop runs the callback of every flagged handle. Many
//! sends before the loop wakes up give one callback, as in libuv.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use crate::error::{Error, Result};
use crate::event_loop::Ops;
use crate::event_loop::{Loop, Remote};
use crate::handle::{RawId, handle_fmt};

type AsyncCb = Box<dyn FnMut(&mut Loop, Async)>;

/// A handle whose callback another thread can trigger through an [`AsyncSender`].
///
/// An open async handle is active: it keeps [`Loop::run`] alive until closed or
/// [`unref`](Async::unref)'d.
///
/// # Examples
/// ```
/// use biotls::{Async, Loop};
///
/// let mut lp = Loop::new()?;
/// let (handle, sender) = Async::new(&mut lp, |lp, a| {
///     println!("woken");
///     a.close(lp);
/// })?;
/// std::thread::spawn(move || sender.send());
/// lp.run()?;
/// # let _ = handle;
/// # Ok::<(), biotls::Error>(())
/// ```
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Async(pub(crate) RawId);
handle_fmt!(Async, "async");

/// The sending side of an [`Async`] handle: `Send`, `Sync` and cheap to clone.
#[derive(Clone)]
pub struct AsyncSender {
    flag: Arc<AtomicBool>,
    remote: Arc<Remote>,
}

impl std::fmt::Debug for AsyncSender {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AsyncSender").finish_non_exhaustive()
    }
}

impl AsyncSender {
    /// Asks the loop to run the handle's callback (at least once after this call).
    ///
    /// # Errors
    /// [`Error::Io`] if the loop's waker fails.
    pub fn send(&self) -> Result<()> {
        if !self.flag.swap(true, Ordering::AcqRel) {
            self.remote.wake()?;
        }
        Ok(())
    }
}

pub(crate) struct AsyncState {
    cb: Option<AsyncCb>,
    flag: Arc<AtomicBool>,
}

impl Async {
    /// Creates an async handle and its sender.
    ///
    /// # Errors
    /// None today; the `Result` is for symmetry with the other handles.
    pub fn new(
        lp: &mut Loop,
        cb: impl FnMut(&mut Loop, Async) + 'static,
    ) -> Result<(Async, AsyncSender)> {
        let flag = Arc::new(AtomicBool::new(false));
        static OPS: Ops = Ops::NONE;
        let id = lp.insert(
            Box::new(AsyncState {
                cb: Some(Box::new(cb)),
                flag: Arc::clone(&flag),
            }),
            &OPS,
        );
        lp.set_active(id, true);
        lp.asyncs.push(id);
        let sender = AsyncSender {
            flag,
            remote: Arc::clone(&lp.remote),
        };
        Ok((Async(id), sender))
    }

    /// Closes the handle; later sends do nothing. Does nothing on a closed handle.
    pub fn close(self, lp: &mut Loop) {
        if lp.remove(self.0).is_some() {
            lp.asyncs.retain(|&a| a != self.0);
        }
    }

    /// The handle no longer keeps [`Loop::run`] alive.
    ///
    /// # Errors
    /// [`Error::Closed`].
    pub fn unref(self, lp: &mut Loop) -> Result<()> {
        lp.set_referenced(self.0, false)
    }
}

/// Runs the callback of every async handle whose flag was set.
pub(crate) fn dispatch(lp: &mut Loop) {
    for id in lp.asyncs.clone() {
        let Some(a) = lp.state::<AsyncState>(id) else {
            continue;
        };
        if !a.flag.swap(false, Ordering::AcqRel) {
            continue;
        }
        let Some(mut cb) = a.cb.take() else { continue };
        cb(lp, Async(id));
        if let Some(a) = lp.state::<AsyncState>(id) {
            a.cb.get_or_insert(cb);
        }
    }
}

impl From<Error> for std::io::Error {
    fn from(e: Error) -> Self {
        match e {
            Error::Io(io) => std::io::Error::new(io.kind(), io.to_string()),
            other => std::io::Error::other(other),
        }
    }
}
