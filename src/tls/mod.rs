//! TLS: configuration, the sans-I/O session, and (later) the `Tls` handle.
mod config;
mod session;
pub use config::{TlsAcceptor, TlsAcceptorBuilder, TlsConnector, TlsConnectorBuilder};
pub use session::{ReadOutcome, SessionInfo, TlsSession};
