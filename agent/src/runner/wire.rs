//! One message, with file descriptors, over a `SOCK_SEQPACKET` socket (message boundaries kept,
//! so no framing is needed).

use std::io::{IoSlice, IoSliceMut};
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};

use nix::sys::socket::{
    recvmsg, sendmsg, socketpair, AddressFamily, ControlMessage, ControlMessageOwned, MsgFlags,
    SockFlag, SockType,
};

/// Largest message (requests carry paths, not specs).
pub const MAX_MESSAGE: usize = 64 * 1024;
/// Most fds one message carries.
pub const MAX_FDS: usize = 4;

/// A connected pair of close-on-exec seqpacket sockets.
pub fn pair() -> std::io::Result<(OwnedFd, OwnedFd)> {
    socketpair(
        AddressFamily::Unix,
        SockType::SeqPacket,
        None,
        SockFlag::SOCK_CLOEXEC,
    )
    .map_err(std::io::Error::from)
}

/// Sends `data` with `fds` attached.
pub fn send(sock: BorrowedFd<'_>, data: &[u8], fds: &[BorrowedFd<'_>]) -> std::io::Result<()> {
    if data.len() > MAX_MESSAGE || fds.len() > MAX_FDS {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "runner message too large",
        ));
    }
    let raw: Vec<RawFd> = fds.iter().map(|f| f.as_raw_fd()).collect();
    let iov = [IoSlice::new(data)];
    let cmsg = [ControlMessage::ScmRights(&raw)];
    let cmsgs: &[ControlMessage<'_>] = if raw.is_empty() { &[] } else { &cmsg };
    loop {
        match sendmsg::<()>(sock.as_raw_fd(), &iov, cmsgs, MsgFlags::empty(), None) {
            Ok(_) => return Ok(()),
            Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => return Err(e.into()),
        }
    }
}

/// Receives one message and the fds attached to it (close-on-exec). An empty message with no
/// fds means the peer closed the socket.
pub fn recv(sock: BorrowedFd<'_>) -> std::io::Result<(Vec<u8>, Vec<OwnedFd>)> {
    let mut buf = vec![0u8; MAX_MESSAGE];
    let mut space = nix::cmsg_space!([RawFd; MAX_FDS]);
    let (len, fds) = loop {
        let mut iov = [IoSliceMut::new(&mut buf)];
        match recvmsg::<()>(
            sock.as_raw_fd(),
            &mut iov,
            Some(&mut space),
            MsgFlags::MSG_CMSG_CLOEXEC,
        ) {
            Ok(msg) => {
                let mut fds = Vec::new();
                for cmsg in msg.cmsgs().map_err(std::io::Error::from)? {
                    if let ControlMessageOwned::ScmRights(list) = cmsg {
                        for fd in list {
                            // SAFETY: the kernel just installed `fd` in this process for us
                            // (SCM_RIGHTS); nothing else owns it.
                            fds.push(unsafe { OwnedFd::from_raw_fd(fd) });
                        }
                    }
                }
                if msg.flags.contains(MsgFlags::MSG_TRUNC) {
                    return Err(std::io::Error::new(
                        std::io::ErrorKind::InvalidData,
                        "runner message truncated",
                    ));
                }
                break (msg.bytes, fds);
            }
            Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => return Err(e.into()),
        }
    };
    buf.truncate(len);
    Ok((buf, fds))
}

#[cfg(test)]
mod tests {
    use std::io::{Read, Write};
    use std::os::fd::AsFd;

    use super::*;

    #[test]
    fn a_message_and_its_fds_arrive_together() {
        let (a, b) = pair().unwrap();
        let (r, w) = nix::unistd::pipe().unwrap();
        send(a.as_fd(), b"hello", &[w.as_fd()]).unwrap();
        drop(w);
        let (data, mut fds) = recv(b.as_fd()).unwrap();
        assert_eq!(data, b"hello");
        assert_eq!(fds.len(), 1);
        let mut wf = std::fs::File::from(fds.remove(0));
        wf.write_all(b"through").unwrap();
        drop(wf);
        let mut got = String::new();
        std::fs::File::from(r).read_to_string(&mut got).unwrap();
        assert_eq!(got, "through");
    }

    #[test]
    fn peer_close_reads_as_empty() {
        let (a, b) = pair().unwrap();
        drop(a);
        let (data, fds) = recv(b.as_fd()).unwrap();
        assert!(data.is_empty() && fds.is_empty());
    }
}
