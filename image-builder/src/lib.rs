//! Builds the initramfs a husk guest boots from.
//!
//! An image is a tree of entries (directories, files, symlinks, device nodes) written as a newc
//! cpio archive, optionally gzip-compressed. Every timestamp, owner and inode number is fixed, and
//! entries are written in path order, so the same inputs always give the same bytes.

pub mod cpio;
pub mod elf;
pub mod rootfs;
pub mod tree;

pub use tree::{Compression, Entry, ImageError, ImageTree};
