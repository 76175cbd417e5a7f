//! The client-side session cache behind [`TlsConnector`](super::TlsConnector) resumption.
//!
//! Sessions (TLS 1.3 tickets, TLS 1.2 session ids or tickets) arrive through the
//! context's new-session callback and are kept per server name; a new client session for
//! that name offers one. It must never hand a session to an `SSL` of another context:
//! each cache belongs to exactly one connector context (see `TlsSession::client_with`).

use std::collections::{HashMap, VecDeque};
use std::sync::{Mutex, OnceLock};

use openssl::ex_data::Index;
use openssl::ssl::{Ssl, SslSession, SslVersion};

/// Sessions kept per server name (OpenSSL servers send two TLS 1.3 tickets per
/// connection by default; each is used once).
const PER_NAME: usize = 4;
/// Server names kept; beyond that an arbitrary name is forgotten.
const NAMES: usize = 1024;

/// The `SSL` ex-data slot holding the cache key (the server name) of a client session.
pub(crate) fn key_index() -> Option<Index<Ssl, String>> {
    static INDEX: OnceLock<Option<Index<Ssl, String>>> = OnceLock::new();
    *INDEX.get_or_init(|| Ssl::new_ex_index().ok())
}

/// Resumable sessions by server name.
#[derive(Default)]
pub(crate) struct SessionCache {
    sessions: Mutex<HashMap<String, VecDeque<SslSession>>>,
}

impl SessionCache {
    /// Keeps `session` for `name`, newest last, dropping the oldest beyond `PER_NAME`.
    pub(crate) fn put(&self, name: &str, session: SslSession) {
        let Ok(mut map) = self.sessions.lock() else {
            return;
        };
        if !map.contains_key(name)
            && map.len() >= NAMES
            && let Some(evict) = map.keys().next().cloned()
        {
            map.remove(&evict);
        }
        let queue = map.entry(name.to_owned()).or_default();
        queue.push_back(session);
        while queue.len() > PER_NAME {
            queue.pop_front();
        }
    }

    /// A session to offer to `name`, newest first. TLS 1.3 tickets are taken out (they
    /// are meant for one use, RFC 8446 C.4); a TLS 1.2 session stays for later
    /// connections, since resuming it brings no new one.
    pub(crate) fn get(&self, name: &str) -> Option<SslSession> {
        let mut map = self.sessions.lock().ok()?;
        let queue = map.get_mut(name)?;
        let newest = queue.back()?;
        let session = if newest.protocol_version() == SslVersion::TLS1_3 {
            queue.pop_back()?
        } else {
            newest.clone()
        };
        if queue.is_empty() {
            map.remove(name);
        }
        Some(session)
    }

    /// Number of sessions held for `name`.
    pub(crate) fn len(&self, name: &str) -> usize {
        self.sessions
            .lock()
            .map_or(0, |m| m.get(name).map_or(0, VecDeque::len))
    }
}
