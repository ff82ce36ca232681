//! The network mode of the test init, driven by the kernel command line:
//!
//! - `husk.test=net:ADDR/PREFIX[,gw=GW]` configures the guest's NIC (the first interface other
//!   than `lo`) with plain ioctls: `lo` and the NIC up, the address and netmask, and a default
//!   route through GW. It then prints `HUSK-TEST-INIT net up if=<name> addr=ADDR/PREFIX
//!   mac=<mac> mtu=<mtu>` or `HUSK-TEST-INIT net error=<why>`.
//! - `husk.net.serve=PORT` (with the above) listens on TCP port PORT before the marker line
//!   and serves each connection on a thread, with the protocol of the vsock server: the first
//!   line is `echo` (send every byte back until end-of-file), `sink N` (read N bytes, answer
//!   `ok N <fnv1a64 hex>`) or `source N` (write N bytes of the test pattern, then close).
//! - `husk.net.connect=IP:PORT` connects to the host after the NIC is up, sends `hello
//!   <guest addr>`, reads one line back and prints `HUSK-TEST-INIT net-connect ok reply=<line>`
//!   or `HUSK-TEST-INIT net-connect error=<why>`.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpListener, TcpStream};
use std::time::Duration;

use crate::vsock::{pattern_byte, Fnv};

/// `struct rtentry` (linux/route.h) for SIOCADDRT; the libc crate has none for glibc.
#[repr(C)]
struct RtEntry {
    rt_pad1: libc::c_ulong,
    rt_dst: libc::sockaddr,
    rt_gateway: libc::sockaddr,
    rt_genmask: libc::sockaddr,
    rt_flags: libc::c_ushort,
    rt_pad2: libc::c_short,
    rt_pad3: libc::c_ulong,
    rt_pad4: *mut libc::c_void,
    rt_metric: libc::c_short,
    rt_dev: *mut libc::c_char,
    rt_mtu: libc::c_ulong,
    rt_window: libc::c_ulong,
    rt_irtt: libc::c_ushort,
}

const RTF_UP: libc::c_ushort = 0x1;
const RTF_GATEWAY: libc::c_ushort = 0x2;

/// What `husk.test=net:` asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetSpec {
    /// The guest's address.
    pub addr: Ipv4Addr,
    /// Its prefix length.
    pub prefix: u8,
    /// The default gateway.
    pub gw: Option<Ipv4Addr>,
}

/// Parses `ADDR/PREFIX[,gw=GW]`.
pub fn parse_spec(text: &str) -> Result<NetSpec, String> {
    let mut parts = text.split(',');
    let cidr = parts.next().unwrap_or("");
    let (addr, prefix) = cidr
        .split_once('/')
        .ok_or_else(|| format!("{cidr:?} is not ADDR/PREFIX"))?;
    let addr = addr.parse().map_err(|_| format!("bad address {addr:?}"))?;
    let prefix = prefix
        .parse::<u8>()
        .ok()
        .filter(|p| *p <= 32)
        .ok_or_else(|| format!("bad prefix {prefix:?}"))?;
    let mut gw = None;
    for part in parts {
        match part.split_once('=') {
            Some(("gw", v)) => gw = Some(v.parse().map_err(|_| format!("bad gateway {v:?}"))?),
            _ => return Err(format!("unknown option {part:?}")),
        }
    }
    Ok(NetSpec { addr, prefix, gw })
}

/// The netmask of a prefix length.
pub fn netmask(prefix: u8) -> Ipv4Addr {
    let bits = if prefix == 0 {
        0
    } else {
        u32::MAX << (32 - u32::from(prefix))
    };
    Ipv4Addr::from(bits)
}

fn sockaddr(ip: Ipv4Addr) -> libc::sockaddr {
    let sin = libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: 0,
        sin_addr: libc::in_addr {
            s_addr: u32::from(ip).to_be(),
        },
        sin_zero: [0; 8],
    };
    // SAFETY: sockaddr_in and sockaddr are both 16 bytes of plain data; sockaddr_in is the
    // AF_INET form of sockaddr.
    unsafe { std::mem::transmute::<libc::sockaddr_in, libc::sockaddr>(sin) }
}

fn ifreq(name: &str) -> libc::ifreq {
    // SAFETY: ifreq is plain data; zero is valid.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in req.ifr_name.iter_mut().zip(name.bytes().take(15)) {
        *dst = src as libc::c_char;
    }
    req
}

