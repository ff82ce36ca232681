//! Starting a process against its streams' attachment: at once when attached, after a wait
//! when a stream is still attaching, and refused when a stream was never asked for or its
//! client gave up.

use std::sync::Arc;
use std::time::Duration;

use husk_protocol::stdio::StreamKind;
use tokio::net::UnixStream;

use super::*;
use crate::conn::Conn;
use crate::stdio::StdioRequest;

fn stdout_only() -> Arc<Process> {
    let stdio = StdioRequest {
        stdout: true,
        ..Default::default()
    };
    Process::new("c1", "e1", stdio, PathBuf::from("/nonexistent/cgroup"))
}

fn conn() -> Conn {
    let (ours, _theirs) = UnixStream::pair().unwrap();
    Conn::Unix(ours)
}

#[tokio::test]
async fn an_attached_stream_starts_at_once() {
    let p = stdout_only();
    p.reserve(StreamKind::Stdout).unwrap();
    p.attach(StreamKind::Stdout, conn());
    p.begin_start().await.unwrap();
    assert_eq!(p.status(), Status::Running);
}

#[tokio::test]
async fn a_stream_still_attaching_is_waited_for() {
    let p = stdout_only();
    p.reserve(StreamKind::Stdout).unwrap();
    let late = Arc::clone(&p);
    let attach = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(50)).await;
        late.attach(StreamKind::Stdout, conn());
    });
    p.begin_start().await.unwrap();
    assert_eq!(p.status(), Status::Running);
    attach.await.unwrap();
}

#[tokio::test]
async fn a_stream_never_asked_for_is_refused_at_once() {
    let p = stdout_only();
    let e = p.begin_start().await.unwrap_err();
    assert!(
        e.to_string()
            .contains("the stdout stream is not attached yet"),
        "{e}"
    );
    assert_eq!(p.status(), Status::Created);
}

#[tokio::test]
async fn a_stream_given_up_while_attaching_is_refused() {
    let p = stdout_only();
    p.reserve(StreamKind::Stdout).unwrap();
    let late = Arc::clone(&p);
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(50)).await;
        late.release(StreamKind::Stdout);
    });
    let e = p.begin_start().await.unwrap_err();
    assert!(e.to_string().contains("not attached yet"), "{e}");
    assert_eq!(p.status(), Status::Created);
}

#[tokio::test(start_paused = true)]
async fn a_stream_that_never_attaches_gives_up_after_the_grace() {
    let p = stdout_only();
    p.reserve(StreamKind::Stdout).unwrap();
    let e = p.begin_start().await.unwrap_err();
    assert!(e.to_string().contains("did not attach within"), "{e}");
    assert_eq!(p.status(), Status::Created);
}
