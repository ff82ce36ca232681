//! The virtio-fs mode of the test init: `husk.test=fs:<tag>` on the kernel command line.
//!
//! After the ready marker it mounts the share (`mount -t virtiofs <tag> /mnt`) and walks the
//! steps the host side of `tests/tests/vmm_fs.rs` expects, printing one line per step:
//! `HUSK-TEST-INIT fs <step> ok [details]` or `HUSK-TEST-INIT fs <step> error=<why>`.
//!
//! 1. `mount`: mounts the share.
//! 2. `read`: reads `host-wrote.txt` (the host wrote it before boot), prints its first line as
//!    `text=<line>`.
//! 3. `before`: reads `changing.txt` and lists the directories `late` and `bound`, so the
//!    guest has them cached before the host changes them: `changing=<line> late=<entries>
//!    bound=<entries>`.
//! 4. `write`: writes [`GUEST_TEXT`] to `guest-wrote.txt` and fsyncs it (the host reads it,
//!    then changes `changing.txt` to `v2` and mounts a tmpfs on `late`, a bind mount on
//!    `bound`).
//! 5. `change`: waits until `changing.txt` reads `v2`.
//! 6. `mounts`: waits until `late/inside.txt` and `bound/from-bind` are readable, and prints
//!    what they say.
//! 7. `done ok`.
//!
//! Waiting steps poll every 50 ms for at most [`WAIT`] and print `after_ms=<ms>`.

use std::io::Write;
use std::time::{Duration, Instant};

/// What the guest writes for the host to read.
pub const GUEST_TEXT: &str = "written by the guest";
/// How long a waiting step waits (guest time; nested emulation is slow).
const WAIT: Duration = Duration::from_secs(180);
const MOUNTPOINT: &str = "/mnt";

fn say(out: &mut impl Write, line: &str) {
    let _ = writeln!(out, "HUSK-TEST-INIT fs {line}");
    let _ = out.flush();
}

fn mount_virtiofs(tag: &str) -> std::io::Result<()> {
    use std::ffi::CString;
    std::fs::create_dir_all(MOUNTPOINT)?;
    let invalid = |_| std::io::Error::from_raw_os_error(libc::EINVAL);
    let source = CString::new(tag).map_err(invalid)?;
    let target = CString::new(MOUNTPOINT).map_err(invalid)?;
    let fstype = CString::new("virtiofs").map_err(invalid)?;
    // SAFETY: three valid NUL-terminated strings that outlive the call; virtiofs takes no data.
    let rc = unsafe {
        libc::mount(
            source.as_ptr(),
            target.as_ptr(),
            fstype.as_ptr(),
            0,
            std::ptr::null(),
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

fn first_line(path: &str) -> std::io::Result<String> {
    let text = std::fs::read_to_string(path)?;
    Ok(text.lines().next().unwrap_or("").to_string())
}

/// Polls `check` until it returns `Some`, or [`WAIT`] passes.
fn wait_for<T>(mut check: impl FnMut() -> Option<T>) -> Result<(T, u128), u128> {
    let started = Instant::now();
    loop {
        if let Some(v) = check() {
            return Ok((v, started.elapsed().as_millis()));
        }
        if started.elapsed() > WAIT {
            return Err(started.elapsed().as_millis());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Runs the steps for share `tag`.
pub fn run(tag: &str, out: &mut impl Write) {
    if let Err(e) = mount_virtiofs(tag) {
        return say(out, &format!("mount error={e}"));
    }
    say(out, "mount ok");

    match first_line(&format!("{MOUNTPOINT}/host-wrote.txt")) {
        Ok(text) => say(out, &format!("read ok text={text}")),
        Err(e) => say(out, &format!("read error={e}")),
    }

    let changing = format!("{MOUNTPOINT}/changing.txt");
    let entries = |d: &str| {
        std::fs::read_dir(format!("{MOUNTPOINT}/{d}"))
            .map(|it| it.count().to_string())
            .unwrap_or_else(|e| format!("error:{e}"))
    };
    say(
        out,
        &format!(
            "before ok changing={} late={} bound={}",
            first_line(&changing).unwrap_or_else(|e| format!("error:{e}")),
            entries("late"),
            entries("bound")
        ),
    );

    let written =
        std::fs::File::create(format!("{MOUNTPOINT}/guest-wrote.txt")).and_then(|mut f| {
            f.write_all(GUEST_TEXT.as_bytes())
                .and_then(|_| f.sync_all())
        });
    match written {
        Ok(()) => say(out, "write ok"),
        Err(e) => say(out, &format!("write error={e}")),
    }

    match wait_for(|| first_line(&changing).ok().filter(|t| t == "v2")) {
        Ok((_, ms)) => say(out, &format!("change ok after_ms={ms}")),
        Err(ms) => say(
            out,
            &format!(
                "change error=still {:?} after_ms={ms}",
                first_line(&changing).unwrap_or_default()
            ),
        ),
    }

    let late = format!("{MOUNTPOINT}/late/inside.txt");
    let bound = format!("{MOUNTPOINT}/bound/from-bind");
    match wait_for(|| Some((first_line(&late).ok()?, first_line(&bound).ok()?))) {
        Ok(((a, b), ms)) => say(out, &format!("mounts ok late={a} bound={b} after_ms={ms}")),
        Err(ms) => say(out, &format!("mounts error=not visible after_ms={ms}")),
    }
    say(out, "done ok");
}
