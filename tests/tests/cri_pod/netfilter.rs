//! A container with `NET_ADMIN` programs the pod's network namespace as a service mesh's init
//! container does (iptables' nat table, `-j REDIRECT`), and the pod's traffic follows the rule:
//! the same under runc (the node's kernel) and husk (the guest kernel,
//! `guest-kernel/fragments/pod-netfilter.config`). Also a bridge, as CNI inside a pod makes it. The test image has no iptables, so the container runs the node's own
//! `xtables-nft-multi` (iptables' default nft backend) through its dynamic loader, from the
//! node's `/usr/sbin` and library directory mounted read-only.

use k8s_cri::v1::{Capability, LinuxContainerConfig, LinuxContainerSecurityContext, Mount};

use husk_tests::cri::{container_config, running, wait_container};

use crate::scenario::{sh, Pod};
use crate::T;

/// The node's library directory (Debian's multiarch path; /lib is /usr/lib there).
const LIBS: &str = "/usr/lib/x86_64-linux-gnu";

fn ro(host: &str, container: &str) -> Mount {
    Mount {
        container_path: container.into(),
        host_path: host.into(),
        readonly: true,
        ..Default::default()
    }
}

/// Every check; the pod's `srv` container serves on port 8080 ([`crate::scenario`]).
pub fn check(pod: &Pod) -> String {
    let handler = pod.handler;
    let mut cfg = container_config("mesh-init", &["sleep", "3600"]);
    cfg.mounts = vec![ro("/usr/sbin", "/node/sbin"), ro(LIBS, "/node/lib")];
    cfg.linux = Some(LinuxContainerConfig {
        security_context: Some(LinuxContainerSecurityContext {
            capabilities: Some(Capability {
                add_capabilities: vec!["NET_ADMIN".into()],
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    });
    let id = pod.start(&cfg, "mesh-init");
    wait_container(pod.cri, &id, T, running).unwrap();
    let iptables = "XTABLES_LIBDIR=/node/lib/xtables /node/lib/ld-linux-x86-64.so.2 \
                    --library-path /node/lib /node/sbin/xtables-nft-multi iptables";
    // Port 80 on the loopback goes to the pod's server on 8080, as a mesh sends a pod's
    // traffic to its proxy.
    sh(
        pod.cri,
        &id,
        &format!("{iptables} -t nat -A OUTPUT -o lo -p tcp --dport 80 -j REDIRECT --to-ports 8080"),
    );
    let rules = sh(pod.cri, &id, &format!("{iptables} -t nat -S OUTPUT"));
    assert!(
        rules.contains("REDIRECT") && rules.contains("8080"),
        "[{handler}] the nat rule: {rules:?}"
    );
    let body = sh(pod.cri, &id, "wget -qO- http://127.0.0.1:80/index.html");
    assert_eq!(
        body, "hello-from-pod\n",
        "[{handler}] a connection to port 80 under the REDIRECT rule"
    );
    // A bridge, as a CNI plugin inside the pod makes it (brctl addbr said "Package not
    // installed" on a guest kernel without bridging).
    sh(pod.cri, &id, "brctl addbr husk-br0 && brctl delbr husk-br0");
    eprintln!("cri_pod[{handler}]: iptables nat REDIRECT and a bridge in the pod: ok");
    id
}
