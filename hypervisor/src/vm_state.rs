//! The VM's lifecycle as a state machine with checked transitions.

use std::fmt;

/// Where the VM is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VmState {
    /// Built, vCPUs not started.
    Created,
    /// vCPUs running.
    Running,
    /// vCPUs parked by a pause request.
    Paused,
    /// Stopped for good (guest shutdown, error or signal).
    Stopped,
}

impl fmt::Display for VmState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            VmState::Created => "created",
            VmState::Running => "running",
            VmState::Paused => "paused",
            VmState::Stopped => "stopped",
        })
    }
}

/// A transition the lifecycle does not allow.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the VM is {from} and cannot become {to}")]
pub struct InvalidTransition {
    /// The current state.
    pub from: VmState,
    /// The requested state.
    pub to: VmState,
}

impl VmState {
    /// The state after moving to `to`, if the lifecycle allows it.
    pub fn transition(self, to: VmState) -> Result<VmState, InvalidTransition> {
        use VmState::*;
        match (self, to) {
            (Created, Running) | (Running, Paused) | (Paused, Running) => Ok(to),
            (Created | Running | Paused, Stopped) => Ok(to),
            _ => Err(InvalidTransition { from: self, to }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::VmState::*;

    #[test]
    fn allowed_and_refused_transitions() {
        assert_eq!(Created.transition(Running), Ok(Running));
        assert_eq!(Running.transition(Paused), Ok(Paused));
        assert_eq!(Paused.transition(Running), Ok(Running));
        assert_eq!(Paused.transition(Stopped), Ok(Stopped));
        for (from, to) in [
            (Running, Running),
            (Created, Paused),
            (Stopped, Running),
            (Paused, Paused),
            (Stopped, Stopped),
        ] {
            let err = from.transition(to).unwrap_err();
            assert_eq!((err.from, err.to), (from, to));
        }
        assert_eq!(
            Created.transition(Paused).unwrap_err().to_string(),
            "the VM is created and cannot become paused"
        );
    }
}
