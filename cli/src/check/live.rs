//! The running containerd: which version answers on its socket (`ctr version`), and whether it
//! loaded the `husk` handler, which `crictl info` lists (`runtimeHandlers` on containerd 2.x,
//! the CRI config's `containerd.runtimes` on 1.x). A handler in the config file is not live
//! until containerd restarts; this check says which one the node has.

use std::path::Path;

use super::{Line, Probe, ToolRun};
use crate::containerd::HANDLER;

const C: &str = "containerd running";

fn last_line(out: &str) -> String {
    out.lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("")
        .trim()
        .to_string()
}

/// The server version in `ctr version`'s output (`Server:` then `  Version:  v2.3.4`).
fn server_version(out: &str) -> Option<&str> {
    let mut lines = out.lines().skip_while(|l| l.trim() != "Server:");
    lines.next()?;
    lines
        .find_map(|l| l.trim().strip_prefix("Version:"))
        .map(str::trim)
        .filter(|v| !v.is_empty())
}

/// The runtime handlers in `crictl info`'s JSON: `runtimeHandlers[].name` (CRI 1.30+,
/// containerd 2.x), else the keys of `config.containerd.runtimes` (containerd 1.x).
fn handlers(info: &str) -> Option<Vec<String>> {
    let v: serde_json::Value = serde_json::from_str(info).ok()?;
    if let Some(list) = v.get("runtimeHandlers").and_then(|h| h.as_array()) {
        return Some(
            list.iter()
                .filter_map(|h| h.get("name").and_then(|n| n.as_str()))
                .map(String::from)
                .collect(),
        );
    }
    let runtimes = v.pointer("/config/containerd/runtimes")?.as_object()?;
    Some(runtimes.keys().cloned().collect())
}

/// Why a tool run failed, in one line: its last line of stderr (or stdout), or why it did not run.
fn failure(run: Result<ToolRun, String>) -> String {
    match run {
        Ok(r) => {
            let line = last_line(&r.stderr);
            if line.is_empty() {
                format!("exit {}: {}", r.code, last_line(&r.stdout))
            } else {
                line
            }
        }
        Err(why) => why,
    }
}

/// The check's line for the containerd listening on `socket`.
pub fn check(p: &dyn Probe, socket: &Path) -> Line {
    let address = socket.display().to_string();
    let Some(ctr) = p.find_on_path("ctr") else {
        return Line::warn(
            C,
            "ctr is not on PATH: the running containerd was not asked",
        );
    };
    let version = match p.run(&ctr, &["--address", &address, "version"]) {
        Ok(r) if r.code == 0 => match server_version(&r.stdout) {
            Some(v) => v.to_string(),
            None => return Line::warn(C, "`ctr version` printed no server version"),
        },
        failed => {
            return Line::warn(
                C,
                format!(
                    "no containerd answers on {address} ({}): only its config was checked",
                    failure(failed)
                ),
            );
        }
    };
    let Some(crictl) = p.find_on_path("crictl") else {
        return Line::warn(
            C,
            format!(
                "containerd {version} on {address}; crictl is not on PATH, so whether it loaded \
                 the {HANDLER} handler is unknown (`crictl info` lists its handlers)"
            ),
        );
    };
    let endpoint = format!("unix://{address}");
    let info = match p.run(&crictl, &["--runtime-endpoint", &endpoint, "info"]) {
        Ok(r) if r.code == 0 => r.stdout,
        failed => {
            return Line::warn(
                C,
                format!(
                    "containerd {version} on {address}; `crictl info` failed ({}): is its CRI \
                     plugin on?",
                    failure(failed)
                ),
            )
        }
    };
    match handlers(&info) {
        Some(h) if h.iter().any(|n| n == HANDLER) => Line::ok(
            C,
            format!("containerd {version} on {address} has the {HANDLER} handler loaded"),
        ),
        Some(h) => Line::fail(
            C,
            format!(
                "containerd {version} on {address} runs without the {HANDLER} handler (its \
                 handlers: {})",
                h.join(", ")
            ),
            "restart containerd to load its config (systemctl restart containerd, or husk \
             install --restart-containerd)",
        ),
        None => Line::warn(
            C,
            format!("containerd {version} on {address}; `crictl info` listed no runtime handlers"),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_server_version_is_read_from_ctr_version() {
        let out = "Client:\n  Version:  v2.3.4\n  Revision: db88095\n\nServer:\n  Version:  \
                   1.6.20~ds1\n  Revision: 1.6.20~ds1-1\n  UUID: x\n";
        assert_eq!(server_version(out), Some("1.6.20~ds1"));
        assert_eq!(server_version("Client:\n  Version: v2\n"), None);
    }

    #[test]
    fn handlers_come_from_runtime_handlers_or_the_cri_config() {
        let v2 = r#"{"runtimeHandlers":[{"name":""},{"name":"husk"},{"name":"runc"}]}"#;
        assert_eq!(handlers(v2).unwrap(), vec!["", "husk", "runc"]);
        let v1 = r#"{"config":{"containerd":{"runtimes":{"runc":{},"husk":{}}}}}"#;
        let mut h = handlers(v1).unwrap();
        h.sort();
        assert_eq!(h, vec!["husk", "runc"]);
        assert_eq!(handlers("{}"), None);
        assert_eq!(handlers("not json"), None);
    }
}
