//! Handle ids and the loop's arena of handle states.
//!
//! A handle is a `Copy` id: the loop it belongs to, an arena index and a generation. A
//! slot's generation changes when its handle is closed, so a stale id never reaches the
//! state of a handle that reused the slot, and an id from another loop never matches.

use std::any::Any;
use std::fmt;

use mio::Token;
use mio::event::Event;

use crate::event_loop::Loop;

/// The id inside every handle type.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) struct RawId {
    pub(crate) loop_id: u32,
    pub(crate) index: u32,
    pub(crate) generation: u32,
}

impl RawId {
    /// The mio token: index in the low half, generation in the high half, so an event
    /// for a closed socket never reaches a handle that reused its slot. The top bit is
    /// always clear, so no handle token equals the waker's `usize::MAX`.
    pub(crate) fn token(self) -> Token {
        Token(((self.generation as usize & 0x7fff_ffff) << 32) | self.index as usize)
    }

    pub(crate) fn from_token(loop_id: u32, token: Token) -> Option<RawId> {
        let t = token.0;
        Some(RawId {
            loop_id,
            index: (t & 0xffff_ffff) as u32,
            generation: ((t >> 32) & 0x7fff_ffff) as u32,
        })
    }

    /// Compares ids ignoring the generation bit the token cannot carry.
    pub(crate) fn matches_token_gen(self, generation: u32) -> bool {
        self.generation & 0x7fff_ffff == generation & 0x7fff_ffff
    }
}

impl fmt::Debug for RawId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "#{}.{}@{}", self.index, self.generation, self.loop_id)
    }
}

impl fmt::Display for RawId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "#{}", self.index)
    }
}

/// One arena slot.
#[derive(Default)]
pub(crate) struct Slot {
    pub(crate) generation: u32,
    pub(crate) active: bool,
    pub(crate) referenced: bool,
    pub(crate) state: State,
}

/// What a slot holds.
#[derive(Default)]
pub(crate) enum State {
    #[default]
    Free,
    Tcp(Box<crate::tcp::TcpState>),
    Listener(Box<crate::tcp::ListenerState>),
    Timer(Box<crate::timer::TimerState>),
    Async(Box<crate::async_handle::AsyncState>),
    Signal(Box<crate::signal::SignalState>),
    /// Handles defined over a generic inner stream (`Tls<S>`), downcast on access.
    Any(Box<dyn Any>),
}

/// Routes one readiness event to the handle it belongs to.
pub(crate) fn dispatch(lp: &mut Loop, token_id: RawId, event: &Event) {
    let Some(slot) = lp.slots.get(token_id.index as usize) else {
        return;
    };
    if !token_id.matches_token_gen(slot.generation) {
        return; // the socket behind this event was closed in this iteration
    }
    let id = RawId {
        generation: slot.generation,
        ..token_id
    };
    match slot.state {
        State::Tcp(_) => crate::tcp::on_event(lp, id, event),
        State::Listener(_) => crate::tcp::on_listener_event(lp, id),
        State::Signal(_) => crate::signal::on_event(lp, id),
        State::Free | State::Timer(_) | State::Async(_) | State::Any(_) => {}
    }
}

/// Serves a handle that was put on the `ready_again` list.
pub(crate) fn serve_again(lp: &mut Loop, id: RawId) {
    match lp.slot(id).map(|s| &s.state) {
        Some(State::Tcp(_)) => crate::tcp::read_some(lp, id),
        Some(State::Listener(_)) => crate::tcp::on_listener_event(lp, id),
        _ => {}
    }
}

/// Implements `Debug` and `Display` (`tcp#3`) for a handle newtype over `RawId`.
macro_rules! handle_fmt {
    ($ty:ident, $name:literal) => {
        impl ::std::fmt::Debug for $ty {
            fn fmt(&self, f: &mut ::std::fmt::Formatter<'_>) -> ::std::fmt::Result {
                write!(f, concat!($name, "{:?}"), self.0)
            }
        }
        impl ::std::fmt::Display for $ty {
            fn fmt(&self, f: &mut ::std::fmt::Formatter<'_>) -> ::std::fmt::Result {
                write!(f, concat!($name, "{}"), self.0)
            }
        }
    };
}
pub(crate) use handle_fmt;
