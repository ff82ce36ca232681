//! husk-vmm's snapshot and restore (issue 17, item 1), on real guests in the nested test host.
//!
//! - A VM snapshotted mid-run (the test init's tick counter and its vsock server) runs on
//!   after the snapshot, and a VM restored from it continues the count where the snapshot
//!   left it, with its vsock device working on the restored VM's own socket.
//! - A restored VM's RAM is the snapshot's, byte for byte (restored paused and snapshotted
//!   again).
//! - A truncated, corrupt or foreign snapshot, one for another machine size, and a short
//!   memory file are each refused with an error that names the problem, leaving nothing.

use std::io::{Read, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use husk_tests::e2e;
use husk_tests::microvm::{
    control, husk_vmm_with, hybrid_connect, GuestSpec, RunningVm, VmmOptions, VsockOptions,
    TEST_INIT_MARKER,
};

const BOOT_TIMEOUT: Duration = Duration::from_secs(240);
const GUEST_PORT: u32 = 1024;
const MEMORY_MIB: u32 = 128;
/// The state file's header: magic, format version, CRC-32, body length.
const HEADER_LEN: usize = 24;

fn spec(env: &e2e::E2eEnv, vcpus: u32, cmdline: &str, memory_mib: u32) -> GuestSpec {
    GuestSpec {
        kernel: env.kernel.clone(),
        initramfs: env.test_image.clone(),
        cmdline: cmdline.into(),
        vcpus,
        memory_mib,
    }
}

/// A directory of `parent` for one VM's configuration and sockets.
fn vm_dir(parent: &Path, name: &str) -> PathBuf {
    let d = parent.join(name);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// The count of the last `husk-test-init: tick <n>` line in `console`.
fn last_tick(console: &str) -> Option<u64> {
    console.lines().rev().find_map(tick_of)
}

fn tick_of(line: &str) -> Option<u64> {
    let rest = line.split("husk-test-init: tick ").nth(1)?;
    rest.split_whitespace().next()?.parse().ok()
}

/// 64 KiB through the guest's echo server over a fresh hybrid-vsock connection.
fn echo_once(socket: &Path) -> Result<(), String> {
    let mut s = hybrid_connect(socket, GUEST_PORT, Duration::from_secs(60))
        .map_err(|e| format!("CONNECT {GUEST_PORT}: {e}"))?;
    s.set_read_timeout(Some(Duration::from_secs(60)))
        .map_err(|e| e.to_string())?;
    let data: Vec<u8> = (0..64 * 1024u32).map(|i| (i * 7 + i / 251) as u8).collect();
    s.write_all(b"echo\n").map_err(|e| e.to_string())?;
    s.write_all(&data).map_err(|e| e.to_string())?;
    let mut back = vec![0u8; data.len()];
    s.read_exact(&mut back)
        .map_err(|e| format!("reading the echo: {e}"))?;
    if back != data {
        return Err("the echo differs from what was sent".into());
    }
    Ok(())
}

/// Pauses the VM and lets the console lines already printed arrive.
fn pause(vm: &mut RunningVm, socket: &Path) {
    assert_eq!(control(socket, "pause\n").unwrap(), "ok paused");
    vm.wait_for("(drain the console)", Duration::from_secs(2));
}

fn snapshot(vm: &RunningVm, socket: &Path) -> String {
    let answer = control(socket, "snapshot\n").unwrap();
    assert!(
        answer.starts_with("ok snapshot memory_bytes="),
        "snapshot: {answer}\n{}",
        vm.console
    );
    eprintln!("snapshot: {answer}");
    answer
}

fn stop(mut vm: RunningVm) -> String {
    vm.signal(libc::SIGTERM);
    let code = vm.wait(Duration::from_secs(30));
    assert_eq!(code, Some(128 + libc::SIGTERM), "{}", vm.console);
    std::mem::take(&mut vm.console)
}

#[test]
#[ignore = "needs hardware KVM: run with `make e2e` (uses the nested test host where needed)"]
fn a_snapshotted_vm_runs_on_and_its_restore_continues_with_vsock_working() {
    let env = e2e::require();
    let dir = tempfile::tempdir().unwrap();
    let snap = vm_dir(dir.path(), "snap");
    let a = vm_dir(dir.path(), "a");
    let (socket, ctl) = (a.join("v.sock"), a.join("ctl.sock"));
    let cmdline = format!("husk.test=hold husk.test.tick=1 husk.vsock.serve={GUEST_PORT}");
    let guest = spec(&env, 2, &cmdline, MEMORY_MIB);
    let opts = VmmOptions {
        control_socket: Some(&ctl),
        vsock: Some(VsockOptions {
            guest_cid: 3,
            socket: &socket,
            allowed_guest_ports: &[],
        }),
        snapshot_dir: Some(&snap),
        ..Default::default()
    };
    let mut vm = RunningVm::spawn(husk_vmm_with(&env.vmm, &guest, &a, &opts).unwrap()).unwrap();
    vm.wait_for(TEST_INIT_MARKER, BOOT_TIMEOUT)
        .unwrap_or_else(|| panic!("{}", vm.missing("marker")));
    vm.wait_for("husk-test-init: tick 2 ", BOOT_TIMEOUT)
        .unwrap_or_else(|| panic!("{}", vm.missing("tick 2")));
    echo_once(&socket).unwrap_or_else(|e| panic!("before the snapshot: {e}"));

    let running = control(&ctl, "snapshot\n").unwrap();
    assert_eq!(
        running,
        "error the VM must be paused to be snapshotted (it is running)"
    );
    pause(&mut vm, &ctl);
    let last = last_tick(&vm.console).expect("a tick before the pause");
    snapshot(&vm, &ctl);

    // The snapshotted VM runs on: its count goes on, its vsock device works again.
    assert_eq!(control(&ctl, "resume\n").unwrap(), "ok running");
    let next = format!("husk-test-init: tick {} ", last + 1);
    vm.wait_for(&next, Duration::from_secs(60))
        .unwrap_or_else(|| panic!("{}", vm.missing("the next tick after the snapshot")));
    echo_once(&socket).unwrap_or_else(|e| panic!("after the snapshot, same VM: {e}"));
    stop(vm);

    // A new VM from the snapshot, with its own sockets: the count goes on from the snapshot.
    let b = vm_dir(dir.path(), "b");
    let (socket_b, ctl_b) = (b.join("v.sock"), b.join("ctl.sock"));
    let opts = VmmOptions {
        control_socket: Some(&ctl_b),
        vsock: Some(VsockOptions {
            guest_cid: 3,
            socket: &socket_b,
            allowed_guest_ports: &[],
        }),
        restore: Some(&snap),
        ..Default::default()
    };
    let mut restored =
        RunningVm::spawn(husk_vmm_with(&env.vmm, &guest, &b, &opts).unwrap()).unwrap();
    let first = restored
        .wait_for("husk-test-init: tick ", Duration::from_secs(60))
        .unwrap_or_else(|| panic!("{}", restored.missing("a tick after the restore")));
    assert_eq!(
        tick_of(&first),
        Some(last + 1),
        "the restored guest continues the count: {first}\n{}",
        restored.console
    );
    echo_once(&socket_b).unwrap_or_else(|e| panic!("after the restore: {e}\n{}", restored.console));
    let console = stop(restored);
    assert!(
        !console.contains(TEST_INIT_MARKER),
        "the restored guest did not boot again:\n{console}"
    );
    assert!(!socket_b.exists() && !ctl_b.exists(), "sockets left behind");
}

/// Reads two files in step and lists where they differ (offset, byte in `a`, byte in `b`), at
/// most 16 places.
fn differences(a: &Path, b: &Path) -> Vec<(u64, u8, u8)> {
    let (fa, fb) = (
        std::fs::File::open(a).unwrap(),
        std::fs::File::open(b).unwrap(),
    );
    let len = fa.metadata().unwrap().len();
    assert_eq!(len, fb.metadata().unwrap().len(), "the memory files' sizes");
    let (mut ba, mut bb) = (vec![0u8; 1 << 20], vec![0u8; 1 << 20]);
    let mut out = Vec::new();
    let mut at = 0;
    while at < len && out.len() < 16 {
        let n = (len - at).min(ba.len() as u64) as usize;
        fa.read_exact_at(&mut ba[..n], at).unwrap();
        fb.read_exact_at(&mut bb[..n], at).unwrap();
        out.extend(
            (0..n)
                .filter(|&i| ba[i] != bb[i])
                .take(16 - out.len())
                .map(|i| (at + i as u64, ba[i], bb[i])),
        );
        at += n as u64;
    }
    out
}

/// Runs husk-vmm on a restore that must be refused; returns what it printed.
fn refused(env: &e2e::E2eEnv, parent: &Path, name: &str, snap: &Path, memory_mib: u32) -> String {
    let d = vm_dir(parent, name);
    let guest = spec(env, 1, "husk.test=hold", memory_mib);
    let opts = VmmOptions {
        control_socket: Some(&d.join("ctl.sock")),
        restore: Some(snap),
        ..Default::default()
    };
    let mut vm = RunningVm::spawn(husk_vmm_with(&env.vmm, &guest, &d, &opts).unwrap()).unwrap();
    let code = vm.wait(Duration::from_secs(60));
    assert_eq!(code, Some(1), "{name}: husk-vmm must fail\n{}", vm.console);
    assert!(
        !d.join("ctl.sock").exists(),
        "{name}: a control socket was left"
    );
    std::mem::take(&mut vm.console)
}

/// A copy of snapshot `from` in `parent/name` whose state file is `state` (the memory file is
/// a hard link).
fn variant(parent: &Path, name: &str, from: &Path, state: &[u8]) -> PathBuf {
    let d = vm_dir(parent, name);
    std::fs::write(d.join("state"), state).unwrap();
    std::fs::hard_link(from.join("memory"), d.join("memory")).unwrap();
    d
}

/// A state file with `body` under a correct header.
fn with_header(original: &[u8], body: &[u8]) -> Vec<u8> {
    let mut out = original[..HEADER_LEN].to_vec();
    out[12..16].copy_from_slice(&crc32fast::hash(body).to_le_bytes());
    out[16..24].copy_from_slice(&(body.len() as u64).to_le_bytes());
    out.extend_from_slice(body);
    out
}

#[test]
#[ignore = "needs hardware KVM: run with `make e2e` (uses the nested test host where needed)"]
fn restored_memory_is_the_snapshots_and_bad_snapshots_are_refused_by_name() {
    let env = e2e::require();
    let dir = tempfile::tempdir().unwrap();
    let (snap_a, snap_b) = (vm_dir(dir.path(), "snap-a"), vm_dir(dir.path(), "snap-b"));
    let guest = spec(&env, 1, "husk.test=hold husk.test.tick=1", MEMORY_MIB);

    let a = vm_dir(dir.path(), "a");
    let ctl = a.join("ctl.sock");
    let opts = VmmOptions {
        control_socket: Some(&ctl),
        snapshot_dir: Some(&snap_a),
        ..Default::default()
    };
    let mut vm = RunningVm::spawn(husk_vmm_with(&env.vmm, &guest, &a, &opts).unwrap()).unwrap();
    vm.wait_for("husk-test-init: tick 2 ", BOOT_TIMEOUT)
        .unwrap_or_else(|| panic!("{}", vm.missing("tick 2")));
    pause(&mut vm, &ctl);
    snapshot(&vm, &ctl);
    stop(vm);
    let memory = std::fs::metadata(snap_a.join("memory")).unwrap();
    assert_eq!(
        memory.len(),
        u64::from(MEMORY_MIB) << 20,
        "the memory file covers RAM"
    );

    // Restored paused and snapshotted again before it runs: the same RAM, byte for byte.
    let b = vm_dir(dir.path(), "b");
    let ctl_b = b.join("ctl.sock");
    let opts = VmmOptions {
        control_socket: Some(&ctl_b),
        snapshot_dir: Some(&snap_b),
        restore: Some(&snap_a),
        start_paused: true,
        ..Default::default()
    };
    let vm = RunningVm::spawn(husk_vmm_with(&env.vmm, &guest, &b, &opts).unwrap()).unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while !ctl_b.exists() && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(control(&ctl_b, "ping\n").unwrap(), "ok paused");
    snapshot(&vm, &ctl_b);
    // Progress on stderr: the nested test host wedged around here in runs of 2026-12-05.
    eprintln!("vmm_snapshot: comparing the two memory files");
    let diff = differences(&snap_a.join("memory"), &snap_b.join("memory"));
    eprintln!("vmm_snapshot: compared; stopping the restored VM");
    assert!(
        diff.is_empty(),
        "restored RAM differs from the snapshot's at (offset, was, is): {diff:x?}"
    );
    // Not resumed: the snapshot read every page of the restored RAM, so each write the guest
    // made now would break a copy-on-write of a file page, a churn of the nested test host's
    // nested page tables under which its emulated SVM lost this guest twice in one CI run
    // (the fetch-fault loop, then the test host's own death). A restored VM resuming, and a
    // VM running on after a snapshot, are the other test's.
    stop(vm);

    // Refusals, each naming its cause.
    let state = std::fs::read(snap_a.join("state")).unwrap();
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        (
            "truncated",
            state[..state.len() - 100].to_vec(),
            "truncated snapshot",
        ),
        (
            "corrupt",
            {
                let mut s = state.clone();
                let i = s.len() / 2;
                s[i] ^= 0x20;
                s
            },
            "corrupt snapshot",
        ),
        (
            "other-build",
            {
                // The body opens with its writer's name, a postcard string: a varint length
                // (one byte below 128), then the bytes.
                let body = &state[HEADER_LEN..];
                let ours = format!("husk {}", env!("CARGO_PKG_VERSION"));
                let len = usize::from(body[0]);
                assert!(
                    len < 128 && &body[1..=len] == ours.as_bytes(),
                    "the state names its writer"
                );
                let other = b"husk 0.0.0-other";
                let mut forged = vec![other.len() as u8];
                forged.extend_from_slice(other);
                forged.extend_from_slice(&body[1 + len..]);
                with_header(&state, &forged)
            },
            "snapshot written by husk 0.0.0-other",
        ),
        (
            "not-a-snapshot",
            b"#!/bin/sh\n".to_vec(),
            "not a husk snapshot",
        ),
    ];
    for (name, bytes, words) in cases {
        let snap = variant(dir.path(), &format!("snap-{name}"), &snap_a, &bytes);
        let out = refused(&env, dir.path(), name, &snap, MEMORY_MIB);
        assert!(out.contains(words), "{name}: expected {words:?} in\n{out}");
    }
    let out = refused(&env, dir.path(), "bigger", &snap_a, MEMORY_MIB * 2);
    assert!(
        out.contains("does not fit the configuration"),
        "another memory size:\n{out}"
    );
    let short = vm_dir(dir.path(), "snap-short-memory");
    std::fs::copy(snap_a.join("state"), short.join("state")).unwrap();
    let file = std::fs::File::create(short.join("memory")).unwrap();
    file.set_len(u64::from(MEMORY_MIB) << 19).unwrap();
    let out = refused(&env, dir.path(), "short-memory", &short, MEMORY_MIB);
    assert!(
        out.contains("truncated snapshot"),
        "a short memory file:\n{out}"
    );
}

#[test]
fn ticks_are_read_from_console_lines() {
    let console =
        "x\n[ 1.0] husk-test-init: tick 4 uptime_ms=4001 irq\nhusk-test-init: tick 5 up\n";
    assert_eq!(last_tick(console), Some(5));
    assert_eq!(tick_of("husk-test-init: tick 12 uptime_ms=1"), Some(12));
    assert_eq!(last_tick("no ticks"), None);
}
