//! Bad requests: each gets its ttrpc code and leaves nothing behind; the agent still ends
//! cleanly on SIGTERM afterwards.

use std::path::Path;

use husk_protocol::agent::api;
use husk_protocol::stdio::StreamKind;
use husk_tests::agent::{code_of, cref, ctx, open_stream, pref, stdio};
use husk_tests::rootfs::spec;
use ttrpc::Code;

use crate::common::fixture;

pub(crate) async fn bad_input_gets_its_code_and_leaves_nothing_behind() {
    let Some(f) = fixture().await else { return };
    let none = stdio(false, false, false, false);
    let code = |r: Result<u32, ttrpc::Error>| code_of(&r.unwrap_err());
    // malformed spec JSON
    let r =
        f.c.create_container(
            ctx(),
            &api::CreateContainerRequest {
                container_id: "bad1".into(),
                spec_json: b"{not json".to_vec(),
                ..Default::default()
            },
        )
        .await
        .map(|r| r.pid);
    assert_eq!(code(r), Some(Code::INVALID_ARGUMENT));
    // missing rootfs
    let missing = spec(Path::new("/nonexistent/rootfs"), &["true"], false);
    assert_eq!(
        code(f.create("bad2", &missing, none.clone()).await),
        Some(Code::INVALID_ARGUMENT)
    );
    // a binary that is not there: the runner fails, and nothing stays
    let r = f
        .create("bad3", &f.spec(&["/no/such/binary"]), none.clone())
        .await;
    if r.is_ok() {
        f.c.start_process(ctx(), &pref("bad3", "")).await.ok();
        f.remove("bad3", true).await;
    }
    // bad id
    assert_eq!(
        code(f.create("../x", &f.spec(&["true"]), none.clone()).await),
        Some(Code::INVALID_ARGUMENT)
    );
    // unknown container / exec
    let e =
        f.c.start_process(ctx(), &pref("nope", ""))
            .await
            .unwrap_err();
    assert_eq!(code_of(&e), Some(Code::NOT_FOUND));
    f.sleeper("dup1").await;
    let e =
        f.c.wait_process(ctx(), &pref("dup1", "nope"))
            .await
            .unwrap_err();
    assert_eq!(code_of(&e), Some(Code::NOT_FOUND));
    // duplicate id
    assert_eq!(
        code(f.create("dup1", &f.spec(&["true"]), none.clone()).await),
        Some(Code::ALREADY_EXISTS)
    );
    f.exec("dup1", "e1", &["true"], none.clone()).await.unwrap();
    let e = f
        .exec("dup1", "e1", &["true"], none.clone())
        .await
        .unwrap_err();
    assert_eq!(code_of(&e), Some(Code::ALREADY_EXISTS));
    // start twice
    let e =
        f.c.start_process(ctx(), &pref("dup1", ""))
            .await
            .unwrap_err();
    assert_eq!(code_of(&e), Some(Code::FAILED_PRECONDITION));
    // bad signal
    let e = f.signal("dup1", "", 0, false).await.unwrap_err();
    assert_eq!(code_of(&e), Some(Code::INVALID_ARGUMENT));
    // a stream for a stream nobody asked for, or an unknown process
    assert!(
        open_stream(&f.agent.socket, "dup1", "e1", StreamKind::Stdout)
            .await
            .is_err()
    );
    assert!(open_stream(&f.agent.socket, "nope", "", StreamKind::Stdout)
        .await
        .is_err());
    // start with a requested stream not attached
    let s = stdio(false, true, false, false);
    f.exec("dup1", "e2", &["true"], s).await.unwrap();
    let e =
        f.c.start_process(ctx(), &pref("dup1", "e2"))
            .await
            .unwrap_err();
    assert_eq!(code_of(&e), Some(Code::FAILED_PRECONDITION));
    // signal to an exited process
    f.signal("dup1", "", libc::SIGKILL, false).await.unwrap();
    f.c.wait_process(ctx(), &pref("dup1", "")).await.unwrap();
    let e = f
        .signal("dup1", "", libc::SIGKILL, false)
        .await
        .unwrap_err();
    assert_eq!(code_of(&e), Some(Code::FAILED_PRECONDITION));
    // exec into a stopped container
    let e = f.exec("dup1", "e3", &["true"], none).await.unwrap_err();
    assert_eq!(code_of(&e), Some(Code::FAILED_PRECONDITION));
    f.remove("dup1", false).await;
    let e = f.c.stats(ctx(), &cref("dup1")).await.unwrap_err();
    assert_eq!(code_of(&e), Some(Code::NOT_FOUND));
    f.assert_clean();
    // The agent ends cleanly on SIGTERM.
    assert_eq!(f.agent.stop(), Some(0));
}
