//! Signal handles: run a callback on the loop when the process receives a signal
//! (Ctrl-C is `SIGINT`), like libuv's `uv_signal_t`. Built on `signal-hook`'s self-pipe,
//! so the handler itself only writes a byte and the callback runs on the loop.

use mio::Interest;
use signal_hook_mio::v1_0::Signals;

use crate::error::{Error, Result};
use crate::event_loop::Loop;
use crate::handle::{RawId, State, handle_fmt};

pub use signal_hook::consts::signal::{SIGHUP, SIGINT, SIGQUIT, SIGTERM, SIGUSR1, SIGUSR2};

type SignalCb = Box<dyn FnMut(&mut Loop, Signal, i32)>;

/// A signal handle. While started it is active and keeps [`Loop::run`] alive unless
/// [`unref`](Signal::unref)'d.
///
/// # Examples
/// ```no_run
/// use biotls::{Loop, Signal, signal::SIGINT};
///
/// let mut lp = Loop::new()?;
/// let sig = Signal::new(&mut lp)?;
/// sig.start(&mut lp, &[SIGINT], |lp, _sig, signum| {
///     println!("caught signal {signum}, stopping");
///     lp.stop();
/// })?;
/// lp.run()?;
/// # Ok::<(), biotls::Error>(())
/// ```
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Signal(pub(crate) RawId);
handle_fmt!(Signal, "signal");

pub(crate) struct SignalState {
    signals: Option<Signals>,
    cb: Option<SignalCb>,
    epoch: u64,
}

fn state(lp: &mut Loop, id: RawId) -> Result<&mut SignalState> {
    match lp.slot_mut(id).map(|s| &mut s.state) {
        Some(State::Signal(s)) => Ok(s),
        _ => Err(Error::Closed),
    }
}

impl Signal {
    /// Creates a stopped signal handle.
    ///
    /// # Errors
    /// None today; the `Result` is for symmetry with the other handles.
    pub fn new(lp: &mut Loop) -> Result<Signal> {
        let id = lp.insert(State::Signal(Box::new(SignalState {
            signals: None,
            cb: None,
            epoch: 0,
        })));
        Ok(Signal(id))
    }

    /// Starts watching `signums`; `cb` runs on the loop with the signal number each time
    /// one arrives. Restarting replaces the set and the callback.
    ///
    /// # Errors
    /// [`Error::Closed`], or [`Error::Io`] if a handler cannot be installed (for example
    /// for `SIGKILL`).
    pub fn start(
        self,
        lp: &mut Loop,
        signums: &[i32],
        cb: impl FnMut(&mut Loop, Signal, i32) + 'static,
    ) -> Result<()> {
        state(lp, self.0)?;
        let mut signals = Signals::new(signums.iter().copied())?;
        lp.registry()
            .register(&mut signals, self.0.token(), Interest::READABLE)?;
        let registry = lp.registry().try_clone()?;
        let s = state(lp, self.0)?;
        if let Some(mut old) = s.signals.replace(signals) {
            let _ = registry.deregister(&mut old);
        }
        s.cb = Some(Box::new(cb));
        s.epoch += 1;
        lp.set_active(self.0, true);
        Ok(())
    }

    /// Stops watching; the signals' handlers stay installed but do nothing here.
    ///
    /// # Errors
    /// [`Error::Closed`].
    pub fn stop(self, lp: &mut Loop) -> Result<()> {
        let registry = lp.registry().try_clone()?;
        let s = state(lp, self.0)?;
        if let Some(mut old) = s.signals.take() {
            let _ = registry.deregister(&mut old);
        }
        s.cb = None;
        s.epoch += 1;
        lp.set_active(self.0, false);
        Ok(())
    }

    /// Closes the handle. Does nothing on a closed handle.
    pub fn close(self, lp: &mut Loop) {
        if let Some(State::Signal(mut s)) = lp.remove(self.0)
            && let Some(mut signals) = s.signals.take()
        {
            let _ = lp.registry().deregister(&mut signals);
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

pub(crate) fn on_event(lp: &mut Loop, id: RawId) {
    let Ok(s) = state(lp, id) else { return };
    let Some(signals) = s.signals.as_mut() else {
        return;
    };
    let arrived: Vec<i32> = signals.pending().collect();
    for signum in arrived {
        let Ok(s) = state(lp, id) else { return };
        let epoch = s.epoch;
        let Some(mut cb) = s.cb.take() else { return };
        cb(lp, Signal(id), signum);
        if let Ok(s) = state(lp, id)
            && s.epoch == epoch
            && s.cb.is_none()
        {
            s.cb = Some(cb);
        }
    }
}
