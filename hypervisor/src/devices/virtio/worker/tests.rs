//! The worker thread's unit tests: confinement, runs, faults and stops.

use super::*;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

struct Counter {
    evt: EventFd,
    seen: Arc<AtomicUsize>,
    panic_on: usize,
}

impl EpollHandler for Counter {
    fn register(&mut self, epoll: &Epoll) -> io::Result<()> {
        add_fd(epoll, &self.evt, 7)
    }
    fn handle(&mut self, token: u64, _: EventSet) {
        assert_eq!(token, 7);
        let _ = self.evt.read();
        if self.seen.fetch_add(1, Ordering::SeqCst) + 1 == self.panic_on {
            panic!("handler bug");
        }
    }
}

fn wait_for(f: impl Fn() -> bool) {
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while !f() && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(1));
    }
}

#[test]
fn events_reach_the_handler_and_stop_joins() {
    let evt = EventFd::new(libc::EFD_NONBLOCK).unwrap();
    let seen = Arc::new(AtomicUsize::new(0));
    let h = Counter {
        evt: evt.try_clone().unwrap(),
        seen: seen.clone(),
        panic_on: 0,
    };
    let mut w = Worker::start("test-worker", || Ok(())).unwrap();
    w.run(move || Ok(h), || {}).unwrap();
    assert!(w.is_running());
    evt.write(1).unwrap();
    wait_for(|| seen.load(Ordering::SeqCst) == 1);
    assert_eq!(seen.load(Ordering::SeqCst), 1);
    w.stop();
    assert!(!w.is_running());

    // The same thread serves the next run, and a kill left from the last one is stale.
    let h = Counter {
        evt: evt.try_clone().unwrap(),
        seen: seen.clone(),
        panic_on: 0,
    };
    w.run(move || Ok(h), || {}).unwrap();
    evt.write(1).unwrap();
    wait_for(|| seen.load(Ordering::SeqCst) == 2);
    assert_eq!(seen.load(Ordering::SeqCst), 2);
    assert!(w.run(|| Ok(Idle), || {}).is_err(), "one run at a time");
}

struct Idle;

impl EpollHandler for Idle {
    fn register(&mut self, _: &Epoll) -> io::Result<()> {
        Ok(())
    }
    fn handle(&mut self, _: u64, _: EventSet) {}
}

#[test]
fn a_failing_confinement_or_constructor_is_an_error() {
    let e = Worker::start("test-confine", || Err(io::Error::other("no filter")))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("confining thread test-confine: no filter"),
        "{e}"
    );
    let mut w = Worker::start("test-make", || Ok(())).unwrap();
    let e = w
        .run(
            || -> io::Result<Idle> { Err(io::Error::other("no backend")) },
            || {},
        )
        .unwrap_err();
    assert_eq!(e.to_string(), "no backend");
    assert!(!w.is_running());
    w.run(|| Ok(Idle), || {}).unwrap();
    assert!(w.is_running());
}

/// A handler whose constructor waits for `gate` (the test's say-so) before it exists.
fn gated(gate: mpsc::Receiver<()>) -> impl FnOnce() -> io::Result<Idle> + Send + 'static {
    move || {
        gate.recv_timeout(Duration::from_secs(5))
            .map_err(|_| io::Error::other("the test never opened the gate"))?;
        Ok(Idle)
    }
}

