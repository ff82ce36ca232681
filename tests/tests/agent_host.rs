//! husk-agent in host mode (`--host-mode --socket`), as root on a pure cgroup v2 host with a
//! busybox rootfs: the agent API end to end, exactly as the shim will drive it (hybrid
//! handshake, ttrpc, stdio streams). Run by `make e2e` inside the test host, which has what
//! these tests need (root, cgroup2 at /sys/fs/cgroup, the static agent in HUSK_AGENT).
//!
//! Each test's body lives in the module of its theme (`agent_host/<theme>.rs`), next to the
//! shared fixture (`agent_host/common.rs`); the test functions themselves stay here, at the
//! top of the crate, so their names (which `make e2e` filters on) do not change.

#[macro_use]
#[path = "agent_host/common.rs"]
mod common;

#[path = "agent_host/bad_input.rs"]
mod bad_input;
#[path = "agent_host/cgroups.rs"]
mod cgroups;
#[path = "agent_host/lifecycle.rs"]
mod lifecycle;
#[path = "agent_host/sandbox.rs"]
mod sandbox;
#[path = "agent_host/spec.rs"]
mod spec;
#[path = "agent_host/streams.rs"]
mod streams;

#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs root and cgroup v2: run with `make e2e` (inside the test host)"]
async fn run_reports_exit_codes_as_runc() {
    lifecycle::run_reports_exit_codes_as_runc().await
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs root and cgroup v2: run with `make e2e` (inside the test host)"]
async fn stdout_and_stderr_are_separate_and_complete() {
    streams::stdout_and_stderr_are_separate_and_complete().await
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs root and cgroup v2: run with `make e2e` (inside the test host)"]
async fn stdin_is_echoed_and_half_close_is_eof() {
    streams::stdin_is_echoed_and_half_close_is_eof().await
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs root and cgroup v2: run with `make e2e` (inside the test host)"]
async fn tty_session_with_resize() {
    streams::tty_session_with_resize().await
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs root and cgroup v2: run with `make e2e` (inside the test host)"]
async fn exec_into_a_running_container_and_signals() {
    lifecycle::exec_into_a_running_container_and_signals().await
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs root and cgroup v2: run with `make e2e` (inside the test host)"]
async fn twenty_parallel_execs_and_pids_listed() {
    lifecycle::twenty_parallel_execs_and_pids_listed().await
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs root and cgroup v2: run with `make e2e` (inside the test host)"]
async fn pause_and_resume_freeze_the_cgroup() {
    cgroups::pause_and_resume_freeze_the_cgroup().await
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs root and cgroup v2: run with `make e2e` (inside the test host)"]
async fn memory_limit_is_applied_and_oom_is_reported() {
    cgroups::memory_limit_is_applied_and_oom_is_reported().await
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs root and cgroup v2: run with `make e2e` (inside the test host)"]
async fn bad_input_gets_its_code_and_leaves_nothing_behind() {
    bad_input::bad_input_gets_its_code_and_leaves_nothing_behind().await
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs root and cgroup v2: run with `make e2e` (inside the test host)"]
async fn the_spec_is_enforced_as_runc_does() {
    spec::the_spec_is_enforced_as_runc_does().await
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs root and cgroup v2: run with `make e2e` (inside the test host)"]
async fn update_container_applies_resources() {
    cgroups::update_container_applies_resources().await
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs root and cgroup v2: run with `make e2e` (inside the test host)"]
async fn the_sandbox_container_is_an_anchor_with_its_spec_in_force() {
    sandbox::the_sandbox_container_is_an_anchor_with_its_spec_in_force().await
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs root and cgroup v2: run with `make e2e` (inside the test host)"]
async fn a_sandbox_spec_the_kernel_refuses_fails_by_name_and_leaves_nothing() {
    sandbox::a_sandbox_spec_the_kernel_refuses_fails_by_name_and_leaves_nothing().await
}
