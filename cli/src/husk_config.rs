//! The husk config file `husk install` writes (and `husk uninstall` removes unless changed):
//! the example with the installed artifacts' paths set.

use std::path::PathBuf;

use husk_protocol::config::EXAMPLE as CONFIG_EXAMPLE;

use crate::paths::{Layout, INITRD, KERNEL, VMM};

/// The husk config install writes for a prefix: the example with the artifact paths set.
pub fn husk_config_text(layout: &Layout) -> String {
    let set = |key: &str, p: PathBuf| {
        format!(
            "{key} = {}",
            toml_edit::Value::from(p.display().to_string())
        )
    };
    let mut out = String::from(
        "# Written by `husk install` (it never overwrites this file; `husk uninstall` removes it\n\
         # unless it was changed).\n",
    );
    for line in CONFIG_EXAMPLE.lines() {
        let line = if line.starts_with("#vmm = ") {
            set("vmm", layout.bin().join(VMM))
        } else if line.starts_with("#kernel = ") {
            set("kernel", layout.share().join(KERNEL))
        } else if line.starts_with("#initramfs = ") {
            set("initramfs", layout.share().join(INITRD))
        } else {
            line.to_string()
        };
        out.push_str(&line);
        out.push('\n');
    }
    out
}
