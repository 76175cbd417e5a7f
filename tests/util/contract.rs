//! A small model of the callback contract, checked while a property test drives real
//! handles, and the pieces of a driver that any handle kind shares.
//!
//! The driver makes every API call through [`Model::call`], and every callback reports to
//! the model first thing. The model then checks, as things happen:
//! - no callback runs inside an API call (they run from the loop only);
//! - each request (connect, write, shutdown, handshake, close) completes exactly once;
//! - a handle's connect, write and shutdown requests complete in the order they were
//!   made; the close callback comes after every other one (the handshake callback's
//!   included), and nothing after it;
//! - every byte a reader receives is the next byte the peer sent, and reading stops after
//!   the end of stream or an error; a reader started after that hears the same ending;
//! - read callbacks run only while reading.
//!
//! At the end [`Model::finish`] checks that every request completed. Violations are
//! collected, not panicked on inside callbacks (a panic there would unwind through the
//! loop), and reported by [`Model::check`].

use std::cell::{Cell, RefCell};
use std::fmt;
use std::rc::Rc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use biotls::{Error, Loop, Timer};

/// What kind of request a callback completes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReqKind {
    Connect,
    Handshake,
    /// An `on_drain` watcher.
    Drain,
    /// `Tls::unwrap`: once it succeeds the handle is gone, as after a close.
    Unwrap,
    Write,
    Shutdown,
    Close,
}

/// A request's id: (handle index in the model, request index).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Req(pub usize, pub usize);

struct Request {
    kind: ReqKind,
    done: Option<String>,
}

/// The model of one handle.
struct HandleModel {
    name: String,
    requests: Vec<Request>,
    /// The close callback ran: nothing may follow.
    closed: bool,
    /// `start_read` is in effect (no ending heard since, no `stop_read`, no close).
    reading: bool,
    /// How the read side ended, as first heard (`"eof"` or the error's text).
    ending: Option<String>,
    /// Bytes received so far, checked against `expect`.
    received: u64,
    /// The byte the peer sent at each offset.
    expect: Option<Rc<dyn Fn(u64) -> u8>>,
}

/// The contract model shared by the driver and every callback.
#[derive(Default)]
pub struct Model {
    depth: Cell<u32>,
    handles: RefCell<Vec<HandleModel>>,
    violations: RefCell<Vec<String>>,
    /// Every event, for the failure report.
    trace: RefCell<Vec<String>>,
}

/// A short text for a callback's result.
pub fn outcome<T>(r: &Result<T, Error>) -> String {
    match r {
        Ok(_) => "ok".into(),
        Err(e) => format!("{e}"),
    }
}

impl Model {
    pub fn new() -> Rc<Model> {
        Rc::new(Model::default())
    }

    /// Adds a handle to the model; returns its index.
    pub fn handle(&self, name: impl Into<String>) -> usize {
        let mut handles = self.handles.borrow_mut();
        handles.push(HandleModel {
            name: name.into(),
            requests: Vec::new(),
            closed: false,
            reading: false,
            ending: None,
            received: 0,
            expect: None,
        });
        handles.len() - 1
    }

    /// The peer's byte stream towards handle `h`, for checking what its reader receives.
    pub fn expect_stream(&self, h: usize, at: impl Fn(u64) -> u8 + 'static) {
        self.handles.borrow_mut()[h].expect = Some(Rc::new(at));
    }

    pub fn violation(&self, text: impl Into<String>) {
        let text = text.into();
        self.trace.borrow_mut().push(format!("VIOLATION: {text}"));
        self.violations.borrow_mut().push(text);
    }

    pub fn note(&self, text: impl Into<String>) {
        self.trace.borrow_mut().push(text.into());
    }

    /// Makes an API call: callbacks that run meanwhile are violations.
    pub fn call<T>(&self, f: impl FnOnce() -> T) -> T {
        self.depth.set(self.depth.get() + 1);
        let out = f();
        self.depth.set(self.depth.get() - 1);
        out
    }

    /// Every callback calls this first.
    fn entered(&self, h: usize, what: &str) {
        let name = self.handles.borrow()[h].name.clone();
        self.note(format!("{name}: {what}"));
        if self.depth.get() > 0 {
            self.violation(format!("{name}: {what} ran inside an API call"));
        }
        if self.handles.borrow()[h].closed {
            self.violation(format!("{name}: {what} after the close callback"));
        }
    }

    /// Records a request that its call accepted.
    pub fn request(&self, h: usize, kind: ReqKind) -> Req {
        let mut handles = self.handles.borrow_mut();
        let hm = &mut handles[h];
        hm.requests.push(Request { kind, done: None });
        Req(h, hm.requests.len() - 1)
    }

