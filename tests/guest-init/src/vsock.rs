//! vsock modes of the test init, driven by the kernel command line:
//!
//! - `husk.vsock.serve=PORT` listens on vsock port PORT (bound before the marker line, so the
//!   host can connect as soon as it sees the marker) and serves each connection on a thread.
//!   The first line names what to do:
//!   - `echo` — send every byte back until end-of-file;
//!   - `sink N` — read N bytes, answer `ok N <fnv1a64 hex>`;
//!   - `source N` — write N bytes of the test pattern ([`pattern_byte`]), then close.
//! - `husk.vsock.connect=P[,P...]` connects to the host (CID 2) on each port after the marker,
//!   sends `hello P`, reads one line back and prints
//!   `HUSK-TEST-INIT vsock-connect port=P ok reply=<line>` or `... port=P error=<why>`.

use std::fs::File;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::os::fd::FromRawFd;

/// The host's context id.
const HOST_CID: u32 = 2;

/// Byte `i` of the `source` pattern (the host checks it).
pub fn pattern_byte(i: u64) -> u8 {
    (i.wrapping_mul(31) ^ (i >> 8)) as u8
}

/// FNV-1a, 64 bit: the checksum `sink` reports.
#[derive(Debug, Clone, Copy)]
pub struct Fnv(pub u64);

impl Default for Fnv {
    fn default() -> Self {
        Fnv(0xcbf2_9ce4_8422_2325)
    }
}

impl Fnv {
    /// Adds `bytes`.
    pub fn update(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = (self.0 ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3);
        }
    }
}

