//! The runtime options containerd attaches to a task (`CreateTaskRequest.options`).
//!
//! For a runtime other than runc, CRI (`[...runtimes.husk.options] ConfigPath = ...`) and
//! `ctr run --runtime-config-path` send `runtimeoptions.v1.Options { type_url = 1, config_path = 2 }`.
//! containerd-shim-protos has no type for it, so the two string fields are decoded here (a
//! protobuf message of two strings: tag varints and length-delimited values). Any other options
//! type (runc's `containerd.runc.v1.Options`) is ignored.

use std::path::PathBuf;

use containerd_shim_protos::protobuf::well_known_types::any::Any;

use crate::error::ShimError;

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

fn read_varint(buf: &[u8], pos: &mut usize) -> Result<u64, String> {
    let mut value = 0u64;
    for shift in (0..64).step_by(7) {
        let byte = *buf.get(*pos).ok_or("truncated varint")?;
        *pos += 1;
        value |= u64::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            return Ok(value);
        }
    }
    Err("varint too long".into())
}

/// The last value of string field `field` in a protobuf message.
fn decode_string_field(buf: &[u8], field: u64) -> Result<Option<String>, String> {
    let mut pos = 0;
    let mut found = None;
    while pos < buf.len() {
        let tag = read_varint(buf, &mut pos)?;
        match tag & 7 {
            0 => {
                read_varint(buf, &mut pos)?;
            }
            1 => pos += 8,
            5 => pos += 4,
            2 => {
                let len =
                    usize::try_from(read_varint(buf, &mut pos)?).map_err(|_| "length too large")?;
                let end = pos.checked_add(len).ok_or("length too large")?;
                let bytes = buf.get(pos..end).ok_or("truncated field")?;
                if tag >> 3 == field {
                    found =
                        Some(String::from_utf8(bytes.to_vec()).map_err(|_| "field is not UTF-8")?);
                }
                pos = end;
            }
            w => return Err(format!("unsupported wire type {w}")),
        }
    }
    if pos > buf.len() {
        return Err("truncated field".into());
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