    /// A request's callback ran with `result`.
    pub fn complete(&self, req: Req, result: String) {
        let Req(h, i) = req;
        let kind = self.handles.borrow()[h].requests[i].kind;
        self.entered(h, &format!("{kind:?}#{i} {result}"));
        let mut handles = self.handles.borrow_mut();
        let hm = &mut handles[h];
        if hm.requests[i].done.is_some() {
            let name = hm.name.clone();
            drop(handles);
            self.violation(format!("{name}: {kind:?}#{i} completed twice"));
            return;
        }
        // Order: every earlier connect, write and shutdown is done already (the place of a
        // handshake or drain callback among the writes is not part of the contract); a
        // close comes after every other request.
        let ordered = |k: ReqKind| {
            !matches!(
                k,
                ReqKind::Close | ReqKind::Handshake | ReqKind::Drain | ReqKind::Unwrap
            )
        };
        let terminal = kind == ReqKind::Close || (kind == ReqKind::Unwrap && result == "ok");
        let pending_before: Vec<usize> = if ordered(kind) {
            hm.requests[..i]
                .iter()
                .enumerate()
                .filter(|(_, r)| r.done.is_none() && ordered(r.kind))
                .map(|(j, _)| j)
                .collect()
        } else {
            Vec::new()
        };
        let pending_any: Vec<usize> = hm
            .requests
            .iter()
            .enumerate()
            .filter(|(j, r)| *j != i && r.done.is_none() && r.kind != ReqKind::Close)
            .map(|(j, _)| j)
            .collect();
        hm.requests[i].done = Some(result);
        let name = hm.name.clone();
        if terminal {
            hm.closed = true;
            hm.reading = false;
        }
        drop(handles);
        if kind != ReqKind::Close && !pending_before.is_empty() {
            self.violation(format!(
                "{name}: {kind:?}#{i} completed before earlier requests {pending_before:?}"
            ));
        }
        if terminal && !pending_any.is_empty() {
            self.violation(format!(
                "{name}: {kind:?} callback before requests {pending_any:?} completed"
            ));
        }
    }

    /// `start_read` was accepted.
    pub fn start_read(&self, h: usize) {
        self.handles.borrow_mut()[h].reading = true;
    }

    /// `stop_read` was accepted.
    pub fn stop_read(&self, h: usize) {
        self.handles.borrow_mut()[h].reading = false;
    }

    /// `close` was called: no read callback may follow.
    pub fn closing(&self, h: usize) {
        self.handles.borrow_mut()[h].reading = false;
    }

    /// A read callback ran: `Ok(Some(data))`, `Ok(None)` or an error.
    pub fn read(&self, h: usize, r: &Result<Option<bytes::Bytes>, Error>) {
        let what = match r {
            Ok(Some(d)) => format!("read {} bytes", d.len()),
            Ok(None) => "read eof".into(),
            Err(e) => format!("read error {e}"),
        };
        self.entered(h, &what);
        let mut handles = self.handles.borrow_mut();
        let hm = &mut handles[h];
        let name = hm.name.clone();
        if !hm.reading {
            drop(handles);
            self.violation(format!("{name}: {what} while not reading"));
            return;
        }
        match r {
            Ok(Some(data)) => {
                if let Some(ending) = &hm.ending {
                    let ending = ending.clone();
                    drop(handles);
                    self.violation(format!("{name}: data after the ending ({ending})"));
                    return;
                }
                if data.is_empty() {
                    drop(handles);
                    self.violation(format!("{name}: empty read"));
                    return;
                }
                if let Some(expect) = hm.expect.clone() {
                    let start = hm.received;
                    for (k, b) in data.iter().enumerate() {
                        let at = start + k as u64;
                        if *b != expect(at) {
                            drop(handles);
                            self.violation(format!(
                                "{name}: byte {at} is {b:#04x}, the peer sent {:#04x}",
                                expect(at)
                            ));
                            return;
                        }
                    }
                }
                hm.received += data.len() as u64;
            }
            Ok(None) | Err(_) => {
                let ending = match r {
                    Ok(None) => "eof".to_owned(),
                    _ => outcome(r),
                };
                hm.reading = false;
                match &hm.ending {
                    None => hm.ending = Some(ending),
                    Some(first) if *first == ending => {}
                    Some(first) => {
                        let first = first.clone();
                        drop(handles);
                        self.violation(format!(
                            "{name}: ending {ending} differs from the first one, {first}"
                        ));
                    }
                }
            }
        }
    }

