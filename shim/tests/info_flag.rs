//! `containerd-shim-husk-v2 -info` as containerd 2.x runs it: the binary itself, with the
//! runtime options on stdin and the encoded RuntimeInfo read back from stdout, without the
//! environment (TTRPC_ADDRESS, NAMESPACE) the other modes need.

use std::io::Write;
use std::process::{Command, Stdio};

use containerd_shim_protos::protobuf::well_known_types::any::Any;
use containerd_shim_protos::protobuf::Message;
use containerd_shim_protos::types::introspection::RuntimeInfo;

fn run_info(stdin: &[u8]) -> std::process::Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_containerd-shim-husk-v2"))
        .arg("-info")
        .env_clear()
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(stdin).unwrap();
    child.wait_with_output().unwrap()
}

#[test]
fn info_answers_without_containerd_environment() {
    let options = Any {
        type_url: "runtimeoptions.v1.Options".into(),
        value: b"\x12\x13/etc/husk/cfg.toml".to_vec(),
        ..Default::default()
    };
    let out = run_info(&options.write_to_bytes().unwrap());
    assert!(
        out.status.success(),
        "exit {:?}, stderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let info = RuntimeInfo::parse_from_bytes(&out.stdout).unwrap();
    assert_eq!(info.name, "containerd-shim-husk-v2");
    assert_eq!(info.version.version, env!("CARGO_PKG_VERSION"));
    assert_eq!(info.options.value, options.value);
    let features: serde_json::Value = serde_json::from_slice(&info.features.value).unwrap();
    let namespaces = features["linux"]["namespaces"].as_array().unwrap();
    assert!(namespaces.iter().any(|n| n == "pid"), "{namespaces:?}");
}

#[test]
fn info_refuses_garbage_options_by_name() {
    let out = run_info(&[0xff, 0xfe, 0xfd]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("-info") && err.contains("protobuf Any"),
        "{err}"
    );
}
