//! TLS: configuration ([`TlsAcceptor`], [`TlsConnector`]), the sans-I/O [`TlsSession`],
//! and the [`Tls`] stream handle that pumps a session over any inner [`Stream`](crate::Stream).
mod config;
mod handle;
mod ossl;
mod resume;
mod session;
mod stats;
pub use config::{TlsAcceptor, TlsAcceptorBuilder, TlsConnector, TlsConnectorBuilder};
pub use handle::{DEFAULT_HANDSHAKE_TIMEOUT, Tls};
pub use session::{ReadOutcome, SessionInfo, TlsSession};
pub use stats::TlsStats;