    /// Whether `h` is reading (started, not stopped, no ending heard, not closed).
    pub fn reading(&self, h: usize) -> bool {
        self.handles.borrow()[h].reading
    }

    /// Whether every request of kind `kind` on `h` has completed.
    pub fn all_done(&self, h: usize, kind: ReqKind) -> bool {
        self.handles.borrow()[h]
            .requests
            .iter()
            .all(|r| r.kind != kind || r.done.is_some())
    }

    /// How many events the model has seen (grows with every callback).
    pub fn events(&self) -> usize {
        self.trace.borrow().len()
    }

    /// Bytes the reader of `h` has received.
    pub fn received(&self, h: usize) -> u64 {
        self.handles.borrow()[h].received
    }

    /// The result of a request, if it completed.
    pub fn result(&self, req: Req) -> Option<String> {
        self.handles.borrow()[req.0].requests[req.1].done.clone()
    }

    /// The first ending the reader of `h` heard.
    pub fn ending(&self, h: usize) -> Option<String> {
        self.handles.borrow()[h].ending.clone()
    }

    /// At the end: every request completed.
    /// After every handle but the guard timer `tick` was closed: the loop ends within
    /// 5 s, and once `tick` is closed too, no handle is left.
    pub fn expect_loop_ends(&self, lp: &mut Loop, tick: Timer) {
        let deadline = Instant::now() + Duration::from_secs(5);
        while lp.run_once().unwrap() {
            if Instant::now() > deadline {
                self.violation(format!(
                    "the loop is still alive 5 s after every handle was closed: {lp:?}"
                ));
                break;
            }
        }
        tick.close(lp);
        lp.run_nowait().unwrap();
        if lp.handle_count() != 0 {
            self.violation(format!(
                "{} handles left after closing all",
                lp.handle_count()
            ));
        }
    }

    pub fn finish(&self) {
        let handles = self.handles.borrow();
        let mut missing = Vec::new();
        for hm in handles.iter() {
            for (i, r) in hm.requests.iter().enumerate() {
                if r.done.is_none() {
                    missing.push(format!("{}: {:?}#{i} never completed", hm.name, r.kind));
                }
            }
        }
        drop(handles);
        for m in missing {
            self.violation(m);
        }
    }

    /// Fails (panics) with the violations and the trace, if any.
    pub fn check(&self) {
        let violations = self.violations.borrow();
        if !violations.is_empty() {
            let trace = self.trace.borrow();
            let tail: Vec<&String> = trace.iter().rev().take(60).rev().collect();
            panic!(
                "contract violated:\n  {}\nlast events:\n  {}",
                violations.join("\n  "),
                tail.iter()
                    .map(|s| s.as_str())
                    .collect::<Vec<_>>()
                    .join("\n  ")
            );
        }
    }
}

impl fmt::Debug for Model {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Model")
            .field("violations", &self.violations.borrow().len())
            .finish()
    }
}

/// Cases per property test: `BIOTLS_PROPTEST_CASES` if set, else `default`.
pub fn cases(default: u32) -> u32 {
    std::env::var("BIOTLS_PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// The last resort against a loop that spins for ever inside one iteration (where no
/// in-process guard can run): a thread that prints the case being run and aborts the
/// process once a case has taken longer than its limit.
#[derive(Clone)]
pub struct Watchdog {
    current: Arc<Mutex<Option<(Instant, String)>>>,
}

impl Watchdog {
    pub fn start(limit: Duration) -> Watchdog {
        let current: Arc<Mutex<Option<(Instant, String)>>> = Arc::new(Mutex::new(None));
        let watched = Arc::clone(&current);
        std::thread::spawn(move || {
            loop {
                std::thread::sleep(Duration::from_millis(200));
                let Ok(guard) = watched.lock() else { return };
                if let Some((started, case)) = guard.as_ref()
                    && started.elapsed() > limit
                {
                    // Not `eprintln!`: the test harness captures that, and an abort
                    // would lose it.
                    let text = format!(
                        "a case ran for more than {limit:?}; aborting. The case:\n{case}\n"
                    );
                    let _ = std::io::Write::write_all(&mut std::io::stderr(), text.as_bytes());
                    std::process::abort();
                }
            }
        });
        Watchdog { current }
    }

    /// Marks the start of a case (`describe` is printed if it hangs).
    pub fn begin(&self, describe: String) {
        if let Ok(mut g) = self.current.lock() {
            *g = Some((Instant::now(), describe));
        }
    }

    pub fn end(&self) {
        if let Ok(mut g) = self.current.lock() {
            *g = None;
        }
    }
}
