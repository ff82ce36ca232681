//! The guest kernel build refuses bad input with a message that names the problem.
//! (The good path is `make kernel`, which every end-to-end test depends on.)

use std::path::PathBuf;
use std::process::Command;

fn build_script() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../guest-kernel/build.sh")
}

#[test]
fn a_missing_kernel_source_is_named_with_its_package() {
    let out = Command::new(build_script())
        .env("HUSK_KERNEL_SOURCE", "/nonexistent/linux-source-6.1.tar.xz")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(out.stdout.is_empty(), "no vmlinux path may be printed");
    assert!(
        stderr.contains("/nonexistent/linux-source-6.1.tar.xz"),
        "{stderr}"
    );
    assert!(
        stderr.contains("apt-get install linux-source-6.1"),
        "{stderr}"
    );
}

#[test]
fn an_unknown_option_in_a_fragment_fails_the_build() {
    let dir = tempfile::tempdir().unwrap();
    let fragments = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../guest-kernel/fragments");
    for entry in std::fs::read_dir(&fragments).unwrap() {
        let path = entry.unwrap().path();
        std::fs::copy(&path, dir.path().join(path.file_name().unwrap())).unwrap();
    }
    std::fs::write(
        dir.path().join("zz-typo.config"),
        "# a typo\nCONFIG_HUSK_NO_SUCH_OPTION=y\n",
    )
    .unwrap();
    let out = Command::new(build_script())
        .env("HUSK_KERNEL_FRAGMENTS", dir.path())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(out.stdout.is_empty(), "no vmlinux path may be printed");
    assert!(stderr.contains("CONFIG_HUSK_NO_SUCH_OPTION=y"), "{stderr}");
    assert!(stderr.contains("zz-typo.config"), "{stderr}");
}