#[test]
fn spawned_threads_confine_side_by_side_and_take_work_only_once_confined() {
    // Two threads whose confinement waits for the test: both spawn at once.
    let (let_a, gate_a) = mpsc::channel::<()>();
    let (let_b, gate_b) = mpsc::channel::<()>();
    let mut a = Worker::spawn("test-spawn-a", move || {
        gate_a.recv().map_err(|_| io::Error::other("gate dropped"))
    })
    .unwrap();
    let mut b = Worker::spawn("test-spawn-b", move || {
        gate_b
            .recv()
            .map_err(|_| io::Error::other("gate dropped"))?;
        Err(io::Error::other("no filter"))
    })
    .unwrap();
    // Work handed over before the confinement waits for it.
    let ran = Arc::new(AtomicUsize::new(0));
    let (ran_a, ran_b) = (ran.clone(), ran.clone());
    a.submit(
        move || {
            ran_a.fetch_add(1, Ordering::SeqCst);
            Ok(Idle)
        },
        || {},
    )
    .unwrap();
    b.submit(
        move || {
            ran_b.fetch_add(10, Ordering::SeqCst);
            Ok(Idle)
        },
        || {},
    )
    .unwrap();
    std::thread::sleep(Duration::from_millis(50));
    assert_eq!(ran.load(Ordering::SeqCst), 0, "no work before confinement");
    let_b.send(()).unwrap();
    let_a.send(()).unwrap();
    a.built().unwrap();
    a.confined().unwrap();
    // A failed confinement: built says so, and the work handed over never ran.
    let e = b.built().unwrap_err().to_string();
    assert!(
        e.contains("confining thread test-spawn-b: no filter"),
        "{e}"
    );
    assert!(!b.is_running());
    let again = b.confined().unwrap_err().to_string();
    assert_eq!(again, e, "asked again, the same failure");
    assert!(b.submit(|| Ok(Idle), || {}).is_err(), "the thread is gone");
    assert_eq!(ran.load(Ordering::SeqCst), 1, "only a's handler was built");
    a.stop();
}

#[test]
fn submitted_runs_build_their_handlers_at_once_and_built_waits_for_each() {
    let mut a = Worker::start("test-submit-a", || Ok(())).unwrap();
    let mut b = Worker::start("test-submit-b", || Ok(())).unwrap();
    let (open_a, gate_a) = mpsc::channel();
    let (open_b, gate_b) = mpsc::channel();
    // Both submits return while neither handler can be built yet.
    a.submit(gated(gate_a), || {}).unwrap();
    b.submit(gated(gate_b), || {}).unwrap();
    assert!(a.is_running() && b.is_running());
    assert!(a.submit(|| Ok(Idle), || {}).is_err(), "one run at a time");
    open_b.send(()).unwrap();
    b.built().unwrap();
    open_a.send(()).unwrap();
    a.built().unwrap();
    // Asked again, there is nothing left to wait for.
    a.built().unwrap();
    a.stop();
    assert!(!a.is_running());
}

#[test]
fn a_submitted_constructors_error_comes_from_built_and_stop_waits_for_the_build() {
    let mut w = Worker::start("test-submit-err", || Ok(())).unwrap();
    w.submit(
        || -> io::Result<Idle> { Err(io::Error::other("no backend")) },
        || {},
    )
    .unwrap();
    assert_eq!(w.built().unwrap_err().to_string(), "no backend");
    assert!(!w.is_running());

    // Stopped while its handler is still being built: the stop waits for the build and
    // then ends the run (a kill sent before the thread took the job would be read there as
    // a stale one).
    let (open, gate) = mpsc::channel();
    w.submit(gated(gate), || {}).unwrap();
    let opener = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(50));
        open.send(()).unwrap();
    });
    w.stop();
    assert!(!w.is_running());
    opener.join().unwrap();
    w.run(|| Ok(Idle), || {}).unwrap();
    assert!(w.is_running());
}

#[test]
fn a_panicking_handler_reports_instead_of_killing_the_process() {
    let evt = EventFd::new(libc::EFD_NONBLOCK).unwrap();
    let flagged = Arc::new(AtomicUsize::new(0));
    let f = flagged.clone();
    let h = Counter {
        evt: evt.try_clone().unwrap(),
        seen: Arc::new(AtomicUsize::new(0)),
        panic_on: 1,
    };
    let mut w = Worker::start("test-panic", || Ok(())).unwrap();
    w.run(
        move || Ok(h),
        move || {
            f.fetch_add(1, Ordering::SeqCst);
        },
    )
    .unwrap();
    evt.write(1).unwrap();
    wait_for(|| flagged.load(Ordering::SeqCst) == 1);
    assert_eq!(flagged.load(Ordering::SeqCst), 1);
    drop(w);
}
