//! TLS: configuration ([`TlsAcceptor`], [`TlsConnector`]), the sans-I/O [`TlsSession`],
//! and the [`Tls`] stream handle that pumps a session over any inner [`Stream`](crate::Stream).
mod acceptor;
mod config;
mod handle;
mod hello;
mod identity;
mod ossl;
mod resume;
mod revocation;
mod session;
mod stats;
mod tickets;
pub use acceptor::{DEFAULT_SESSION_TICKETS, TlsAcceptor, TlsAcceptorBuilder};
pub use config::{TlsConnector, TlsConnectorBuilder};
pub use handle::{DEFAULT_HANDSHAKE_TIMEOUT, Tls};
pub use identity::PeerIdentity;
pub use revocation::CrlCheck;
pub use session::{ReadOutcome, SessionInfo, TlsSession};
pub use stats::TlsStats;
pub use tickets::DEFAULT_TICKET_KEY_ROTATION;
