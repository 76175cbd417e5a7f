//! Session ticket keys shared by every configuration a [`TlsAcceptor`](super::TlsAcceptor)
//! has served, and their rotation.
//!
//! A server encrypts the session state it hands out as a ticket (TLS 1.3 tickets and
//! TLS 1.2 session tickets alike) with a key of this ring, and decrypts tickets that come
//! back with it. The ring belongs to the acceptor, not to one OpenSSL context, so tickets
//! issued before [`TlsAcceptor::replace`](super::TlsAcceptor::replace) still resume
//! after it.
//!
//! # Schedule
//!
//! Each key encrypts new tickets for one interval (12 hours by default) from its
//! creation, and decrypts tickets for two intervals: once the current key is an interval
//! old, the next use makes a new key current and keeps the old one for decryption only
//! (a ticket under it is accepted and replaced by a new one). A key that is two
//! intervals old is forgotten, as is any key two rotations back. So a stolen key opens
//! the tickets of at most one interval of issuance, and no ticket stays usable for more
//! than two intervals (OpenSSL's session timeout, two hours by default, usually ends
//! them sooner). Keys live only in memory: a restarted server starts a new ring.
//!
//! The OpenSSL glue (the ticket key callback) is in `tls/ossl.rs`; this module holds no
//! `unsafe` code and never panics.

use std::fmt;
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

/// The default time a key encrypts new tickets before the next one takes over.
pub const DEFAULT_TICKET_KEY_ROTATION: Duration = Duration::from_secs(12 * 60 * 60);

/// Bytes of a key name (OpenSSL's `TLSEXT_KEYNAME_LENGTH`), sent in clear in each
/// ticket so the server can find the key.
pub(crate) const KEY_NAME_LEN: usize = 16;

/// One ticket key: a name, an HMAC-SHA256 key and an AES-256-CBC key (the legacy
/// ticket callback's algorithms, as OpenSSL's own default tickets use).
#[derive(Clone)]
pub(crate) struct TicketKey {
    pub(crate) name: [u8; KEY_NAME_LEN],
    pub(crate) hmac: [u8; 32],
    pub(crate) aes: [u8; 32],
    created: Instant,
}

impl TicketKey {
    /// A new random key, or `None` if OpenSSL's random generator failed.
    fn generate(now: Instant) -> Option<TicketKey> {
        let mut key = TicketKey {
            name: [0; KEY_NAME_LEN],
            hmac: [0; 32],
            aes: [0; 32],
            created: now,
        };
        openssl::rand::rand_bytes(&mut key.name).ok()?;
        openssl::rand::rand_bytes(&mut key.hmac).ok()?;
        openssl::rand::rand_bytes(&mut key.aes).ok()?;
        Some(key)
    }
}

impl fmt::Debug for TicketKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never the secrets.
        f.debug_struct("TicketKey")
            .field("created", &self.created)
            .finish_non_exhaustive()
    }
}

struct Ring {
    interval: Duration,
    /// Encrypts new tickets; `None` until first needed (or if the generator failed).
    current: Option<TicketKey>,
    /// The key before `current`: decrypts only.
    previous: Option<TicketKey>,
}

impl Ring {
    /// Makes a new key current if the current one is an interval old (or missing).
    fn refresh(&mut self, now: Instant) {
        let age = self
            .current
            .as_ref()
            .map(|k| now.saturating_duration_since(k.created));
        if age.is_some_and(|age| age < self.interval) {
            return;
        }
        // If the generator fails, the old key stays: issuing under it beats no tickets.
        if let Some(new) = TicketKey::generate(now) {
            self.previous = self.current.replace(new);
        }
    }

    /// Whether `key` may still decrypt at `now`.
    fn usable(&self, key: &TicketKey, now: Instant) -> bool {
        now.saturating_duration_since(key.created) < self.interval.saturating_mul(2)
    }
}

/// The ring of ticket keys of one acceptor (and of every configuration it replaced).
pub(crate) struct TicketKeys {
    ring: Mutex<Ring>,
}

impl fmt::Debug for TicketKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TicketKeys")
            .field("interval", &self.lock().interval)
            .finish_non_exhaustive()
    }
}

