//! Why an agent call failed, told by the VM's end when the VM ended under it.

use crate::agent::AgentError;
use crate::error::{Result, ShimError};
use crate::io::IoError;
use crate::vm::{self, Vm};

/// How long a failed agent call waits for the VM's exit to be seen (the connection's end can
/// come first), so that the error names the VM's end rather than the connection's.
const VM_END_GRACE: std::time::Duration = std::time::Duration::from_secs(3);

/// How the VM ended, when agent error `e` came from the VM ending under the call: a transport
/// failure, and the VM's exit seen within [`VM_END_GRACE`] (the connection's end can come
/// first). `None` for every other failure.
pub async fn ended_under(vm: &Vm, e: &AgentError) -> Option<String> {
    if !e.is_transport() {
        return None;
    }
    vm::wait_gone(&vm.gone, VM_END_GRACE)
        .await
        .map(|gone| gone.detail)
}

/// The error of agent call `what` that failed with `e`: when the connection failed because the
/// VM ended under the call, the VM's end (husk-vmm's exit and the console tail) is the cause
/// the user sees, not the connection's early EOF.
pub async fn agent_failure(vm: &Vm, what: &str, e: AgentError) -> ShimError {
    match ended_under(vm, &e).await {
        Some(detail) => {
            ShimError::FailedPrecondition(format!("{what}: the sandbox VM ended: {detail}"))
        }
        None => while_running(vm, what, e),
    }
}

/// The error of a process's stdio attach that failed with `e`: when a guest stream's connection
/// failed because the VM ended under it, the VM's end is named with it (husk-vmm answers a
/// connection to a dead guest as if nothing listened there).
pub async fn stdio_failure(vm: &Vm, e: IoError) -> ShimError {
    if !e.is_transport() {
        return e.into();
    }
    match vm::wait_gone(&vm.gone, VM_END_GRACE).await {
        Some(gone) => {
            ShimError::FailedPrecondition(format!("{e}: the sandbox VM ended: {}", gone.detail))
        }
        None => e.into(),
    }
}

/// The error of agent call `what` that failed with `e` while the VM runs (see
/// [`ended_under`]).
pub fn while_running(vm: &Vm, what: &str, e: AgentError) -> ShimError {
    if e.is_transport() {
        // The VM runs but its agent connection failed: husk-vmm's log says which side ended it.
        tracing::error!(
            pid = vm.pid,
            call = what,
            "the agent connection failed while the VM still runs: {e}"
        );
    }
    e.into()
}

/// Agent call `what` on `vm`, its failure explained by [`agent_failure`].
pub async fn explained<T>(
    vm: &Vm,
    what: &str,
    call: impl std::future::Future<Output = std::result::Result<T, AgentError>>,
) -> Result<T> {
    match call.await {
        Ok(v) => Ok(v),
        Err(e) => Err(agent_failure(vm, what, e).await),
    }
}
