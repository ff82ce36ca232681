//! CRI PortForward, what `kubectl port-forward` uses, through crictl (`HUSK_CRICTL`, which
//! `make e2e` sets) to the pod's servers, the same under runc and husk: the server on port 8080
//! (all addresses) takes many connections at once and answers a client that half-closed after
//! its request; a server bound to `::1` alone, which nothing outside the pod reaches, answers
//! too. containerd dials `tcp4 localhost:<port>` in the pod's network namespace, then
//! `tcp6 localhost:<port>`, so under runc that server is reached only where the node's
//! `localhost` resolves to `::1` (not on hosts whose /etc/hosts lacks the line, as on the
//! development machines); husk's agent tries the guest's `::1` itself, so under husk it always is.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream, ToSocketAddrs};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use husk_tests::cri::eventually;

use crate::scenario::Pod;

/// The body both servers serve.
const BODY: &str = "hello-from-pod";

/// A crictl port-forward, killed when dropped.
struct Forward(Child);

impl Drop for Forward {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A port nothing on this host listens on now.
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap()
}

fn forward(crictl: &Path, pod: &Pod, remote: u16) -> (Forward, u16) {
    let local = free_port();
    let child = Command::new(crictl)
        .arg("--runtime-endpoint")
        .arg(format!("unix://{}", pod.c.socket().display()))
        .args(["port-forward", &pod.id, &format!("{local}:{remote}")])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("{}: {e}", crictl.display()));
    let f = Forward(child);
    assert!(
        eventually(Duration::from_secs(60), || TcpStream::connect((
            "127.0.0.1",
            local
        ))
        .is_ok()),
        "[{}] crictl port-forward {local}:{remote} never listened",
        pod.handler
    );
    (f, local)
}

/// GET / through the forward at `local`; with `half_close`, the request's end is a shutdown of
/// the client's sending side, and the answer must still come.
fn get(local: u16, half_close: bool) -> std::io::Result<String> {
    let mut s = TcpStream::connect(("127.0.0.1", local))?;
    s.set_read_timeout(Some(Duration::from_secs(60)))?;
    s.write_all(b"GET /index.html HTTP/1.0\r\n\r\n")?;
    if half_close {
        s.shutdown(Shutdown::Write)?;
    }
    let mut out = String::new();
    s.read_to_string(&mut out)?;
    Ok(out)
}

/// Every check; the pod runs the servers of [`crate::scenario`]'s `srv` container.
pub fn check(pod: &Pod) {
    let handler = pod.handler;
    let Some(crictl) = std::env::var_os("HUSK_CRICTL") else {
        eprintln!(
            "*** cri_pod[{handler}]: HUSK_CRICTL is not set (make e2e sets it to \
             ../shared/containerd/cri-tools/bin/crictl): CRI PortForward is NOT tested ***"
        );
        return;
    };
    let crictl = Path::new(&crictl);
    let (_f, local) = forward(crictl, pod, 8080);
    let answers: Vec<std::io::Result<String>> = std::thread::scope(|s| {
        let clients: Vec<_> = (0..8).map(|_| s.spawn(move || get(local, false))).collect();
        clients.into_iter().map(|c| c.join().unwrap()).collect()
    });
    for a in &answers {
        assert!(
            a.as_ref().is_ok_and(|b| b.contains(BODY)),
            "[{handler}] eight connections at once through port-forward: {answers:?}"
        );
    }
    let half = get(local, true);
    assert!(
        half.as_ref().is_ok_and(|b| b.contains(BODY)),
        "[{handler}] a client that half-closed after its request: {half:?}"
    );
    let (_f6, local6) = forward(crictl, pod, 8081);
    let v6 = get(local6, false);
    let reached = v6.as_ref().is_ok_and(|b| b.contains(BODY));
    let localhost_v6 = ("localhost", 0)
        .to_socket_addrs()
        .is_ok_and(|mut a| a.any(|a| a.is_ipv6()));
    if handler == crate::HUSK || localhost_v6 {
        assert!(
            reached,
            "[{handler}] the server bound to [::1]:8081 through port-forward: {v6:?}"
        );
    } else {
        eprintln!(
            "cri_pod[{handler}]: this host's `localhost` has no ::1, so containerd's tcp6 dial \
             cannot reach a server bound to ::1 alone under runc (reached: {reached})"
        );
    }
    eprintln!(
        "cri_pod[{handler}]: port-forward: 8 at once and half-close answered; ::1: {reached}"
    );
}
