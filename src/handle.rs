//! Handle ids and the loop's arena of handle states, with per-slot dispatch.
//!
//! A handle is a `Copy` id: the loop it belongs to, an arena index and a generation. A
//! slot's generation changes when its handle is closed, so a stale id never reaches the
//! state of a handle that reused the slot, and an id from another loop never matches.
//!
//! This module depends on nothing else in the crate; the arena itself (its slots and the
//! per-slot table of functions through which the loop reaches any kind of handle) lives
//! with the loop, in `event_loop`.

use std::fmt;

use mio::Token;
use mio::event::Event;

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

    /// The index and (31-bit) generation a token carries.
    pub(crate) fn parse_token(token: Token) -> (u32, u32) {
        let t = token.0;
        ((t & 0xffff_ffff) as u32, ((t >> 32) & 0x7fff_ffff) as u32)
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

/// The identity of a handle, whatever its type: equal for the same handle, `Display`
/// as `#3`. Used to let a [`Tls`](crate::Tls) own its inner stream.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub struct HandleId(pub(crate) RawId);

impl fmt::Display for HandleId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0, f)
    }
}

/// What one readiness event reported for a handle's token (copied out of mio's event
/// list, so the loop can dispatch without borrowing it).
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Readiness {
    pub(crate) readable: bool,
    pub(crate) writable: bool,
    /// The peer closed its side (`EPOLLRDHUP`/`EPOLLHUP`).
    pub(crate) read_closed: bool,
    pub(crate) error: bool,
}

impl Readiness {
    pub(crate) fn of(event: &Event) -> Readiness {
        Readiness {
            readable: event.is_readable(),
            writable: event.is_writable(),
            read_closed: event.is_read_closed(),
            error: event.is_error(),
        }
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
