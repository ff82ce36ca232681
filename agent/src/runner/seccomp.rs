//! The container's seccomp filter on every process exec'd into it.
//!
//! libcontainer 0.7 installs `linux.seccomp` for a container's init, but its tenant builder
//! (what `runc exec` is) rebuilds the spec's `linux` section without it, so an exec would run
//! unfiltered: every `kubectl exec`, CRI ExecSync and `ctr task exec` would escape the pod's
//! seccomp policy. husk installs the container's filter itself, inside the exec'd process, as
//! the very last step before `execve` (libcontainer's [`Executor`] hook, after namespaces,
//! cgroup, user, capabilities and no_new_privs are in place), as runc does.
//!
//! Loading a filter needs no_new_privs or CAP_SYS_ADMIN in the effective set. An exec that
//! keeps privileges (no `noNewPrivileges`) without CAP_SYS_ADMIN (every default container)
//! would be refused by the kernel at that point, so [`grant_filter_setup`] adds CAP_SYS_ADMIN
//! to the process's *effective and permitted* sets only, never to its bounding, inheritable or
//! ambient sets. `execve` computes the new permitted and effective sets from those three alone
//! (capabilities(7), "Transformation of capabilities during execve()": for root the file sets
//! are notionally full and the result is `inheritable | bounding | ambient`; for any other user
//! it is `ambient` plus what file capabilities grant within the bounding set), so the program
//! that runs never holds CAP_SYS_ADMIN unless the spec grants it. Between the grant and the
//! `execve` only libcontainer's own code runs.

use std::collections::HashMap;

use libcontainer::workload::default::get_executor;
use libcontainer::workload::{
    Executor, ExecutorError, ExecutorSetEnvsError, ExecutorValidationError,
};
use oci_spec::runtime::{Capability, LinuxSeccomp, Process, Spec};

/// Makes room for the filter in `process`: CAP_SYS_ADMIN in its effective and permitted sets
/// (see the module doc for why it is gone after `execve`). A process without a capabilities
/// section keeps every capability the runner has, CAP_SYS_ADMIN included, and is left as is.
pub fn grant_filter_setup(process: &mut Process) {
    if process.no_new_privileges() == Some(true) {
        return;
    }
    let Some(mut caps) = process.capabilities().clone() else {
        return;
    };
    let mut effective = caps.effective().clone().unwrap_or_default();
    effective.insert(Capability::SysAdmin);
    let mut permitted = caps.permitted().clone().unwrap_or_default();
    permitted.insert(Capability::SysAdmin);
    caps.set_effective(Some(effective));
    caps.set_permitted(Some(permitted));
    process.set_capabilities(Some(caps));
}

/// libcontainer's default executor with the container's filter loaded right before it execs.
#[derive(Debug, Clone)]
pub struct FilteredExecutor {
    seccomp: LinuxSeccomp,
}

impl FilteredExecutor {
    /// An executor that installs `seccomp`.
    pub fn new(seccomp: LinuxSeccomp) -> Self {
        FilteredExecutor { seccomp }
    }
}

impl Executor for FilteredExecutor {
    fn exec(&self, spec: &Spec) -> Result<(), ExecutorError> {
        match libcontainer::seccomp::initialize_seccomp(&self.seccomp) {
            Ok(None) => {}
            // spec::prepare refuses notify actions; a filter that still has one fails closed.
            Ok(Some(_)) => {
                return Err(ExecutorError::Other(
                    "the container's seccomp filter asks for SCMP_ACT_NOTIFY, which husk does not \
                     support"
                        .into(),
                ))
            }
            Err(e) => {
                return Err(ExecutorError::Other(format!(
                    "installing the container's seccomp filter on the exec: {e}"
                )))
            }
        }
        get_executor().exec(spec)
    }

    fn validate(&self, spec: &Spec) -> Result<(), ExecutorValidationError> {
        get_executor().validate(spec)
    }

    fn setup_envs(&self, envs: HashMap<String, String>) -> Result<(), ExecutorSetEnvsError> {
        get_executor().setup_envs(envs)
    }
}

#[cfg(test)]
mod tests {
    use oci_spec::runtime::{LinuxCapabilitiesBuilder, ProcessBuilder};

    use super::*;

    /// A process as containerd's JSON gives it (oci-spec's own default sets no_new_privs).
    fn process(nnp: Option<bool>, with_caps: bool) -> Process {
        let mut b = ProcessBuilder::default().args(vec!["sh".to_string()]);
        if let Some(n) = nnp {
            b = b.no_new_privileges(n);
        }
        if with_caps {
            let chown = [Capability::Chown]
                .into_iter()
                .collect::<std::collections::HashSet<_>>();
            b = b.capabilities(
                LinuxCapabilitiesBuilder::default()
                    .bounding(chown.clone())
                    .effective(chown.clone())
                    .permitted(chown.clone())
                    .inheritable(chown.clone())
                    .ambient(chown)
                    .build()
                    .unwrap(),
            );
        }
        let mut p = b.build().unwrap();
        if nnp.is_none() {
            p.set_no_new_privileges(None);
        }
        p
    }

    #[test]
    fn sys_admin_goes_only_into_effective_and_permitted() {
        let mut p = process(None, true);
        grant_filter_setup(&mut p);
        let caps = p.capabilities().clone().unwrap();
        for set in [caps.effective(), caps.permitted()] {
            let set = set.clone().unwrap();
            assert!(set.contains(&Capability::SysAdmin) && set.contains(&Capability::Chown));
        }
        for set in [caps.bounding(), caps.inheritable(), caps.ambient()] {
            let set = set.clone().unwrap();
            assert!(!set.contains(&Capability::SysAdmin), "{set:?}");
            assert!(set.contains(&Capability::Chown));
        }
    }

    #[test]
    fn no_new_privs_or_no_capabilities_need_nothing() {
        let mut p = process(Some(true), true);
        let before = p.clone();
        grant_filter_setup(&mut p);
        assert_eq!(p, before, "no_new_privs is enough to load a filter");
        let mut p = process(None, false);
        p.set_capabilities(None);
        grant_filter_setup(&mut p);
        assert!(p.capabilities().is_none());
    }
}
