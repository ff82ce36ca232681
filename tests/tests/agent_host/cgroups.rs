//! The container's cgroup: pause and resume through the freezer, a memory limit with the OOM
//! kill reported, and UpdateContainer applying new limits.

use std::time::Duration;

use husk_protocol::agent::api;
use husk_tests::agent::{client, code_of, cref, ctx, pref, stdio};
use ttrpc::Code;

use crate::common::fixture;

pub(crate) async fn pause_and_resume_freeze_the_cgroup() {
    let Some(f) = fixture().await else { return };
    f.sleeper("pz1").await;
    f.c.pause_container(ctx(), &cref("pz1")).await.unwrap();
    let events = std::fs::read_to_string("/sys/fs/cgroup/husk/pz1/cgroup.events").unwrap();
    assert!(events.contains("frozen 1"), "{events}");
    let e = f
        .exec("pz1", "x", &["true"], stdio(false, false, false, false))
        .await
        .unwrap_err();
    assert_eq!(
        code_of(&e),
        Some(Code::FAILED_PRECONDITION),
        "exec into paused: {e:?}"
    );
    let e = f.c.pause_container(ctx(), &cref("pz1")).await.unwrap_err();
    assert_eq!(code_of(&e), Some(Code::FAILED_PRECONDITION));
    f.c.resume_container(ctx(), &cref("pz1")).await.unwrap();
    let events = std::fs::read_to_string("/sys/fs/cgroup/husk/pz1/cgroup.events").unwrap();
    assert!(events.contains("frozen 0"), "{events}");
    // removing a running container needs force
    let e =
        f.c.remove_container(
            ctx(),
            &api::RemoveContainerRequest {
                container_id: "pz1".into(),
                ..Default::default()
            },
        )
        .await
        .unwrap_err();
    assert_eq!(code_of(&e), Some(Code::FAILED_PRECONDITION));
    f.remove("pz1", true).await;
    f.assert_clean();
}

pub(crate) async fn memory_limit_is_applied_and_oom_is_reported() {
    let Some(f) = fixture().await else { return };
    let mut spec = f.spec(&[
        "sh",
        "-c",
        "sleep 1; dd if=/dev/zero of=/dev/null bs=128M count=1",
    ]);
    spec["linux"]["resources"]["memory"] =
        serde_json::json!({"limit": 32 * 1024 * 1024, "swap": 32 * 1024 * 1024});
    f.create("oom1", &spec, stdio(false, false, false, false))
        .await
        .unwrap();
    let max = std::fs::read_to_string("/sys/fs/cgroup/husk/oom1/memory.max").unwrap();
    assert_eq!(max.trim(), (32 * 1024 * 1024).to_string());
    let c2 = client(&f.agent.socket).await.unwrap();
    let oom = tokio::spawn(async move { c2.wait_oom_event(ctx(), &api::Empty::default()).await });
    f.c.start_process(ctx(), &pref("oom1", "")).await.unwrap();
    let w = f.c.wait_process(ctx(), &pref("oom1", "")).await.unwrap();
    assert!(w.oom_killed, "WaitResponse.oom_killed: {w:?}");
    let ev = tokio::time::timeout(Duration::from_secs(30), oom)
        .await
        .expect("no OOM event within 30 s")
        .unwrap()
        .unwrap();
    assert_eq!(ev.container_id, "oom1");
    let stats = f.c.stats(ctx(), &cref("oom1")).await.unwrap();
    assert_eq!(stats.memory_max, 32 * 1024 * 1024);
    assert!(stats.memory_events.get("oom_kill").copied().unwrap_or(0) >= 1);
    // UpdateContainer applies new limits
    f.remove("oom1", false).await;
    f.assert_clean();
}

pub(crate) async fn update_container_applies_resources() {
    let Some(f) = fixture().await else { return };
    f.sleeper("up1").await;
    let update = |json: &str| api::UpdateContainerRequest {
        container_id: "up1".into(),
        resources_json: json.as_bytes().to_vec(),
        ..Default::default()
    };
    f.c.update_container(
        ctx(),
        &update(r#"{"memory":{"limit":67108864},"pids":{"limit":50}}"#),
    )
    .await
    .unwrap();
    let read = |f: &str| std::fs::read_to_string(format!("/sys/fs/cgroup/husk/up1/{f}")).unwrap();
    assert_eq!(read("memory.max").trim(), "67108864");
    assert_eq!(read("pids.max").trim(), "50");
    let e =
        f.c.update_container(ctx(), &update("{bad"))
            .await
            .unwrap_err();
    assert_eq!(code_of(&e), Some(Code::INVALID_ARGUMENT));
    let st = f.c.stats(ctx(), &cref("up1")).await.unwrap();
    assert_eq!((st.memory_max, st.pids_max), (67108864, 50));
    assert!(
        st.pids_current >= 1 && st.cpu_stat.contains_key("usage_usec"),
        "{st:?}"
    );
    f.remove("up1", true).await;
    f.assert_clean();
}
