//! After an accept error (out of file descriptors), connections waiting in the backlog
//! are accepted once descriptors are free again, without a new connection arriving to
//! raise an edge. A test binary of its own: it lowers this process's descriptor limit.

mod util;

use std::cell::RefCell;
use std::fs::File;
use std::net::TcpStream;
use std::rc::Rc;
use std::time::Duration;

use biotls::{Loop, Stream, TcpListener};
use util::run_until;

#[test]
fn backlog_is_accepted_after_emfile_without_a_new_connection() {
    let (soft, hard) = rlimit::Resource::NOFILE.get().unwrap();
    let mut lp = Loop::new().unwrap();
    let listener = TcpListener::bind(&mut lp, "127.0.0.1:0".parse().unwrap()).unwrap();
    let addr = listener.local_addr(&lp).unwrap();

    let hogs = Rc::new(RefCell::new(Vec::new()));
    let events = Rc::new(RefCell::new(Vec::new()));
    let mut clients = vec![TcpStream::connect(addr).unwrap()];
    let (e, h) = (Rc::clone(&events), Rc::clone(&hogs));
    listener
        .listen(&mut lp, move |lp, _, accepted| match accepted {
            Ok(tcp) => {
                e.borrow_mut().push("accepted");
                tcp.close(lp, |_, _| {});
            }
            Err(err) => {
                e.borrow_mut().push("error");
                assert!(err.io_kind().is_some(), "{err}");
                // Free the descriptors; no new connection will come.
                h.borrow_mut().clear();
            }
        })
        .unwrap();
    // One connection accepted: the listener's edge is consumed, the backlog is empty.
    run_until(&mut lp, Duration::from_secs(10), || {
        !events.borrow().is_empty()
    });
    assert_eq!(*events.borrow(), ["accepted"]);
    // Three more arrive together (one edge), and every descriptor is used up under a low
    // limit: the first accept fails, the other two wait in the backlog.
    clients.extend((0..3).map(|_| TcpStream::connect(addr).unwrap()));
    rlimit::Resource::NOFILE.set(256, hard).unwrap();
    while let Ok(f) = File::open("/dev/null") {
        hogs.borrow_mut().push(f);
    }
    run_until(&mut lp, Duration::from_secs(10), || {
        events.borrow().iter().filter(|e| **e == "accepted").count() == 4
    });
    assert_eq!(events.borrow()[1], "error", "{:?}", events.borrow());
    listener.close(&mut lp);
    drop(clients);
    rlimit::Resource::NOFILE.set(soft, hard).unwrap();
}
