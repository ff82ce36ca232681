//! The stdio streams: stdout and stderr kept apart and complete, stdin with half-close as
//! end-of-file, and a tty session resized while it runs.

use std::time::Duration;

use husk_protocol::agent::api;
use husk_tests::agent::{self, ctx, pref, stdio, Output};
use husk_tests::rootfs::spec;
use tokio::io::AsyncWriteExt;

use crate::common::fixture;

pub(crate) async fn stdout_and_stderr_are_separate_and_complete() {
    let Some(f) = fixture().await else { return };
    // 1 MiB on stdout, a marker on stderr, then exit at once: nothing may be lost.
    let script = "yes 0123456789abcde | head -c 1048576; echo to-stderr >&2; exit 7";
    let (status, out, err) = agent::run(
        &f.agent.socket,
        &f.c,
        "io1",
        &f.spec(&["sh", "-c", script]),
        stdio(false, true, true, false),
    )
    .await
    .unwrap();
    assert_eq!(status, 7);
    assert_eq!(out.len(), 1 << 20, "stdout bytes");
    assert!(out.starts_with(b"0123456789abcde\n0123456789abcde\n"));
    assert_eq!(err, b"to-stderr\n");
    f.assert_clean();
}

pub(crate) async fn stdin_is_echoed_and_half_close_is_eof() {
    let Some(f) = fixture().await else { return };
    let s = stdio(true, true, false, false);
    f.create("cat1", &f.spec(&["cat"]), s.clone())
        .await
        .unwrap();
    let mut out = Output::attach(&f.agent.socket, "cat1", "", &s)
        .await
        .unwrap();
    f.c.start_process(ctx(), &pref("cat1", "")).await.unwrap();
    let mut stdin = out.stdin.take().unwrap();
    stdin.write_all(b"hello husk\n").await.unwrap();
    stdin.shutdown().await.unwrap();
    let w = f.c.wait_process(ctx(), &pref("cat1", "")).await.unwrap();
    let (o, _) = out.collect().await;
    assert_eq!((w.exit_status, o.as_slice()), (0, &b"hello husk\n"[..]));
    f.remove("cat1", false).await;
    f.assert_clean();
}

pub(crate) async fn tty_session_with_resize() {
    let Some(f) = fixture().await else { return };
    let s = stdio(true, true, false, true);
    let spec = spec(
        &f.rootfs,
        &["sh", "-c", "stty size; tty; read x; stty size"],
        true,
    );
    f.create("tty1", &spec, s.clone()).await.unwrap();
    let resize = |w, h| api::ResizeTtyRequest {
        container_id: "tty1".into(),
        width: w,
        height: h,
        ..Default::default()
    };
    f.c.resize_tty(ctx(), &resize(100, 30)).await.unwrap();
    let mut out = Output::attach(&f.agent.socket, "tty1", "", &s)
        .await
        .unwrap();
    f.c.start_process(ctx(), &pref("tty1", "")).await.unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    f.c.resize_tty(ctx(), &resize(120, 40)).await.unwrap();
    let mut stdin = out.stdin.take().unwrap();
    stdin.write_all(b"go\n").await.unwrap();
    let w = f.c.wait_process(ctx(), &pref("tty1", "")).await.unwrap();
    let (o, _) = out.collect().await;
    let text = String::from_utf8_lossy(&o);
    assert_eq!(w.exit_status, 0, "{text}");
    assert!(text.contains("30 100"), "first size: {text:?}");
    assert!(text.contains("/dev/pts/"), "tty: {text:?}");
    assert!(text.contains("40 120"), "size after resize: {text:?}");
    // A process without a terminal cannot be resized.
    f.remove("tty1", false).await;
    f.assert_clean();
}
