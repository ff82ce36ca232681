//! The `state` file: a fixed header, then the snapshot in postcard's binary encoding.
//!
//! ```text
//! offset  size  field
//! 0       8     magic "HUSKSNAP"
//! 8       4     format version, little-endian
//! 12      4     CRC-32 (IEEE) of the body, little-endian
//! 16      8     body length in bytes, little-endian
//! 24      n     body: the writer's husk version (a postcard string), then the snapshot
//! ```
//!
//! Reading checks, in this order, that the file is a snapshot at all, that its format is this
//! binary's, that it is as long as its header says (a truncated copy), that its checksum holds
//! (a corrupt one), and that the husk that wrote it is this one: each failure names itself.
//! The body is parsed only after its checksum held, and its length is bounded before anything
//! is allocated for it. The encoding is not self-describing, so the writer's version is read
//! on its own before the snapshot: another husk's layout is refused by name, never misparsed.
//!
//! Format 1 was JSON, which writes the byte arrays (XSAVE areas, LAPIC pages) as arrays of
//! numbers: parsing them was most of the snapshot reader's ~25 ms a restore in the nested
//! test host, and the restore waited 10-20 ms for it; with postcard that wait is 1-2 ms.

use std::io::{Read, Write};

use serde::{de::DeserializeOwned, Serialize};

/// The first bytes of every snapshot state file.
pub const MAGIC: &[u8; 8] = b"HUSKSNAP";
/// The layout of the header and body this binary writes and reads.
pub const FORMAT_VERSION: u32 = 2;
/// The header's size.
pub const HEADER_LEN: usize = 24;
/// The largest body read: vCPU state is a few tens of KiB per vCPU; anything bigger is not
/// a snapshot this binary wrote.
pub const MAX_BODY: u64 = 64 << 20;

/// The husk that wrote (or reads) a snapshot.
pub fn husk_version() -> String {
    format!("husk {}", env!("CARGO_PKG_VERSION"))
}

/// Why a state file was refused.
#[derive(Debug, thiserror::Error)]
pub enum FormatError {
    /// Reading or writing the file.
    #[error("{0}")]
    Io(#[from] std::io::Error),
    /// The magic is missing.
    #[error("not a husk snapshot (no HUSKSNAP header)")]
    NotASnapshot,
    /// Another format version.
    #[error("snapshot format {found}, this husk-vmm reads format {FORMAT_VERSION}")]
    FormatVersion {
        /// The file's version.
        found: u32,
    },
    /// Shorter (or longer) than its header says.
    #[error(
        "truncated snapshot: the header promises {expected} bytes of state, the file has {found}"
    )]
    Truncated {
        /// Body bytes the header names.
        expected: u64,
        /// Body bytes present.
        found: u64,
    },
    /// The checksum does not match.
    #[error("corrupt snapshot: state checksum {found:#010x}, the header says {expected:#010x}")]
    Checksum {
        /// The header's CRC.
        expected: u32,
        /// The body's CRC.
        found: u32,
    },
    /// Written by another husk.
    #[error(
        "snapshot written by {found}, this is {ours}: restore it with the husk-vmm that wrote it"
    )]
    Build {
        /// The writer.
        found: String,
        /// This binary.
        ours: String,
    },
    /// The body is not the expected structure.
    #[error("snapshot state does not parse: {0}")]
    Parse(#[from] postcard::Error),
    /// The body goes on after the snapshot.
    #[error("snapshot state has {0} bytes after its end")]
    Trailing(usize),
}

/// Writes `snapshot` with its header to `out`.
pub fn write<T: Serialize>(out: &mut impl Write, snapshot: &T) -> Result<(), FormatError> {
    let body = postcard::to_extend(snapshot, postcard::to_allocvec(&husk_version())?)?;
    let mut header = Vec::with_capacity(HEADER_LEN);
    header.extend_from_slice(MAGIC);
    header.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
    header.extend_from_slice(&crc32fast::hash(&body).to_le_bytes());
    header.extend_from_slice(&(body.len() as u64).to_le_bytes());
    out.write_all(&header)?;
    out.write_all(&body)?;
    Ok(())
}

fn le_u32(b: &[u8]) -> u32 {
    u32::from_le_bytes([b[0], b[1], b[2], b[3]])
}

