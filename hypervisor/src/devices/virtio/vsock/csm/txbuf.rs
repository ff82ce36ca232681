//! A bounded byte queue for data the guest sent that the host stream has not taken yet.
//!
//! Its capacity is the receive buffer the device advertises to the guest (`buf_alloc`), so a
//! guest that respects its credit can never overflow it; one that does not is caught before a
//! byte is queued ([`TxBuf::push`] refuses). Memory is taken as needed, not up front.

use std::collections::VecDeque;
use std::io::{self, Write};

/// The queue.
#[derive(Debug)]
pub struct TxBuf {
    data: VecDeque<u8>,
    cap: usize,
}

/// More bytes than the buffer has room for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("{len} bytes do not fit in the {free} bytes left of the connection buffer")]
pub struct TxBufFull {
    /// Bytes offered.
    pub len: usize,
    /// Room left.
    pub free: usize,
}

impl TxBuf {
    /// An empty queue that holds at most `cap` bytes.
    pub fn new(cap: usize) -> Self {
        TxBuf {
            data: VecDeque::new(),
            cap,
        }
    }

    /// Bytes queued.
    pub fn len(&self) -> usize {
        self.data.len()
    }

    /// Whether nothing is queued.
    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }

    /// Room left.
    pub fn free(&self) -> usize {
        self.cap - self.data.len()
    }

    /// Queues all of `bytes`, or nothing if they do not fit.
    pub fn push(&mut self, bytes: &[u8]) -> Result<(), TxBufFull> {
        if bytes.len() > self.free() {
            return Err(TxBufFull {
                len: bytes.len(),
                free: self.free(),
            });
        }
        self.data.extend(bytes);
        Ok(())
    }

    /// Writes as much as `sink` takes; returns the bytes written. `WouldBlock` is not an error
    /// (0 bytes); other errors are returned.
    pub fn flush_to(&mut self, sink: &mut impl Write) -> io::Result<usize> {
        let mut total = 0;
        while !self.data.is_empty() {
            let (front, _) = self.data.as_slices();
            match sink.write(front) {
                Ok(0) => break,
                Ok(n) => {
                    self.data.drain(..n);
                    total += n;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
        }
        if self.data.is_empty() {
            // Give the memory back once drained: idle connections cost nothing.
            self.data = VecDeque::new();
        }
        Ok(total)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Takes at most `room` bytes, then would block.
    struct Slow {
        room: usize,
        got: Vec<u8>,
    }

    impl Write for Slow {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            if self.room == 0 {
                return Err(io::ErrorKind::WouldBlock.into());
            }
            let n = buf.len().min(self.room);
            self.room -= n;
            self.got.extend_from_slice(&buf[..n]);
            Ok(n)
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn bounded_push_and_partial_flush() {
        let mut b = TxBuf::new(8);
        b.push(b"abcde").unwrap();
        assert_eq!(b.push(b"fghi"), Err(TxBufFull { len: 4, free: 3 }));
        assert_eq!(b.len(), 5, "a refused push queues nothing");
        let mut sink = Slow {
            room: 2,
            got: vec![],
        };
        assert_eq!(b.flush_to(&mut sink).unwrap(), 2);
        assert_eq!(b.free(), 5);
        b.push(b"fghi").unwrap();
        sink.room = 100;
        assert_eq!(b.flush_to(&mut sink).unwrap(), 7);
        assert_eq!(sink.got, b"abcdefghi");
        assert!(b.is_empty());
    }
}
