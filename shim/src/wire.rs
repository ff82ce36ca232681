//! A bounded reader for protobuf's wire format, for the messages containerd hands the shim
//! whose types containerd-shim-protos does not have (CRI's runtime options and
//! `runtime.v1.PodSandboxConfig`). Fields are read by number; unknown fields are skipped, a
//! truncated or malformed message is an error naming what broke.

/// One field's value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Value<'a> {
    /// Wire type 0.
    Varint(u64),
    /// Wire type 2: a string, bytes, a nested message or a packed repeated field.
    Bytes(&'a [u8]),
    /// Wire types 1 and 5 (not used by the messages read here, only skipped).
    Fixed,
}

/// Why a message could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    /// The message ends inside a field.
    #[error("truncated field")]
    Truncated,
    /// A varint longer than 10 bytes.
    #[error("varint too long")]
    LongVarint,
    /// Wire types 3, 4 (groups), 6 and 7.
    #[error("unsupported wire type {0}")]
    WireType(u64),
    /// A string field that is not UTF-8.
    #[error("field {0} is not UTF-8")]
    NotUtf8(u64),
}

/// The fields of one message, in order: `(number, value)`.
pub fn fields(buf: &[u8]) -> impl Iterator<Item = Result<(u64, Value<'_>), WireError>> {
    let mut pos = 0usize;
    let mut failed = false;
    std::iter::from_fn(move || {
        if failed || pos >= buf.len() {
            return None;
        }
        let next = field(buf, &mut pos);
        failed = next.is_err();
        Some(next)
    })
}

fn field<'a>(buf: &'a [u8], pos: &mut usize) -> Result<(u64, Value<'a>), WireError> {
    let tag = varint(buf, pos)?;
    let value = match tag & 7 {
        0 => Value::Varint(varint(buf, pos)?),
        1 => skip(buf, pos, 8).map(|_| Value::Fixed)?,
        5 => skip(buf, pos, 4).map(|_| Value::Fixed)?,
        2 => {
            let len = usize::try_from(varint(buf, pos)?).map_err(|_| WireError::Truncated)?;
            Value::Bytes(skip(buf, pos, len)?)
        }
        w => return Err(WireError::WireType(w)),
    };
    Ok((tag >> 3, value))
}

fn skip<'a>(buf: &'a [u8], pos: &mut usize, len: usize) -> Result<&'a [u8], WireError> {
    let end = pos.checked_add(len).ok_or(WireError::Truncated)?;
    let bytes = buf.get(*pos..end).ok_or(WireError::Truncated)?;
    *pos = end;
    Ok(bytes)
}

fn varint(buf: &[u8], pos: &mut usize) -> Result<u64, WireError> {
    let mut value = 0u64;
    for shift in (0..70).step_by(7) {
        let byte = *buf.get(*pos).ok_or(WireError::Truncated)?;
        *pos += 1;
        value |= u64::from(byte & 0x7f).checked_shl(shift).unwrap_or(0);
        if byte & 0x80 == 0 {
            return Ok(value);
        }
    }
    Err(WireError::LongVarint)
}

/// A string field's value.
pub fn string(number: u64, bytes: &[u8]) -> Result<String, WireError> {
    String::from_utf8(bytes.to_vec()).map_err(|_| WireError::NotUtf8(number))
}

/// A `map<string, string>` entry (a message of key = 1, value = 2).
pub fn map_entry(number: u64, bytes: &[u8]) -> Result<(String, String), WireError> {
    let (mut key, mut value) = (String::new(), String::new());
    for f in fields(bytes) {
        match f? {
            (1, Value::Bytes(b)) => key = string(number, b)?,
            (2, Value::Bytes(b)) => value = string(number, b)?,
            _ => {}
        }
    }
    Ok((key, value))
}

#[cfg(test)]
pub(crate) mod encode {
    //! Writers for tests.

    /// A varint.
    pub fn varint(mut v: u64, out: &mut Vec<u8>) {
        while v >= 0x80 {
            out.push((v as u8) | 0x80);
            v >>= 7;
        }
        out.push(v as u8);
    }

    /// A length-delimited field.
    pub fn bytes(n: u64, b: &[u8], out: &mut Vec<u8>) {
        varint((n << 3) | 2, out);
        varint(b.len() as u64, out);
        out.extend_from_slice(b);
    }

    /// A varint field.
    pub fn uint(n: u64, v: u64, out: &mut Vec<u8>) {
        varint(n << 3, out);
        varint(v, out);
    }

    /// A map<string, string> entry field.
    pub fn entry(n: u64, k: &str, v: &str, out: &mut Vec<u8>) {
        let mut e = Vec::new();
        bytes(1, k.as_bytes(), &mut e);
        bytes(2, v.as_bytes(), &mut e);
        bytes(n, &e, out);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_are_read_and_unknown_ones_skipped() {
        let mut m = Vec::new();
        encode::uint(1, 300, &mut m);
        m.extend_from_slice(&[(3 << 3) | 5, 1, 2, 3, 4]);
        encode::bytes(2, b"abc", &mut m);
        let got: Vec<_> = fields(&m).collect::<Result<_, _>>().unwrap();
        assert_eq!(
            got,
            vec![
                (1, Value::Varint(300)),
                (3, Value::Fixed),
                (2, Value::Bytes(b"abc"))
            ]
        );
    }

    #[test]
    fn malformed_messages_end_in_an_error() {
        for (bad, want) in [
            (vec![0x12, 50, b'a'], WireError::Truncated),
            (vec![0x08], WireError::Truncated),
            (vec![0x0b], WireError::WireType(3)),
            (
                vec![0x08; 1].into_iter().chain([0xff; 11]).collect(),
                WireError::LongVarint,
            ),
            (
                vec![
                    0x12, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01,
                ],
                WireError::Truncated,
            ),
        ] {
            let last = fields(&bad).last().unwrap();
            assert_eq!(last, Err(want), "{bad:?}");
        }
    }
}
