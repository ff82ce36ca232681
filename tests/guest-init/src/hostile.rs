//! `husk-test-init hostile <what> ...`: what a hostile container does to its host, for the
//! hostile-guest suite (tests/tests/hostile_guest.rs). Runs as an ordinary program in a
//! container (the suite puts this binary into its image as `/usr/bin/husk-hostile`).
//!
//! - `vsock-flood <port> <connections> <bytes>`: opens `connections` streams to the host
//!   (CID 2) on `port`, one after the other, and writes `bytes` bytes without a newline on each
//!   one that connects. Prints `vsock-flood connected=<n> refused=<m> written=<bytes>`.

use std::io::Write;

use crate::vsock;

/// Runs `args` (the words after `hostile`); returns the exit code.
pub fn main(args: &[String]) -> i32 {
    let words: Vec<&str> = args.iter().map(String::as_str).collect();
    match words.as_slice() {
        ["vsock-flood", port, conns, bytes] => match (port.parse(), conns.parse(), bytes.parse()) {
            (Ok(p), Ok(c), Ok(b)) => vsock_flood(p, c, b),
            _ => usage(),
        },
        _ => usage(),
    }
}

fn usage() -> i32 {
    eprintln!("usage: husk-hostile vsock-flood <port> <connections> <bytes>");
    2
}

fn vsock_flood(port: u32, connections: u32, bytes: u64) -> i32 {
    let chunk = vec![b'x'; 64 * 1024];
    let (mut connected, mut refused, mut written) = (0u32, 0u32, 0u64);
    for _ in 0..connections {
        let Ok(mut s) = vsock::connect_host(port) else {
            refused += 1;
            continue;
        };
        connected += 1;
        let mut left = bytes;
        while left > 0 {
            let n = left.min(chunk.len() as u64) as usize;
            match s.write(&chunk[..n]) {
                Ok(0) | Err(_) => break,
                Ok(k) => {
                    left -= k as u64;
                    written += k as u64;
                }
            }
        }
    }
    println!("vsock-flood connected={connected} refused={refused} written={written}");
    0
}