impl TicketKeys {
    /// An empty ring whose keys rotate every `interval` (not zero).
    pub(crate) fn new(interval: Duration) -> TicketKeys {
        TicketKeys {
            ring: Mutex::new(Ring {
                interval,
                current: None,
                previous: None,
            }),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Ring> {
        // A panic elsewhere while holding the lock cannot leave the ring inconsistent
        // (every update is a single assignment), so a poisoned lock is still good.
        self.ring.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The rotation interval.
    pub(crate) fn interval(&self) -> Duration {
        self.lock().interval
    }

    /// Changes the rotation interval (not zero); it applies from the next use.
    pub(crate) fn set_interval(&self, interval: Duration) {
        self.lock().interval = interval;
    }

    /// Makes a new key current now; the current one decrypts only, the one before is
    /// forgotten. Returns `false` if OpenSSL's random generator failed (nothing
    /// changed).
    pub(crate) fn rotate(&self) -> bool {
        self.rotate_at(Instant::now())
    }

    fn rotate_at(&self, now: Instant) -> bool {
        let Some(new) = TicketKey::generate(now) else {
            return false;
        };
        let mut ring = self.lock();
        ring.previous = ring.current.replace(new);
        true
    }

    /// The key to encrypt a new ticket with, rotating first if it is due.
    pub(crate) fn encryption_key(&self) -> Option<TicketKey> {
        self.encryption_key_at(Instant::now())
    }

    fn encryption_key_at(&self, now: Instant) -> Option<TicketKey> {
        let mut ring = self.lock();
        ring.refresh(now);
        ring.current.clone()
    }

    /// The key named `name`, if it may still decrypt, and whether it is the current one
    /// (`false`: the ticket should be replaced by one under the current key).
    pub(crate) fn decryption_key(&self, name: &[u8]) -> Option<(TicketKey, bool)> {
        self.decryption_key_at(name, Instant::now())
    }

    fn decryption_key_at(&self, name: &[u8], now: Instant) -> Option<(TicketKey, bool)> {
        let mut ring = self.lock();
        ring.refresh(now);
        if let Some(key) = ring.current.as_ref().filter(|k| k.name == name) {
            return Some((key.clone(), true));
        }
        let key = ring.previous.as_ref().filter(|k| k.name == name)?;
        ring.usable(key, now).then(|| (key.clone(), false))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOUR: Duration = Duration::from_secs(3600);

    fn name_at(keys: &TicketKeys, now: Instant) -> [u8; KEY_NAME_LEN] {
        keys.encryption_key_at(now).expect("a key").name
    }

    #[test]
    fn a_key_encrypts_for_one_interval_then_decrypts_for_one_more() {
        let t0 = Instant::now();
        let keys = TicketKeys::new(12 * HOUR);
        let first = name_at(&keys, t0);
        assert_eq!(name_at(&keys, t0 + 11 * HOUR), first, "rotated too early");
        assert_eq!(
            keys.decryption_key_at(&first, t0 + 11 * HOUR).map(|k| k.1),
            Some(true)
        );

        // An interval later the next use rotates: the old key only decrypts, and its
        // tickets are to be renewed.
        let second = name_at(&keys, t0 + 13 * HOUR);
        assert_ne!(second, first);
        assert_eq!(
            keys.decryption_key_at(&first, t0 + 13 * HOUR).map(|k| k.1),
            Some(false)
        );
        assert_eq!(
            keys.decryption_key_at(&second, t0 + 13 * HOUR).map(|k| k.1),
            Some(true)
        );

        // Two intervals after its creation the old key is useless, even before the next
        // rotation.
        assert!(keys.decryption_key_at(&first, t0 + 24 * HOUR).is_none());
        assert!(keys.decryption_key_at(&second, t0 + 24 * HOUR).is_some());
    }

    #[test]
    fn an_idle_ring_forgets_both_keys_after_two_intervals() {
        let t0 = Instant::now();
        let keys = TicketKeys::new(HOUR);
        let first = name_at(&keys, t0);
        // Nothing happened for three intervals: the first use rotates, and the old key
        // is too old to decrypt.
        let later = t0 + 3 * HOUR;
        assert!(keys.decryption_key_at(&first, later).is_none());
        assert_ne!(name_at(&keys, later), first);
    }

    #[test]
    fn a_manual_rotation_keeps_one_previous_key() {
        let t0 = Instant::now();
        let keys = TicketKeys::new(12 * HOUR);
        let first = name_at(&keys, t0);
        assert!(keys.rotate_at(t0 + HOUR));
        let second = name_at(&keys, t0 + HOUR);
        assert_ne!(second, first);
        assert_eq!(
            keys.decryption_key_at(&first, t0 + HOUR).map(|k| k.1),
            Some(false)
        );
        assert!(keys.rotate_at(t0 + 2 * HOUR));
        assert!(
            keys.decryption_key_at(&first, t0 + 2 * HOUR).is_none(),
            "two rotations old"
        );
        assert_eq!(
            keys.decryption_key_at(&second, t0 + 2 * HOUR).map(|k| k.1),
            Some(false)
        );
    }

    #[test]
    fn unknown_names_are_refused() {
        let keys = TicketKeys::new(HOUR);
        assert!(keys.decryption_key(&[0u8; KEY_NAME_LEN]).is_none());
        assert!(keys.decryption_key(&[]).is_none());
        let name = keys.encryption_key().expect("a key").name;
        assert!(keys.decryption_key(&name[..8]).is_none());
    }

    #[test]
    fn debug_output_shows_no_key_material() {
        let keys = TicketKeys::new(HOUR);
        let key = keys.encryption_key().expect("a key");
        let text = format!("{key:?} {keys:?}");
        assert!(!text.contains(&format!("{:?}", key.aes)));
        assert!(!text.contains(&format!("{:?}", key.name)));
    }
}