/// An AF_INET datagram socket for interface ioctls.
struct Ctl(std::os::fd::OwnedFd);

impl Ctl {
    fn new() -> io::Result<Ctl> {
        use std::os::fd::FromRawFd;
        // SAFETY: socket(2) with constant arguments; returns a new descriptor or -1.
        let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` is new and owned by nobody else.
        Ok(Ctl(unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) }))
    }

    fn ioctl<T>(&self, what: &str, request: libc::c_ulong, arg: &mut T) -> Result<(), String> {
        use std::os::fd::AsRawFd;
        // SAFETY: every request used here reads (and may write) one `T`, which `arg` points at
        // for the whole call.
        let rc = unsafe { libc::ioctl(self.0.as_raw_fd(), request, arg as *mut T) };
        if rc < 0 {
            Err(format!("{what}: {}", io::Error::last_os_error()))
        } else {
            Ok(())
        }
    }

    fn up(&self, name: &str) -> Result<(), String> {
        let mut req = ifreq(name);
        self.ioctl("SIOCGIFFLAGS", libc::SIOCGIFFLAGS, &mut req)?;
        // SAFETY: SIOCGIFFLAGS filled the flags member of the union.
        let flags = unsafe { req.ifr_ifru.ifru_flags };
        req.ifr_ifru.ifru_flags = flags | (libc::IFF_UP | libc::IFF_RUNNING) as libc::c_short;
        self.ioctl("SIOCSIFFLAGS", libc::SIOCSIFFLAGS, &mut req)
    }

    fn set_addr(&self, name: &str, addr: Ipv4Addr, mask: Ipv4Addr) -> Result<(), String> {
        let mut req = ifreq(name);
        req.ifr_ifru.ifru_addr = sockaddr(addr);
        self.ioctl("SIOCSIFADDR", libc::SIOCSIFADDR, &mut req)?;
        let mut req = ifreq(name);
        req.ifr_ifru.ifru_netmask = sockaddr(mask);
        self.ioctl("SIOCSIFNETMASK", libc::SIOCSIFNETMASK, &mut req)
    }

    fn default_route(&self, gw: Ipv4Addr) -> Result<(), String> {
        let mut rt = RtEntry {
            rt_pad1: 0,
            rt_dst: sockaddr(Ipv4Addr::UNSPECIFIED),
            rt_gateway: sockaddr(gw),
            rt_genmask: sockaddr(Ipv4Addr::UNSPECIFIED),
            rt_flags: RTF_UP | RTF_GATEWAY,
            rt_pad2: 0,
            rt_pad3: 0,
            rt_pad4: std::ptr::null_mut(),
            rt_metric: 0,
            rt_dev: std::ptr::null_mut(),
            rt_mtu: 0,
            rt_window: 0,
            rt_irtt: 0,
        };
        self.ioctl("SIOCADDRT", libc::SIOCADDRT, &mut rt)
    }
}

/// The first network interface other than `lo`, by name.
fn nic() -> Result<String, String> {
    let mut names: Vec<String> = std::fs::read_dir("/sys/class/net")
        .map_err(|e| format!("/sys/class/net: {e}"))?
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n != "lo")
        .collect();
    names.sort();
    names
        .into_iter()
        .next()
        .ok_or_else(|| "no network interface besides lo".into())
}

fn configure(spec: &NetSpec) -> Result<String, String> {
    let name = nic()?;
    let ctl = Ctl::new().map_err(|e| format!("socket: {e}"))?;
    ctl.up("lo")?;
    ctl.set_addr(&name, spec.addr, netmask(spec.prefix))?;
    ctl.up(&name)?;
    if let Some(gw) = spec.gw {
        ctl.default_route(gw)?;
    }
    Ok(name)
}

fn say(line: &str) {
    let mut out = io::stdout().lock();
    let _ = out.write_all(line.as_bytes());
    let _ = out.flush();
}

/// Configures the NIC from `spec` (`husk.test=net:`), starts the server on `serve` and
/// connects to `connect` if given.
pub fn setup(spec: &str, serve: Option<String>, connect: Option<String>) {
    let spec = match parse_spec(spec) {
        Ok(s) => s,
        Err(e) => return say(&format!("HUSK-TEST-INIT net error={e}\n")),
    };
    let name = match configure(&spec) {
        Ok(n) => n,
        Err(e) => return say(&format!("HUSK-TEST-INIT net error={e}\n")),
    };
    let sys = |what: &str| {
        std::fs::read_to_string(format!("/sys/class/net/{name}/{what}"))
            .map(|s| s.trim().to_string())
            .unwrap_or_else(|_| "?".into())
    };
    if let Some(port) = serve {
        match port
            .parse::<u16>()
            .map_err(|_| "not a port".to_string())
            .and_then(|p| TcpListener::bind(("0.0.0.0", p)).map_err(|e| e.to_string()))
        {
            Ok(listener) => {
                std::thread::spawn(move || serve_forever(listener));
            }
            Err(e) => say(&format!("HUSK-TEST-INIT net serve={port} error={e}\n")),
        }
    }
    say(&format!(
        "HUSK-TEST-INIT net up if={name} addr={}/{} mac={} mtu={}\n",
        spec.addr,
        spec.prefix,
        sys("address"),
        sys("mtu")
    ));
    if let Some(target) = connect {
        let line = match hello(&target, spec.addr) {
            Ok(reply) => format!("HUSK-TEST-INIT net-connect ok reply={reply}\n"),
            Err(e) => format!("HUSK-TEST-INIT net-connect error={e}\n"),
        };
        say(&line);
    }
}

fn hello(target: &str, me: Ipv4Addr) -> io::Result<String> {
    let addr: SocketAddrV4 = target
        .parse()
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "not IP:PORT"))?;
    let mut s = TcpStream::connect_timeout(&SocketAddr::V4(addr), Duration::from_secs(30))?;
    s.set_read_timeout(Some(Duration::from_secs(30)))?;
    writeln!(s, "hello {me}")?;
    let mut line = String::new();
    BufReader::new(s).read_line(&mut line)?;
    Ok(line.trim().to_string())
}

fn serve_forever(listener: TcpListener) {
    for conn in listener.incoming().flatten() {
        std::thread::spawn(move || {
            if let Err(e) = handle(conn) {
                eprintln!("husk-test-init: tcp connection: {e}");
            }
        });
    }
}

fn handle(conn: TcpStream) -> io::Result<()> {
    let mut reader = BufReader::with_capacity(64 * 1024, conn.try_clone()?);
    let mut writer = conn;
    let mut line = String::new();
    reader.read_line(&mut line)?;
    let mut words = line.split_whitespace();
    let (cmd, n) = (
        words.next().unwrap_or(""),
        words.next().and_then(|w| w.parse::<u64>().ok()),
    );
    let mut buf = vec![0u8; 64 * 1024];
    match (cmd, n) {
        ("echo", _) => loop {
            let got = reader.read(&mut buf)?;
            if got == 0 {
                return Ok(());
            }
            writer.write_all(&buf[..got])?;
        },
        ("sink", Some(n)) => {
            let mut fnv = Fnv::default();
            let mut left = n;
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
            let mut at = 0u64;
            while at < n {
                let len = buf.len().min((n - at) as usize);
                for (i, b) in buf[..len].iter_mut().enumerate() {
                    *b = pattern_byte(at + i as u64);
                }
                writer.write_all(&buf[..len])?;
                at += len as u64;
            }
            Ok(())
        }
        _ => writeln!(writer, "error unknown command {:?}", line.trim()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specs_parse_with_and_without_a_gateway() {
        assert_eq!(
            parse_spec("10.0.2.15/24,gw=10.0.2.2"),
            Ok(NetSpec {
                addr: Ipv4Addr::new(10, 0, 2, 15),
                prefix: 24,
                gw: Some(Ipv4Addr::new(10, 0, 2, 2)),
            })
        );
        assert_eq!(parse_spec("192.168.1.2/30").unwrap().gw, None);
        for bad in ["10.0.2.15", "10.0.2.15/33", "x/24", "10.0.2.15/24,foo=1"] {
            assert!(parse_spec(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn netmasks_from_prefixes() {
        assert_eq!(netmask(24), Ipv4Addr::new(255, 255, 255, 0));
        assert_eq!(netmask(0), Ipv4Addr::UNSPECIFIED);
        assert_eq!(netmask(32), Ipv4Addr::BROADCAST);
    }

    #[test]
    fn rtentry_has_the_kernel_layout() {
        // x86_64 glibc: 120 bytes.
        assert_eq!(std::mem::size_of::<RtEntry>(), 120);
    }
}
