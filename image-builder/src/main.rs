//! `husk-image`: builds the guest initramfs from a static `/init` and optional extra files.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use husk_image::{Compression, ImageTree};

/// Build a reproducible newc initramfs for a husk guest.
///
/// The image holds /init, the directories and device nodes an init needs before it mounts
/// anything (/dev/console, /dev/null, /proc, /sys, /run, /tmp, ...), and whatever --add names.
#[derive(Debug, Parser)]
#[command(name = "husk-image", version = husk_image_version())]
struct Args {
    /// The init binary (statically linked; the guest has no libc). Becomes /init.
    #[arg(long)]
    init: PathBuf,
    /// Extra host file or directory to include, as HOST_PATH:IMAGE_PATH (repeatable).
    #[arg(long = "add", value_name = "HOST:IMAGE")]
    add: Vec<String>,
    /// Also add a busybox container rootfs at this image path (e.g. /opt/husk/rootfs), made
    /// from the static busybox named by --busybox.
    #[arg(long, value_name = "IMAGE_PATH")]
    busybox_rootfs: Option<String>,
    /// The static busybox for --busybox-rootfs.
    #[arg(long, default_value = "/bin/busybox")]
    busybox: PathBuf,
    /// Write a plain cpio instead of gzip.
    #[arg(long)]
    no_compress: bool,
    /// Where to write the image.
    #[arg(long, short)]
    output: PathBuf,
}

const fn husk_image_version() -> &'static str {
    env!("CARGO_PKG_VERSION")
}

fn run(args: Args) -> anyhow::Result<()> {
    let mut tree = ImageTree::for_init(&args.init)?;
    for spec in &args.add {
        let (host, image) = spec
            .split_once(':')
            .ok_or_else(|| anyhow::anyhow!("--add {spec:?}: expected HOST_PATH:IMAGE_PATH"))?;
        tree.add_host_path(host.as_ref(), image)?;
    }
    if let Some(dest) = &args.busybox_rootfs {
        husk_image::rootfs::add_busybox_rootfs(&mut tree, &args.busybox, dest)?;
    }
    let compression = if args.no_compress {
        Compression::None
    } else {
        Compression::Gzip
    };
    let size = tree.write(&args.output, compression)?;
    println!(
        "{} {} bytes ({:.1} MiB)",
        args.output.display(),
        size,
        size as f64 / 1048576.0
    );
    Ok(())
}

fn main() -> ExitCode {
    match run(Args::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("husk-image: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
