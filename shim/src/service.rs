//! containerd's name for this runtime and the `delete` action: containerd runs
//! `containerd-shim-husk-v2 delete` in a task's bundle when the task's shim is gone, and reads a
//! `DeleteResponse` from stdout. The daemon is [`crate::daemon`]; `start` is [`crate::start`].

use std::io::Write;
use std::path::Path;

use containerd_shim::Flags;
use containerd_shim_protos::protobuf::Message;

use crate::cleanup;

/// containerd's name for this runtime.
pub const RUNTIME_ID: &str = "io.containerd.husk.v2";

/// Cleans up after the task `flags.id` whose shim is gone and writes the `DeleteResponse` to
/// `out`.
pub fn delete(flags: &Flags, bundle: &Path, out: &mut impl Write) -> std::io::Result<()> {
    let (address, namespace) = (flags.address.as_str(), flags.namespace.as_str());
    let resp = cleanup::delete(bundle, &flags.id, |sandbox| {
        containerd_shim::socket_address(address, namespace, sandbox)
    });
    let bytes = resp
        .write_to_bytes()
        .map_err(|e| std::io::Error::other(format!("encoding the DeleteResponse: {e}")))?;
    out.write_all(&bytes)?;
    out.flush()
}
