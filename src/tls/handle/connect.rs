//! The one-call TLS client over TCP ([`Tls::connect`]), and the TCP queries of a
//! `Tls<Tcp>`.

use std::cell::Cell;
use std::rc::Rc;
use std::time::Duration;

use super::{Handshake, Tls, st};
use crate::error::{Error, Result};
use crate::event_loop::Loop;
use crate::stream::Stream;
use crate::tcp::Tcp;
use crate::tls::TlsConnector;

/// The host part of `host:port` (`[::1]:443` gives `::1`), for SNI and verification.
fn host_of(host_port: &str) -> Result<&str> {
    let (host, port) = host_port
        .rsplit_once(':')
        .ok_or_else(|| Error::config(format!("{host_port:?}: expected host:port")))?;
    let host = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    if host.is_empty() || port.parse::<u16>().is_err() {
        return Err(Error::config(format!("{host_port:?}: expected host:port")));
    }
    Ok(host)
}

impl Tls<Tcp> {
    /// Connects to `host_port` (`"example.com:443"`, `"[::1]:443"`) and secures the
    /// connection, in one call: resolves the name on a worker thread, connects with
    /// Happy Eyeballs ([`Tcp::connect_host`]), and runs the TLS handshake with SNI and
    /// certificate verification against the host. Returns the handle at once; `cb` runs
    /// exactly once, from the loop, with the outcome: `Ok` once connected and
    /// handshaken, or the first error that stopped it (resolution, connect, handshake,
    /// verification, a timeout). After an error, close the handle, as after any
    /// failure. Writes made meanwhile are queued; reading may start at once. A failure
    /// before `cb` ran reaches the others as a [`Tcp`] connect's does: after `cb` (and
    /// the [`on_handshake`](Tls::on_handshake) callback, if one is set), the queued
    /// writes, the shutdown and the drain watcher, in order (cancelled instead if `cb`
    /// closed the handle), and the reader last.
    ///
    /// The handshake timeout ([`set_handshake_timeout`](Tls::set_handshake_timeout),
    /// default [`DEFAULT_HANDSHAKE_TIMEOUT`](super::DEFAULT_HANDSHAKE_TIMEOUT)) starts when TCP connects; the connect has
    /// no limit but the system's unless [`set_connect_timeout`](Tls::set_connect_timeout)
    /// sets one.
    ///
    /// # Examples
    /// ```no_run
    /// use biotls::tls::{Tls, TlsConnector};
    /// use biotls::{Loop, Stream};
    ///
    /// let mut lp = Loop::new()?;
    /// let connector = TlsConnector::builder()?.build(); // the system's CAs
    /// let tls = Tls::connect(&mut lp, &connector, "example.com:443", |lp, tls, r| {
    ///     if let Err(e) = r {
    ///         eprintln!("{e}");
    ///         tls.close(lp, |_, _| {});
    ///     }
    /// })?;
    /// tls.set_connect_timeout(&mut lp, std::time::Duration::from_secs(10))?;
    /// tls.write(&mut lp, b"GET / HTTP/1.0\r\nHost: example.com\r\n\r\n", |_, _, _| {})?;
    /// tls.start_read(&mut lp, |lp, tls, r| match r {
    ///     Ok(Some(data)) => print!("{}", String::from_utf8_lossy(&data)),
    ///     _ => tls.close(lp, |_, _| {}),
    /// })?;
    /// lp.run()?;
    /// # Ok::<(), biotls::Error>(())
    /// ```
    ///
    /// # Errors
    /// [`Error::Config`] if `host_port` is not `host:port` or OpenSSL cannot create the
    /// session.
    pub fn connect(
        lp: &mut Loop,
        connector: &TlsConnector,
        host_port: &str,
        cb: impl FnOnce(&mut Loop, Tls<Tcp>, Result<()>) + 'static,
    ) -> Result<Tls<Tcp>> {
        let host = host_of(host_port)?;
        let me: Rc<Cell<Option<Tls<Tcp>>>> = Default::default();
        let m = Rc::clone(&me);
        let tcp = Tcp::connect_host(lp, host_port, move |lp, _, r| {
            // The handshake's clock starts now; a failure reaches `cb` through the
            // handshake, which fails with the same error.
            if r.is_ok()
                && let Some(tls) = m.get()
            {
                tls.restart_handshake_clock(lp);
            }
        })?;
        let tls = match Tls::client(lp, tcp, connector, host) {
            Ok(tls) => tls,
            Err(e) => {
                tcp.close(lp, |_, _| {});
                return Err(e);
            }
        };
        me.set(Some(tls));
        let t = st::<Tcp>(lp, tls.0).ok_or(Error::Closed)?;
        t.on_connected = Some(Box::new(cb));
        if let Handshake::Running { timer: Some(timer) } = t.handshake {
            timer.stop(lp)?;
        }
        Ok(tls)
    }

    /// Fails a connect still in progress after `timeout` (see [`Tls::connect`]) with
    /// [`Error::TimedOut`]`(Timeout::Connect)`.
    ///
    /// # Errors
    /// [`Error::Closed`], or [`Error::InvalidState`] if the TCP connect is over.
    pub fn set_connect_timeout(self, lp: &mut Loop, timeout: Duration) -> Result<()> {
        self.inner(lp)?.set_connect_timeout(lp, timeout)
    }

    /// The peer's address (of the inner TCP stream).
    ///
    /// # Errors
    /// [`Error::Closed`], or as [`Tcp::peer_addr`].
    pub fn peer_addr(self, lp: &Loop) -> Result<std::net::SocketAddr> {
        self.inner(lp)?.peer_addr(lp)
    }

    /// Our address (of the inner TCP stream).
    ///
    /// # Errors
    /// [`Error::Closed`], or as [`Tcp::local_addr`].
    pub fn local_addr(self, lp: &Loop) -> Result<std::net::SocketAddr> {
        self.inner(lp)?.local_addr(lp)
    }
}
