//! biotls (crate docs to come)
#![deny(missing_docs)]
mod error;
pub use error::{Error, Result};
#[cfg(feature = "pki")]
pub mod pki;
pub mod tls;
