//! The sandbox VM's life: a checked state machine whose states carry what each stage has (the
//! state directory from Booting on, the VM while it runs, why it ended once it is Gone), so no
//! field can say "running" while another says "no VM".

use std::sync::Arc;

use crate::error::{Result, ShimError};
use crate::paths::SandboxPaths;
use crate::vm::{Vm, VmGone};

/// The sandbox VM's life, without its data (for checks, logs and tests).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SandboxState {
    /// No VM (before the first Create, after the last Delete).
    Empty,
    /// husk-vmm started, waiting for the agent.
    Booting,
    /// The agent answers.
    Running,
    /// Being stopped by the shim.
    Stopping,
    /// Ended on its own; tasks are stopped, waiting to be deleted.
    Gone,
}

impl SandboxState {
    /// Whether `self -> to` is legal.
    pub fn can_become(self, to: SandboxState) -> bool {
        use SandboxState::*;
        matches!(
            (self, to),
            (Empty, Booting)
                | (Booting, Running)
                | (Booting, Empty)
                | (Running, Stopping)
                | (Running, Gone)
                | (Gone, Stopping)
                | (Stopping, Empty)
        )
    }
}

/// The sandbox VM's life with its data.
#[derive(Debug, Clone)]
pub(crate) enum VmSlot {
    /// No VM.
    Empty,
    /// The state directory is claimed; husk-vmm is being started.
    Booting {
        /// The sandbox's paths.
        paths: SandboxPaths,
    },
    /// The VM runs and its agent answers.
    Running {
        /// The VM.
        vm: Arc<Vm>,
        /// The sandbox's paths.
        paths: SandboxPaths,
    },
    /// The VM ended on its own.
    Gone {
        /// The VM that ended (its pid stays the tasks' pid).
        vm: Arc<Vm>,
        /// The sandbox's paths, still to be removed.
        paths: SandboxPaths,
        /// How it ended.
        gone: VmGone,
    },
    /// The shim is stopping the VM and removing the sandbox's state.
    Stopping {
        /// The sandbox's paths, being removed.
        paths: SandboxPaths,
    },
}

impl VmSlot {
    /// The state without its data.
    pub fn state(&self) -> SandboxState {
        match self {
            VmSlot::Empty => SandboxState::Empty,
            VmSlot::Booting { .. } => SandboxState::Booting,
            VmSlot::Running { .. } => SandboxState::Running,
            VmSlot::Gone { .. } => SandboxState::Gone,
            VmSlot::Stopping { .. } => SandboxState::Stopping,
        }
    }

    /// The sandbox's paths, in every state but Empty.
    pub fn paths(&self) -> Option<&SandboxPaths> {
        match self {
            VmSlot::Empty => None,
            VmSlot::Booting { paths }
            | VmSlot::Running { paths, .. }
            | VmSlot::Gone { paths, .. }
            | VmSlot::Stopping { paths } => Some(paths),
        }
    }

    /// The VM, running or ended on its own.
    pub fn vm(&self) -> Option<&Arc<Vm>> {
        match self {
            VmSlot::Running { vm, .. } | VmSlot::Gone { vm, .. } => Some(vm),
            _ => None,
        }
    }

    /// Why there is no running VM to call (FailedPrecondition, naming how a gone VM ended).
    pub fn not_running(&self) -> ShimError {
        match self {
            VmSlot::Gone { gone, .. } => {
                ShimError::FailedPrecondition(format!("the sandbox VM is gone: {}", gone.detail))
            }
            s => ShimError::FailedPrecondition(format!(
                "the sandbox VM is not running ({:?})",
                s.state()
            )),
        }
    }

    /// Moves to `next` if the machine allows it; returns the state left (with its data).
    pub fn advance(&mut self, next: VmSlot) -> Result<VmSlot> {
        let (from, to) = (self.state(), next.state());
        if !from.can_become(to) {
            return Err(ShimError::FailedPrecondition(format!(
                "the sandbox VM is {from:?} and cannot become {to:?}"
            )));
        }
        tracing::debug!("sandbox state {from:?} -> {to:?}");
        Ok(std::mem::replace(self, next))
    }
}

#[cfg(test)]
mod tests {
    use super::SandboxState::*;
    use super::*;

    #[test]
    fn vm_states_only_move_forward() {
        assert!(Empty.can_become(Booting));
        assert!(Booting.can_become(Empty));
        assert!(Running.can_become(Gone));
        assert!(Gone.can_become(Stopping));
        assert!(Stopping.can_become(Empty));
        assert!(!Empty.can_become(Running));
        assert!(!Gone.can_become(Running));
        assert!(!Stopping.can_become(Running));
    }

    #[test]
    fn a_slot_carries_its_paths_and_refuses_illegal_moves() {
        let paths = SandboxPaths::new(std::path::Path::new("/run/husk-test"), "sb");
        let mut slot = VmSlot::Empty;
        assert!(slot.paths().is_none());
        let e = slot
            .advance(VmSlot::Stopping {
                paths: paths.clone(),
            })
            .unwrap_err();
        assert!(
            e.to_string().contains("Empty and cannot become Stopping"),
            "{e}"
        );
        assert_eq!(slot.state(), Empty, "a refused move leaves the state");
        slot.advance(VmSlot::Booting {
            paths: paths.clone(),
        })
        .unwrap();
        assert_eq!(slot.paths().map(|p| p.root()), Some(paths.root()));
        assert!(slot.vm().is_none());
        assert!(slot
            .not_running()
            .to_string()
            .contains("not running (Booting)"));
        let left = slot.advance(VmSlot::Empty).unwrap();
        assert_eq!(left.state(), Booting);
        assert!(slot.paths().is_none());
    }
}
