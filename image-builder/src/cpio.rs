//! A writer for the "new ASCII" (newc, magic `070701`) cpio format the Linux initramfs unpacker reads.

use std::io::{self, Write};

/// File type bits of `st_mode`.
pub mod mode {
    /// Directory.
    pub const DIR: u32 = 0o040000;
    /// Regular file.
    pub const FILE: u32 = 0o100000;
    /// Symbolic link.
    pub const SYMLINK: u32 = 0o120000;
    /// Character device.
    pub const CHAR_DEV: u32 = 0o020000;
}

const MAGIC: &[u8] = b"070701";
const TRAILER: &str = "TRAILER!!!";

/// One archive member's metadata. Owner and mtime are always 0 for reproducibility.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// Inode number (unique per member).
    pub ino: u32,
    /// Type and permission bits.
    pub mode: u32,
    /// Number of links (2 for directories, 1 otherwise).
    pub nlink: u32,
    /// Size of the data that follows.
    pub size: u32,
    /// Device numbers for device nodes.
    pub rdev_major: u32,
    /// Device numbers for device nodes.
    pub rdev_minor: u32,
}

/// Writes newc members to an underlying writer, tracking the offset for padding.
#[derive(Debug)]
pub struct CpioWriter<W: Write> {
    out: W,
    offset: u64,
    next_ino: u32,
}

impl<W: Write> CpioWriter<W> {
    /// Starts an archive.
    pub fn new(out: W) -> Self {
        CpioWriter {
            out,
            offset: 0,
            next_ino: 1,
        }
    }

    /// Allocates the next inode number.
    pub fn next_ino(&mut self) -> u32 {
        let ino = self.next_ino;
        self.next_ino += 1;
        ino
    }

    /// Writes one member: header, NUL-terminated name and data, each padded to 4 bytes.
    pub fn write_member(&mut self, name: &str, header: Header, data: &[u8]) -> io::Result<()> {
        if data.len() as u64 != u64::from(header.size) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "cpio: size does not match data",
            ));
        }
        let name_size = u32::try_from(name.len() + 1)
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "cpio: name too long"))?;
        let fields = [
            header.ino,
            header.mode,
            0, // uid
            0, // gid
            header.nlink,
            0, // mtime
            header.size,
            0, // dev major
            0, // dev minor
            header.rdev_major,
            header.rdev_minor,
            name_size,
            0, // check
        ];
        self.put(MAGIC)?;
        for field in fields {
            self.put(format!("{field:08x}").as_bytes())?;
        }
        self.put(name.as_bytes())?;
        self.put(&[0])?;
        self.pad()?;
        self.put(data)?;
        self.pad()
    }

    /// Writes the trailer and returns the underlying writer.
    pub fn finish(mut self) -> io::Result<W> {
        let header = Header {
            ino: 0,
            mode: 0,
            nlink: 1,
            size: 0,
            rdev_major: 0,
            rdev_minor: 0,
        };
        self.write_member(TRAILER, header, &[])?;
        self.out.flush()?;
        Ok(self.out)
    }

    fn put(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.out.write_all(bytes)?;
        self.offset += bytes.len() as u64;
        Ok(())
    }

    fn pad(&mut self) -> io::Result<()> {
        let rem = (4 - (self.offset % 4) as usize) % 4;
        self.put(&[0u8; 3][..rem])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn member_layout_is_newc() {
        let mut w = CpioWriter::new(Vec::new());
        let h = Header {
            ino: 1,
            mode: mode::FILE | 0o755,
            nlink: 1,
            size: 3,
            rdev_major: 0,
            rdev_minor: 0,
        };
        w.write_member("init", h, b"abc").unwrap();
        let bytes = w.finish().unwrap();
        // 110-byte header + "init\0" = 115, padded to 116; data 3 padded to 4.
        assert_eq!(&bytes[..6], b"070701");
        assert_eq!(&bytes[6..14], b"00000001");
        assert_eq!(&bytes[14..22], b"000081ed");
        assert_eq!(&bytes[110..115], b"init\0");
        assert_eq!(&bytes[116..119], b"abc");
        assert_eq!(&bytes[120..126], b"070701");
        assert!(bytes.windows(10).any(|w| w == b"TRAILER!!!"));
        assert_eq!(bytes.len() % 4, 0);
    }

    #[test]
    fn size_mismatch_is_rejected() {
        let mut w = CpioWriter::new(Vec::new());
        let h = Header {
            ino: 1,
            mode: mode::FILE,
            nlink: 1,
            size: 9,
            rdev_major: 0,
            rdev_minor: 0,
        };
        assert!(w.write_member("x", h, b"abc").is_err());
    }
}
