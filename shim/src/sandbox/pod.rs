//! The pod as containerd 2.x's sandbox API sees it (`sandboxer = "shim"`): created by
//! CreateSandbox, ready once StartSandbox booted the VM, stopped by StopSandbox or by the VM
//! ending. While there is such a pod the VM is the pod's, not its containers': deleting the
//! last container does not stop it, and the Task service's Shutdown leaves the shim alone.

use std::path::PathBuf;
use std::time::SystemTime;

use crate::error::{Result, ShimError};
use crate::pod_config::PodConfig;

/// Where the pod is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PodPhase {
    /// CreateSandbox took the config; no VM yet.
    Created,
    /// StartSandbox booted the VM.
    Ready {
        /// husk-vmm's pid.
        pid: u32,
    },
    /// Stopped (by StopSandbox, or the VM ended); final.
    Stopped {
        /// What WaitSandbox reports.
        exit_status: u32,
        /// When.
        exited_at: SystemTime,
    },
}

impl PodPhase {
    fn name(&self) -> &'static str {
        match self {
            PodPhase::Created => "created",
            PodPhase::Ready { .. } => "ready",
            PodPhase::Stopped { .. } => "stopped",
        }
    }

    /// Moves to `next` if the pod's life allows it: Created → Ready, and any → Stopped once.
    pub fn advance(&mut self, next: PodPhase) -> Result<()> {
        let ok = matches!(
            (*self, next),
            (PodPhase::Created, PodPhase::Ready { .. })
                | (
                    PodPhase::Created | PodPhase::Ready { .. },
                    PodPhase::Stopped { .. }
                )
        );
        if !ok {
            return Err(ShimError::FailedPrecondition(format!(
                "the sandbox is {}, it cannot become {}",
                self.name(),
                next.name()
            )));
        }
        *self = next;
        Ok(())
    }
}

/// The sandbox API's pod.
#[derive(Debug, Clone)]
pub struct Pod {
    /// The PodSandboxConfig's settings husk uses.
    pub config: PodConfig,
    /// The pod's network namespace on the host (CRI made it and ran CNI in it).
    pub netns: Option<PathBuf>,
    /// The sandbox bundle (containerd's, without config.json).
    pub bundle: PathBuf,
    /// When CreateSandbox ran.
    pub created_at: SystemTime,
    /// Its phase.
    pub phase: PodPhase,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_pod_life_is_checked() {
        let stopped = PodPhase::Stopped {
            exit_status: 0,
            exited_at: SystemTime::now(),
        };
        let mut p = PodPhase::Created;
        p.advance(PodPhase::Ready { pid: 7 }).unwrap();
        assert!(p.advance(PodPhase::Ready { pid: 8 }).is_err());
        p.advance(stopped).unwrap();
        assert!(p.advance(stopped).is_err());
        assert!(p.advance(PodPhase::Ready { pid: 9 }).is_err());
        let mut q = PodPhase::Created;
        q.advance(stopped).unwrap();
    }
}
