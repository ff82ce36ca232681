//! The status of a container or process, with checked transitions (as youki's
//! `ContainerStatus::can_*` and Cloud Hypervisor's `VmState::valid_transition`).
//!
//! ```text
//!   Created --start--> Running --exit--> Stopped
//!      |                |   ^
//!      |              pause resume
//!      |                v   |
//!      |               Paused --exit--> Stopped
//!      +--------exit (killed before start)--> Stopped
//!
//! Exec needs Running (runc refuses to exec into a paused container too).
//! ```

use std::fmt;

/// Where a container (its init process) or an exec process is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    /// Created (or registered, for an exec) and not started.
    Created,
    /// Started and not exited.
    Running,
    /// Frozen through cgroup.freeze (containers only).
    Paused,
    /// Exited (and reaped).
    Stopped,
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Status::Created => "created",
            Status::Running => "running",
            Status::Paused => "paused",
            Status::Stopped => "stopped",
        })
    }
}

/// A request that the current status does not allow.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("cannot {action} in state {from}")]
pub struct TransitionError {
    /// The status at the time of the request.
    pub from: Status,
    /// What was asked.
    pub action: &'static str,
}

/// Things that move a status or need a particular one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// StartProcess.
    Start,
    /// The process was reaped.
    Exit,
    /// PauseContainer.
    Pause,
    /// ResumeContainer.
    Resume,
    /// SignalProcess (no change).
    Signal,
    /// ExecProcess into the container (no change).
    Exec,
    /// RemoveContainer / DeleteProcess without force (no change).
    Remove,
    /// ResizeTty (no change).
    Resize,
}

impl Action {
    fn name(self) -> &'static str {
        match self {
            Action::Start => "start",
            Action::Exit => "exit",
            Action::Pause => "pause",
            Action::Resume => "resume",
            Action::Signal => "signal",
            Action::Exec => "exec",
            Action::Remove => "remove",
            Action::Resize => "resize",
        }
    }
}

impl Status {
    /// The status after `action`, or why it is refused.
    pub fn apply(self, action: Action) -> Result<Status, TransitionError> {
        use Action as A;
        use Status as S;
        let next = match (self, action) {
            (S::Created, A::Start) => Some(S::Running),
            (S::Created | S::Running | S::Paused, A::Exit) => Some(S::Stopped),
            (S::Running, A::Pause) => Some(S::Paused),
            (S::Paused, A::Resume) => Some(S::Running),
            // A created (not yet started) process can be signalled: runc kills it too.
            (S::Created | S::Running | S::Paused, A::Signal) => Some(self),
            (S::Running, A::Exec) => Some(self),
            (S::Created | S::Stopped, A::Remove) => Some(self),
            (S::Created | S::Running | S::Paused, A::Resize) => Some(self),
            _ => None,
        };
        next.ok_or(TransitionError {
            from: self,
            action: action.name(),
        })
    }

    /// Checks that `action` is allowed without changing anything.
    pub fn check(self, action: Action) -> Result<(), TransitionError> {
        self.apply(action).map(|_| ())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_normal_life() {
        let s = Status::Created.apply(Action::Start).unwrap();
        let s = s.apply(Action::Pause).unwrap();
        assert_eq!(s, Status::Paused);
        let s = s.apply(Action::Resume).unwrap();
        assert_eq!(s.apply(Action::Exit).unwrap(), Status::Stopped);
    }

    #[test]
    fn refused_transitions_name_state_and_action() {
        let e = Status::Running.apply(Action::Start).unwrap_err();
        assert_eq!(e.to_string(), "cannot start in state running");
        assert!(Status::Stopped.check(Action::Signal).is_err());
        assert!(Status::Stopped.check(Action::Exec).is_err());
        assert!(Status::Created.check(Action::Exec).is_err());
        assert!(Status::Paused.check(Action::Exec).is_err());
        assert!(Status::Running.check(Action::Remove).is_err());
        assert!(Status::Stopped.check(Action::Remove).is_ok());
        assert!(Status::Created.check(Action::Pause).is_err());
        assert!(Status::Running.check(Action::Resume).is_err());
        assert!(Status::Stopped.apply(Action::Exit).is_err());
    }
}
