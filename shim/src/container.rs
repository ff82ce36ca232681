//! One container of the sandbox: its bundle, its init process, its execs, and whether it is
//! paused (a container-level state on top of the init process's status).

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use crate::error::ShimError;
use crate::process::Process;

/// A container.
#[derive(Debug)]
pub struct Container {
    /// Its id.
    pub id: String,
    /// Its bundle directory.
    pub bundle: PathBuf,
    /// Its init process.
    pub init: Arc<Process>,
    execs: Mutex<HashMap<String, Arc<Process>>>,
    paused: AtomicBool,
}

impl Container {
    /// A created container.
    pub fn new(id: &str, bundle: PathBuf, init: Process) -> Container {
        Container {
            id: id.to_string(),
            bundle,
            init: Arc::new(init),
            execs: Mutex::new(HashMap::new()),
            paused: AtomicBool::new(false),
        }
    }

    fn execs(&self) -> std::sync::MutexGuard<'_, HashMap<String, Arc<Process>>> {
        self.execs.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The init process (empty `exec_id`) or an exec.
    pub fn process(&self, exec_id: &str) -> Result<Arc<Process>, ShimError> {
        if exec_id.is_empty() {
            return Ok(self.init.clone());
        }
        self.execs().get(exec_id).cloned().ok_or_else(|| {
            ShimError::NotFound(format!("exec {exec_id} not found in container {}", self.id))
        })
    }

    /// Whether `exec_id` is taken.
    pub fn has_exec(&self, exec_id: &str) -> bool {
        self.execs().contains_key(exec_id)
    }

    /// Registers an exec.
    pub fn add_exec(&self, p: Process) -> Result<Arc<Process>, ShimError> {
        let mut execs = self.execs();
        if execs.contains_key(&p.exec_id) {
            return Err(ShimError::AlreadyExists(format!(
                "exec {} already exists in container {}",
                p.exec_id, self.id
            )));
        }
        let p = Arc::new(p);
        execs.insert(p.exec_id.clone(), p.clone());
        Ok(p)
    }

    /// Forgets an exec.
    pub fn remove_exec(&self, exec_id: &str) {
        self.execs().remove(exec_id);
    }

    /// The init process and every exec.
    pub fn processes(&self) -> Vec<Arc<Process>> {
        let mut all = vec![self.init.clone()];
        all.extend(self.execs().values().cloned());
        all
    }

    /// Whether it is paused.
    pub fn paused(&self) -> bool {
        self.paused.load(Ordering::SeqCst)
    }

    /// Records pause / resume.
    pub fn set_paused(&self, paused: bool) {
        self.paused.store(paused, Ordering::SeqCst);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::io::{ProcessIo, StdioSpec};

    #[test]
    fn execs_are_unique_and_found_by_id() {
        let c = Container::new(
            "c1",
            "/b".into(),
            Process::new("c1", "", StdioSpec::default(), ProcessIo::none()),
        );
        let e = || Process::new("c1", "e1", StdioSpec::default(), ProcessIo::none());
        c.add_exec(e()).unwrap();
        assert!(matches!(c.add_exec(e()), Err(ShimError::AlreadyExists(_))));
        assert_eq!(c.process("e1").unwrap().exec_id, "e1");
        assert_eq!(c.process("").unwrap().exec_id, "");
        assert!(matches!(c.process("e2"), Err(ShimError::NotFound(_))));
        assert_eq!(c.processes().len(), 2);
        c.remove_exec("e1");
        assert!(!c.has_exec("e1"));
    }
}
