//! The test host's record of guest triple faults. Its init keeps KVM's `kvm_exit` tracepoint for
//! SHUTDOWN exits only, and `kvm_userspace_exit` for KVM_EXIT_SHUTDOWN only, and appends each
//! line to `kvm-shutdowns` in the run directory. A `kvm_exit` line's rip is where the guest was
//! when it faulted (husk-vmm sees only the vCPU's reset state); a shutdown returned to userspace
//! without a SHUTDOWN exit before it is one KVM itself synthesized. This module prints each new
//! line once, with the guest kernel's symbol for the rip when `HUSK_KERNEL` names an ELF with a
//! symbol table.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::guest_loss::FETCH_LOOP;

/// How init.sh's monitor starts the line it records for a guest stuck in the fetch fault.
const FETCH_LOOP_RECORD: &str = "fetch-fault loop: ";

/// Follows `kvm-shutdowns` and names the symbol of each rip.
pub(super) struct ShutdownTrace {
    path: PathBuf,
    printed: usize,
    symbols: Option<Symbols>,
}

impl ShutdownTrace {
    pub(super) fn new(run_dir: &Path) -> Self {
        Self {
            path: run_dir.join("kvm-shutdowns"),
            printed: 0,
            symbols: None,
        }
    }

    /// Prints the lines added since the last call.
    pub(super) fn pump(&mut self, out: &mut dyn Write) {
        let Ok(text) = fs::read_to_string(&self.path) else {
            return;
        };
        // Only whole lines: the writer appends one line at a time.
        let lines: Vec<&str> = text
            .split_inclusive('\n')
            .filter(|l| l.ends_with('\n'))
            .collect();
        for line in &lines[self.printed.min(lines.len())..] {
            let line = line.trim_end();
            if line.starts_with(FETCH_LOOP_RECORD) {
                let _ = writeln!(out, "husk-testhost: {FETCH_LOOP}: {line}");
                continue;
            }
            if !line.contains(" kvm_exit: ") {
                // kvm_userspace_exit: KVM_RUN returned KVM_EXIT_SHUTDOWN to the VMM.
                let _ = writeln!(
                    out,
                    "husk-testhost: KVM returned a guest's shutdown: {line}"
                );
                continue;
            }
            let symbol = rip_of(line).and_then(|rip| {
                self.symbols
                    .get_or_insert_with(Symbols::of_guest_kernel)
                    .name(rip)
            });
            let _ =
                writeln!(
                out,
                "husk-testhost: a guest triple faulted (the test host's KVM saw a SHUTDOWN exit): \
                 {line}{}",
                symbol.map(|s| format!(" [guest kernel: {s}]")).unwrap_or_default()
            );
        }
        self.printed = lines.len();
        let _ = out.flush();
    }
}

/// The rip of a `kvm_exit` trace line (`... reason shutdown rip 0xffffffff81234567 info1 ...`).
fn rip_of(line: &str) -> Option<u64> {
    let hex = line.split_once(" rip 0x")?.1.split_whitespace().next()?;
    u64::from_str_radix(hex, 16).ok()
}

/// A kernel's function symbols, sorted by address.
struct Symbols(Vec<(u64, String)>);

impl Symbols {
    /// `nm -n` of `HUSK_KERNEL`; empty when either is missing.
    fn of_guest_kernel() -> Self {
        let Some(kernel) = std::env::var_os("HUSK_KERNEL") else {
            return Self(Vec::new());
        };
        let out = Command::new("nm").arg("-n").arg(&kernel).output();
        let text = out
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default();
        Self::parse(&text)
    }

    fn parse(nm: &str) -> Self {
        let mut syms: Vec<(u64, String)> = nm
            .lines()
            .filter_map(|l| {
                let mut f = l.split_whitespace();
                let addr = u64::from_str_radix(f.next()?, 16).ok()?;
                let kind = f.next()?;
                let name = f.next()?;
                matches!(kind, "t" | "T" | "W" | "w").then(|| (addr, name.to_string()))
            })
            .collect();
        syms.sort();
        Self(syms)
    }

    /// `function+0xoffset` for an address inside the kernel's text.
    fn name(&self, addr: u64) -> Option<String> {
        let i = self.0.partition_point(|(a, _)| *a <= addr).checked_sub(1)?;
        let (start, name) = &self.0[i];
        // Past the last symbol is not the kernel's text (user space, or the reset vector).
        (i + 1 < self.0.len()).then(|| format!("{name}+{:#x}", addr - start))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LINE: &str = "husk-vmm-2345 [001] d..1. 120.5: kvm_exit: vcpu 0 reason shutdown \
                        rip 0xffffffff81000123 info1 0x0000000000000000 info2 0x0";

    #[test]
    fn the_rip_is_read_from_a_kvm_exit_line() {
        assert_eq!(rip_of(LINE), Some(0xffff_ffff_8100_0123));
        assert_eq!(rip_of("kvm_exit: vcpu 0 reason shutdown"), None);
    }

    #[test]
    fn a_rip_names_the_function_it_is_in() {
        let s = Symbols::parse(
            "ffffffff81000000 T _stext\nffffffff81000100 t do_thing\n\
             ffffffff81000200 D some_data\nffffffff81000300 T _etext\n",
        );
        assert_eq!(
            s.name(0xffff_ffff_8100_0123).as_deref(),
            Some("do_thing+0x23")
        );
        assert_eq!(s.name(0xfff0), None);
        assert_eq!(s.name(0xffff_ffff_9000_0000), None);
    }

    #[test]
    fn new_lines_are_printed_once() {
        let dir = tempfile::tempdir().unwrap();
        let mut t = ShutdownTrace::new(dir.path());
        t.symbols = Some(Symbols(Vec::new()));
        fs::write(dir.path().join("kvm-shutdowns"), format!("{LINE}\npartial")).unwrap();
        let mut out = Vec::new();
        t.pump(&mut out);
        t.pump(&mut out);
        let text = String::from_utf8(out.clone()).unwrap();
        assert_eq!(text.matches("triple faulted").count(), 1, "{text}");
        let user =
            "husk-vmm-2345 [001] ..... 120.6: kvm_userspace_exit: reason KVM_EXIT_SHUTDOWN (8)";
        fs::write(
            dir.path().join("kvm-shutdowns"),
            format!("{LINE}\n{user}\n"),
        )
        .unwrap();
        t.pump(&mut out);
        let out = String::from_utf8(out).unwrap();
        assert_eq!(out.matches("triple faulted").count(), 1, "{out}");
        assert!(out.contains("KVM returned a guest's shutdown"), "{out}");
        assert!(out.contains("rip 0xffffffff81000123"), "{out}");
    }

    #[test]
    fn a_recorded_fetch_fault_loop_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let mut t = ShutdownTrace::new(dir.path());
        let record = "fetch-fault loop: 4123 injections in 10 s, the last: vcpu0-206 [000] \
                      ..... 289.6: kvm_inj_exception: #PF (0x10)";
        fs::write(dir.path().join("kvm-shutdowns"), format!("{record}\n")).unwrap();
        let mut out = Vec::new();
        t.pump(&mut out);
        let out = String::from_utf8(out).unwrap();
        assert_eq!(out, format!("husk-testhost: {FETCH_LOOP}: {record}\n"));
    }
}
