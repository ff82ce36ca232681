//! What an install or uninstall did, one line per step, and whether anything changed.

/// What a run did, one line per step, and whether anything changed.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Report {
    /// Human-readable steps.
    pub lines: Vec<String>,
    /// True when the node changed.
    pub changed: bool,
}

impl Report {
    pub(crate) fn changed(&mut self, line: String) {
        tracing::info!(step = %line, "changed");
        self.lines.push(line);
        self.changed = true;
    }
    pub(crate) fn same(&mut self, line: String) {
        self.lines.push(line);
    }
}
