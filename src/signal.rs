//! Signal handles: run a callback on the loop when the process receives a signal
//! (Ctrl-C is `SIGINT`), like libuv's `uv_signal_t`. Built on `signal-hook`'s self-pipe,
//! so the handler itself only writes a byte and the callback runs on the loop.

use mio::Interest;
use signal_hook_mio::v1_0::Signals;

use crate::error::{Error, Result};
use crate::event_loop::Loop;
use crate::event_loop::Ops;
use crate::handle::{RawId, Readiness, handle_fmt};

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
    lp.state::<SignalState>(id).ok_or(Error::Closed)
}

impl Signal {
    /// Creates a stopped signal handle.
    ///
    /// # Errors
    /// None today; the `Result` is for symmetry with the other handles.
    pub fn new(lp: &mut Loop) -> Result<Signal> {
        static OPS: Ops = Ops {
            ready: on_event,
            ..Ops::NONE
        };
        let id = lp.insert(
            Box::new(SignalState {
                signals: None,
                cb: None,
                epoch: 0,
            }),
            &OPS,
        );
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
        let old = state(lp, self.0)?.signals.replace(signals);
        if let Some(mut old) = old {
            let _ = lp.registry().deregister(&mut old);
        }
        let s = state(lp, self.0)?;
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
        let s = state(lp, self.0)?;
        let old = s.signals.take();
        s.cb = None;
        s.epoch += 1;
        if let Some(mut old) = old {
            let _ = lp.registry().deregister(&mut old);
        }
        lp.set_active(self.0, false);
        Ok(())
    }

    /// Closes the handle. Does nothing on a closed handle.
    pub fn close(self, lp: &mut Loop) {
        if let Some(any) = lp.remove(self.0)
            && let Ok(mut s) = any.downcast::<SignalState>()
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

fn on_event(lp: &mut Loop, id: RawId, _: Readiness) {
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
