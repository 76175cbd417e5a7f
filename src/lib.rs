//! biotls (crate docs to come)
#![deny(missing_docs)]
mod async_handle;
pub mod echo;
mod error;
mod event_loop;
mod handle;
#[cfg(feature = "pki")]
pub mod pki;
pub mod signal;
mod stream;
mod tcp;
mod timer;
pub mod tls;

pub use async_handle::{Async, AsyncSender};
pub use error::{Error, Result};
pub use event_loop::Loop;
pub use signal::Signal;
pub use stream::{ReadResult, Stream};
pub use tcp::{ListenOptions, Tcp, TcpListener};
pub use timer::Timer;
pub use tls::Tls;
