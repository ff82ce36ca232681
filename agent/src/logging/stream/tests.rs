use std::collections::VecDeque;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::task::{Context, Poll};
use std::time::Duration;

use super::*;

/// A stream that keeps what it is sent until it is broken.
#[derive(Clone, Default)]
struct Fake {
    sent: Arc<Mutex<Vec<u8>>>,
    broken: Arc<AtomicBool>,
}

impl Fake {
    fn text(&self) -> String {
        String::from_utf8(self.sent.lock().unwrap().clone()).unwrap()
    }
    fn break_it(&self) {
        self.broken.store(true, Ordering::SeqCst);
    }
}

impl AsyncWrite for Fake {
    fn poll_write(self: Pin<&mut Self>, _: &mut Context<'_>, b: &[u8]) -> Poll<io::Result<usize>> {
        if self.broken.load(Ordering::SeqCst) {
            return Poll::Ready(Err(io::ErrorKind::ConnectionReset.into()));
        }
        self.sent.lock().unwrap().extend_from_slice(b);
        Poll::Ready(Ok(b.len()))
    }
    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

/// The forwarder over `streams` (None: that open fails), fed by the returned sender.
fn start(
    streams: Vec<Option<Fake>>,
    breaks: Breaks,
) -> (mpsc::Sender<Vec<u8>>, Arc<Sinks>, &'static Notify) {
    let (tx, rx) = mpsc::channel(16);
    let sinks = Sinks::new();
    let reopen: &'static Notify = Box::leak(Box::new(Notify::new()));
    let mut streams: VecDeque<Option<Fake>> = streams.into();
    let open = move || {
        let next = streams.pop_front().flatten();
        async move { next }
    };
    tokio::spawn(forward(rx, Arc::clone(&sinks), open, reopen, breaks));
    (tx, sinks, reopen)
}

async fn until(what: &str, cond: impl Fn() -> bool) {
    for _ in 0..500 {
        if cond() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    panic!("timed out waiting for {what}");
}

async fn line(tx: &mpsc::Sender<Vec<u8>>, text: &str) {
    tx.send(format!("{text}\n").into_bytes()).await.unwrap();
}

#[tokio::test]
async fn once_the_stream_is_open_the_console_is_off() {
    let first = Fake::default();
    let (tx, sinks, _) = start(vec![Some(first.clone())], Breaks::Unexpected);
    line(&tx, "a").await;
    until("the line", || first.text() == "a\n").await;
    assert!(
        !sinks.console(),
        "lines reach the host: the console has none"
    );
}

#[tokio::test]
async fn without_a_stream_the_console_stays_on() {
    let (tx, sinks, _) = start(vec![None], Breaks::Unexpected);
    line(&tx, "a").await;
    tokio::time::sleep(Duration::from_millis(20)).await;
    assert!(sinks.console());
}

#[tokio::test]
async fn a_restored_template_guest_keeps_its_lines_for_the_new_stream() {
    let (old, new) = (Fake::default(), Fake::default());
    let (tx, sinks, reopen) = start(
        vec![Some(old.clone()), Some(new.clone())],
        Breaks::ExpectedOnce,
    );
    line(&tx, "before").await;
    until("the first line", || old.text() == "before\n").await;
    old.break_it();
    line(&tx, "found the break").await;
    line(&tx, "queued").await;
    tokio::time::sleep(Duration::from_millis(20)).await;
    assert!(!sinks.console(), "the expected break keeps the console off");
    assert_eq!(new.text(), "", "nothing is sent before the reopen");
    reopen.notify_one();
    until("the kept lines", || {
        new.text() == "found the break\nqueued\n"
    })
    .await;
    assert!(!sinks.console());

    // A second break is a failure: the console takes the lines again.
    new.break_it();
    line(&tx, "after").await;
    until("the console", || sinks.console()).await;
}

#[tokio::test]
async fn a_break_in_a_plain_guest_turns_the_console_on_until_a_new_stream() {
    let (old, new) = (Fake::default(), Fake::default());
    let (tx, sinks, reopen) = start(
        vec![Some(old.clone()), Some(new.clone())],
        Breaks::Unexpected,
    );
    old.break_it();
    line(&tx, "lost to the console").await;
    until("the console", || sinks.console()).await;
    line(&tx, "queued").await;
    reopen.notify_one();
    until("the queued line", || new.text() == "queued\n").await;
    assert!(!sinks.console());
}

#[tokio::test]
async fn dropped_lines_are_reported_on_the_stream() {
    let first = Fake::default();
    let (tx, sinks, _) = start(vec![Some(first.clone())], Breaks::Unexpected);
    sinks.add_dropped(3);
    line(&tx, "next").await;
    until("the note and the line", || {
        first.text() == "husk-agent: 3 log lines dropped (queue full)\nnext\n"
    })
    .await;
}