fn vsock_socket() -> io::Result<File> {
    // SAFETY: socket(2) with constant arguments; returns a new descriptor or -1.
    let fd = unsafe { libc::socket(libc::AF_VSOCK, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` is a new descriptor owned by nobody else.
    Ok(unsafe { File::from_raw_fd(fd) })
}

fn addr(cid: u32, port: u32) -> libc::sockaddr_vm {
    // SAFETY: sockaddr_vm is plain data; zero is valid.
    let mut a: libc::sockaddr_vm = unsafe { std::mem::zeroed() };
    a.svm_family = libc::AF_VSOCK as libc::sa_family_t;
    a.svm_port = port;
    a.svm_cid = cid;
    a
}

const ADDR_LEN: libc::socklen_t = std::mem::size_of::<libc::sockaddr_vm>() as libc::socklen_t;

/// A listening vsock socket on `port`.
pub fn listen(port: u32) -> io::Result<File> {
    use std::os::fd::AsRawFd;
    let sock = vsock_socket()?;
    let a = addr(libc::VMADDR_CID_ANY, port);
    // SAFETY: `a` is a valid sockaddr_vm of ADDR_LEN bytes; the descriptor is live.
    if unsafe {
        libc::bind(
            sock.as_raw_fd(),
            (&a as *const libc::sockaddr_vm).cast(),
            ADDR_LEN,
        )
    } != 0
    {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: listen(2) on a bound socket we own.
    if unsafe { libc::listen(sock.as_raw_fd(), 64) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(sock)
}

/// Accepts connections on `listener` forever, one thread each.
pub fn serve(listener: File) {
    use std::os::fd::AsRawFd;
    loop {
        // SAFETY: accept(2) on our listening socket; null address pointers are allowed.
        let fd = unsafe {
            libc::accept4(
                listener.as_raw_fd(),
                std::ptr::null_mut(),
                std::ptr::null_mut(),
                libc::SOCK_CLOEXEC,
            )
        };
        if fd < 0 {
            continue;
        }
        // SAFETY: accept4 returned a new descriptor owned by nobody else.
        let conn = unsafe { File::from_raw_fd(fd) };
        std::thread::spawn(move || {
            if let Err(e) = handle(conn) {
                eprintln!("husk-test-init: vsock connection: {e}");
            }
        });
    }
}

/// `write_all` to a vsock stream that takes ENOMEM for what it is: the guest kernel could not
/// allocate one contiguous packet buffer (up to 64 KiB and a header) in fragmented memory, not
/// the peer going away. Smaller pieces (down to a page) then, and a short wait if even those
/// do not fit.
fn write_all_to_stream(w: &mut File, mut data: &[u8]) -> io::Result<()> {
    let mut piece = data.len().max(1);
    let mut waits = 0;
    while !data.is_empty() {
        match w.write(&data[..piece.min(data.len())]) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => data = &data[n..],
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) if e.kind() == io::ErrorKind::OutOfMemory && waits < 500 => {
                if piece > 4096 {
                    piece = (piece / 2).max(4096);
                } else {
                    waits += 1;
                    std::thread::sleep(std::time::Duration::from_millis(10));
                }
            }
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

fn handle(conn: File) -> io::Result<()> {
    let mut reader = BufReader::with_capacity(64 * 1024, conn.try_clone()?);
    let mut writer = conn;
    let mut line = String::new();
    reader.read_line(&mut line)?;
    let mut words = line.split_whitespace();
    let (cmd, n) = (
        words.next().unwrap_or(""),
        words.next().and_then(|w| w.parse::<u64>().ok()),
    );
    match (cmd, n) {
        ("echo", _) => {
            let mut buf = vec![0u8; 64 * 1024];
            loop {
                let got = reader.read(&mut buf)?;
                if got == 0 {
                    return Ok(());
                }
                write_all_to_stream(&mut writer, &buf[..got])?;
            }
        }
        ("sink", Some(n)) => {
            let mut fnv = Fnv::default();
            let mut left = n;
            let mut buf = vec![0u8; 64 * 1024];
            while left > 0 {
                let want = buf.len().min(left as usize);
                let got = reader.read(&mut buf[..want])?;
                if got == 0 {
                    return Err(io::ErrorKind::UnexpectedEof.into());
                }
                fnv.update(&buf[..got]);
                left -= got as u64;
            }
            writeln!(writer, "ok {n} {:016x}", fnv.0)
        }
        ("source", Some(n)) => {
            let mut buf = vec![0u8; 64 * 1024];
            let mut at = 0u64;
            while at < n {
                let len = buf.len().min((n - at) as usize);
                for (i, b) in buf[..len].iter_mut().enumerate() {
                    *b = pattern_byte(at + i as u64);
                }
                write_all_to_stream(&mut writer, &buf[..len])?;
                at += len as u64;
            }
            Ok(())
        }
        _ => writeln!(writer, "error unknown command {:?}", line.trim()),
    }
}

/// A stream connected to the host (CID 2) on `port`.
pub fn connect_host(port: u32) -> io::Result<File> {
    use std::os::fd::AsRawFd;
    let sock = vsock_socket()?;
    let a = addr(HOST_CID, port);
    // SAFETY: `a` is a valid sockaddr_vm of ADDR_LEN bytes; the descriptor is live.
    if unsafe {
        libc::connect(
            sock.as_raw_fd(),
            (&a as *const libc::sockaddr_vm).cast(),
            ADDR_LEN,
        )
    } != 0
    {
        return Err(io::Error::last_os_error());
    }
    Ok(sock)
}

/// Connects to the host on `port`, says hello and returns the host's one-line answer.
pub fn hello(port: u32) -> io::Result<String> {
    let sock = connect_host(port)?;
    let mut w = sock.try_clone()?;
    writeln!(w, "hello {port}")?;
    let mut line = String::new();
    BufReader::new(sock).read_line(&mut line)?;
    Ok(line.trim().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fnv_matches_the_reference_vectors() {
        let mut f = Fnv::default();
        f.update(b"");
        assert_eq!(f.0, 0xcbf2_9ce4_8422_2325);
        f.update(b"a");
        assert_eq!(f.0, 0xaf63_dc4c_8601_ec8c);
    }
}
