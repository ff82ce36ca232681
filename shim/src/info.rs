//! `containerd-shim-husk-v2 -info`: containerd 2.x asks each runtime for its `RuntimeInfo`
//! (name, version, the options it was given, and the OCI features it supports, in the JSON form
//! of runc's `features` command) before it uses the runtime, and shows it through the
//! introspection API (`ctr plugins inspect-runtime`). The options arrive on stdin as a
//! protobuf `Any` (empty when there are none) and are echoed back; the answer is one protobuf
//! message on stdout.
//!
//! The features are what the guest's agent does with a container's spec: hooks run inside the
//! guest, cgroups are v2 in the guest, seccomp is libseccomp's (every action but
//! `SCMP_ACT_NOTIFY`, which needs an agent on the host), and there is no AppArmor or SELinux
//! in the guest.

use std::io::{Read, Write};

use containerd_shim_protos::protobuf::well_known_types::any::Any;
use containerd_shim_protos::protobuf::{Message, MessageField};
use containerd_shim_protos::types::introspection::{RuntimeInfo, RuntimeVersion};

/// The name the shim reports.
pub const NAME: &str = "containerd-shim-husk-v2";

/// The type URL containerd expects for the features, a JSON document in `value`.
pub const FEATURES_TYPE_URL: &str =
    "types.containerd.io/opencontainers/runtime-spec/1/features/Features";

/// The most options bytes read from stdin (containerd sends a few hundred).
const MAX_OPTIONS: u64 = 1 << 20;

/// Errors answering `-info`.
#[derive(Debug, thiserror::Error)]
pub enum InfoError {
    /// stdin could not be read.
    #[error("reading the runtime options from stdin: {0}")]
    Stdin(std::io::Error),
    /// stdin held more than [`MAX_OPTIONS`] bytes.
    #[error("the runtime options on stdin are over {MAX_OPTIONS} bytes")]
    TooLarge,
    /// stdin was not a protobuf `Any`.
    #[error("the runtime options on stdin are not a protobuf Any: {0}")]
    Options(containerd_shim_protos::protobuf::Error),
    /// The answer could not be encoded or written.
    #[error("writing the runtime info to stdout: {0}")]
    Stdout(String),
}

/// The OCI runtime features of husk's guest, as runc's `features` command prints its own.
pub fn features() -> serde_json::Value {
    serde_json::json!({
        "ociVersionMin": "1.0.0",
        "ociVersionMax": "1.2.0",
        "hooks": ["prestart", "createRuntime", "createContainer", "startContainer",
                  "poststart", "poststop"],
        "linux": {
            "namespaces": ["cgroup", "ipc", "mount", "network", "pid", "uts"],
            "cgroup": {"v1": false, "v2": true, "systemd": false, "systemdUser": false},
            "seccomp": {
                "enabled": true,
                "actions": ["SCMP_ACT_ALLOW", "SCMP_ACT_ERRNO", "SCMP_ACT_KILL",
                            "SCMP_ACT_KILL_PROCESS", "SCMP_ACT_KILL_THREAD", "SCMP_ACT_LOG",
                            "SCMP_ACT_TRACE", "SCMP_ACT_TRAP"],
                "operators": ["SCMP_CMP_EQ", "SCMP_CMP_GE", "SCMP_CMP_GT", "SCMP_CMP_LE",
                              "SCMP_CMP_LT", "SCMP_CMP_MASKED_EQ", "SCMP_CMP_NE"],
                "archs": ["SCMP_ARCH_X86", "SCMP_ARCH_X86_64", "SCMP_ARCH_X32"]
            },
            "apparmor": {"enabled": false},
            "selinux": {"enabled": false}
        },
        "annotations": {
            "io.containerd.husk.version": husk_protocol::VERSION,
            "io.containerd.husk.isolation": "KVM micro-VM per pod"
        }
    })
}

/// The `RuntimeInfo` for `options`, the bytes containerd wrote on stdin.
pub fn runtime_info(options: &[u8]) -> Result<RuntimeInfo, InfoError> {
    let mut info = RuntimeInfo {
        name: NAME.into(),
        version: MessageField::some(RuntimeVersion {
            version: husk_protocol::VERSION.into(),
            revision: option_env!("HUSK_REVISION").unwrap_or_default().into(),
            ..Default::default()
        }),
        ..Default::default()
    };
    if !options.is_empty() {
        let any = Any::parse_from_bytes(options).map_err(InfoError::Options)?;
        info.options = MessageField::some(any);
    }
    info.features = MessageField::some(Any {
        type_url: FEATURES_TYPE_URL.into(),
        value: features().to_string().into_bytes(),
        ..Default::default()
    });
    Ok(info)
}

/// Reads the options from `input` and writes the encoded `RuntimeInfo` to `output`.
pub fn answer(input: impl Read, mut output: impl Write) -> Result<(), InfoError> {
    let mut options = Vec::new();
    input
        .take(MAX_OPTIONS + 1)
        .read_to_end(&mut options)
        .map_err(InfoError::Stdin)?;
    if options.len() as u64 > MAX_OPTIONS {
        return Err(InfoError::TooLarge);
    }
    let bytes = runtime_info(&options)?
        .write_to_bytes()
        .map_err(|e| InfoError::Stdout(e.to_string()))?;
    output
        .write_all(&bytes)
        .and_then(|()| output.flush())
        .map_err(|e| InfoError::Stdout(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode(bytes: &[u8]) -> RuntimeInfo {
        RuntimeInfo::parse_from_bytes(bytes).unwrap()
    }

    #[test]
    fn empty_stdin_gives_name_version_and_features() {
        let mut out = Vec::new();
        answer(&b""[..], &mut out).unwrap();
        let info = decode(&out);
        assert_eq!(info.name, NAME);
        assert_eq!(info.version.version, husk_protocol::VERSION);
        assert!(info.options.is_none());
        assert_eq!(info.features.type_url, FEATURES_TYPE_URL);
        let f: serde_json::Value = serde_json::from_slice(&info.features.value).unwrap();
        assert_eq!(f["linux"]["cgroup"]["v2"], true);
        assert_eq!(f["linux"]["seccomp"]["enabled"], true);
        let actions = f["linux"]["seccomp"]["actions"].as_array().unwrap();
        assert!(
            !actions.iter().any(|a| a == "SCMP_ACT_NOTIFY"),
            "{actions:?}"
        );
    }

    #[test]
    fn options_are_echoed() {
        let any = Any {
            type_url: "runtimeoptions.v1.Options".into(),
            value: vec![0x12, 0x03, b'/', b'c', b'f'],
            ..Default::default()
        };
        let mut out = Vec::new();
        answer(&any.write_to_bytes().unwrap()[..], &mut out).unwrap();
        let info = decode(&out);
        assert_eq!(info.options.type_url, "runtimeoptions.v1.Options");
        assert_eq!(info.options.value, any.value);
    }

    #[test]
    fn garbage_and_oversized_stdin_are_refused() {
        let e = answer(&[0xff, 0xff, 0xff][..], Vec::new()).unwrap_err();
        assert!(e.to_string().contains("not a protobuf Any"), "{e}");
        let big = vec![0u8; (MAX_OPTIONS + 1) as usize];
        assert!(matches!(
            answer(&big[..], Vec::new()),
            Err(InfoError::TooLarge)
        ));
    }
}