/// Reads and checks a state file from `input`.
pub fn read<T: DeserializeOwned>(input: &mut impl Read) -> Result<T, FormatError> {
    let mut header = [0u8; HEADER_LEN];
    let mut got = 0;
    while got < HEADER_LEN {
        match input.read(&mut header[got..])? {
            0 => break,
            n => got += n,
        }
    }
    if got < MAGIC.len() || &header[..8] != MAGIC {
        return Err(FormatError::NotASnapshot);
    }
    if got < HEADER_LEN {
        return Err(FormatError::Truncated {
            expected: 0,
            found: 0,
        });
    }
    let version = le_u32(&header[8..12]);
    if version != FORMAT_VERSION {
        return Err(FormatError::FormatVersion { found: version });
    }
    let crc = le_u32(&header[12..16]);
    let mut len = [0u8; 8];
    len.copy_from_slice(&header[16..24]);
    let expected = u64::from_le_bytes(len);
    // Read at most one byte past the promised length: enough to tell "longer" from "exact".
    let mut body = Vec::new();
    input
        .take(expected.min(MAX_BODY) + 1)
        .read_to_end(&mut body)?;
    if body.len() as u64 != expected {
        return Err(FormatError::Truncated {
            expected,
            found: body.len() as u64,
        });
    }
    let found = crc32fast::hash(&body);
    if found != crc {
        return Err(FormatError::Checksum {
            expected: crc,
            found,
        });
    }
    let (writer, rest) = postcard::take_from_bytes::<String>(&body)?;
    if writer != husk_version() {
        return Err(FormatError::Build {
            found: writer,
            ours: husk_version(),
        });
    }
    let (snapshot, rest) = postcard::take_from_bytes::<T>(rest)?;
    if !rest.is_empty() {
        return Err(FormatError::Trailing(rest.len()));
    }
    Ok(snapshot)
}

#[cfg(test)]
mod tests {
    use serde::Deserialize;

    use super::*;

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct Thing {
        n: u32,
        s: String,
    }

    fn written() -> Vec<u8> {
        let mut out = Vec::new();
        let thing = Thing {
            n: 7,
            s: "x".into(),
        };
        write(&mut out, &thing).unwrap();
        out
    }

    fn read_back(bytes: &[u8]) -> Result<Thing, FormatError> {
        read(&mut &bytes[..])
    }

    #[test]
    fn round_trips() {
        let thing = read_back(&written()).unwrap();
        assert_eq!(
            thing,
            Thing {
                n: 7,
                s: "x".into()
            }
        );
    }

    #[test]
    fn truncated_corrupt_foreign_and_future_files_are_refused_by_name() {
        let good = written();
        let e = read_back(&good[..good.len() - 3]).unwrap_err();
        assert!(e.to_string().starts_with("truncated snapshot"), "{e}");
        let e = read_back(&good[..10]).unwrap_err();
        assert!(e.to_string().starts_with("truncated snapshot"), "{e}");
        let mut longer = good.clone();
        longer.push(b' ');
        assert!(matches!(
            read_back(&longer),
            Err(FormatError::Truncated { .. })
        ));

        let mut corrupt = good.clone();
        let last = corrupt.len() - 2;
        corrupt[last] ^= 1;
        let e = read_back(&corrupt).unwrap_err();
        assert!(e.to_string().starts_with("corrupt snapshot"), "{e}");

        let e = read_back(b"#!/bin/sh\necho hello\n............").unwrap_err();
        assert!(matches!(e, FormatError::NotASnapshot), "{e}");

        let mut future = good.clone();
        future[8..12].copy_from_slice(&(FORMAT_VERSION + 1).to_le_bytes());
        let e = read_back(&future).unwrap_err();
        let want = format!("snapshot format {}", FORMAT_VERSION + 1);
        assert!(e.to_string().contains(&want), "{e}");
    }

    /// A file with a valid header around `body`.
    fn wrapped(body: &[u8]) -> Vec<u8> {
        let mut file = Vec::new();
        file.extend_from_slice(MAGIC);
        file.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
        file.extend_from_slice(&crc32fast::hash(body).to_le_bytes());
        file.extend_from_slice(&(body.len() as u64).to_le_bytes());
        file.extend_from_slice(body);
        file
    }

    #[test]
    fn another_husk_build_is_refused_with_both_names_before_its_layout_is_parsed() {
        // Another husk's snapshot need not parse as this one's: the version alone decides.
        let mut body = postcard::to_allocvec("husk 0.0.0-other").unwrap();
        body.extend_from_slice(&[0xff; 5]);
        let e = read_back(&wrapped(&body)).unwrap_err().to_string();
        assert!(
            e.contains("husk 0.0.0-other") && e.contains(&husk_version()),
            "{e}"
        );
    }

    #[test]
    fn a_body_that_does_not_parse_or_runs_on_is_refused() {
        let mut body = postcard::to_allocvec(&husk_version()).unwrap();
        body.push(7); // n
        let e = read_back(&wrapped(&body)).unwrap_err();
        assert!(matches!(e, FormatError::Parse(_)), "{e}");
        body.extend_from_slice(&[1, b'x', 0]);
        let e = read_back(&wrapped(&body)).unwrap_err();
        assert!(matches!(e, FormatError::Trailing(1)), "{e}");
    }

    #[test]
    fn a_huge_promised_length_allocates_nothing_and_is_refused() {
        let mut file = written()[..HEADER_LEN].to_vec();
        file[16..24].copy_from_slice(&u64::MAX.to_le_bytes());
        file.extend_from_slice(b"{}");
        assert!(matches!(
            read_back(&file),
            Err(FormatError::Truncated { .. })
        ));
    }
}
