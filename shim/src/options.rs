//! The runtime options containerd attaches to a task (`CreateTaskRequest.options`).
//!
//! For a runtime other than runc, CRI (`[...runtimes.husk.options] ConfigPath = ...`) and
//! `ctr run --runtime-config-path` send `runtimeoptions.v1.Options { type_url = 1, config_path = 2 }`.
//! containerd-shim-protos has no type for it, so the two string fields are decoded here (a
//! protobuf message of two strings, read with [`crate::wire`]). Any other options
//! type (runc's `containerd.runc.v1.Options`) is ignored.

use std::path::PathBuf;

use containerd_shim_protos::protobuf::well_known_types::any::Any;

use crate::error::ShimError;
use crate::wire;

/// The type URL suffix of CRI's runtime options.
const RUNTIME_OPTIONS: &str = "runtimeoptions.v1.Options";

/// The husk config file named by the options, if any.
pub fn config_path(options: Option<&Any>) -> Result<Option<PathBuf>, ShimError> {
    let Some(any) = options else {
        return Ok(None);
    };
    if !any.type_url.ends_with(RUNTIME_OPTIONS) {
        return Ok(None);
    }
    let path = decode_string_field(&any.value, 2).map_err(|why| {
        ShimError::InvalidArgument(format!("runtime options ({}): {why}", any.type_url))
    })?;
    Ok(path.filter(|p| !p.is_empty()).map(PathBuf::from))
}

/// The last value of string field `field` in a protobuf message.
fn decode_string_field(buf: &[u8], field: u64) -> Result<Option<String>, String> {
    let mut found = None;
    for f in wire::fields(buf) {
        if let (n, wire::Value::Bytes(b)) = f.map_err(|e| e.to_string())? {
            if n == field {
                found = Some(wire::string(n, b).map_err(|e| e.to_string())?);
            }
        }
    }
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn field(n: u8, s: &str) -> Vec<u8> {
        let mut v = vec![(n << 3) | 2, s.len() as u8];
        v.extend_from_slice(s.as_bytes());
        v
    }

    #[test]
    fn config_path_is_read_from_runtime_options() {
        let mut value = field(1, "io.containerd.husk.v2");
        value.extend(field(2, "/etc/husk/test.toml"));
        let any = Any {
            type_url: "runtimeoptions.v1.Options".into(),
            value,
            ..Default::default()
        };
        assert_eq!(
            config_path(Some(&any)).unwrap(),
            Some(PathBuf::from("/etc/husk/test.toml"))
        );
    }

    #[test]
    fn other_options_and_empty_paths_are_ignored() {
        assert_eq!(config_path(None).unwrap(), None);
        let runc = Any {
            type_url: "containerd.runc.v1.Options".into(),
            value: vec![8, 1],
            ..Default::default()
        };
        assert_eq!(config_path(Some(&runc)).unwrap(), None);
        let empty = Any {
            type_url: "runtimeoptions.v1.Options".into(),
            value: field(1, "x"),
            ..Default::default()
        };
        assert_eq!(config_path(Some(&empty)).unwrap(), None);
    }

    #[test]
    fn garbage_is_an_invalid_argument() {
        let bad = Any {
            type_url: "runtimeoptions.v1.Options".into(),
            value: vec![0x12, 50, b'a'],
            ..Default::default()
        };
        assert!(matches!(
            config_path(Some(&bad)),
            Err(ShimError::InvalidArgument(_))
        ));
    }
}
