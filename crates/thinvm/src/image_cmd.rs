//! `thinvm image`: create, inspect, check, convert and commit disk images.

use std::io::{IsTerminal, Write};
use std::path::PathBuf;

use anyhow::{bail, Context};
use clap::Subcommand;
use storage::chain::open_qcow2;
use storage::ops::{self, parse_size};
use storage::{probe_format, Format, OpenOptions};

/// `thinvm image` subcommands.
#[derive(Subcommand, Debug)]
pub enum ImageCommand {
    /// Create an empty image (or a qcow2 overlay with --backing).
    Create {
        /// Format: raw or qcow2.
        #[arg(long, short = 'f', default_value = "qcow2")]
        format: String,
        /// Virtual size, e.g. 10G (default with --backing: the backing file's size).
        #[arg(long, short = 's')]
        size: Option<String>,
        /// Backing file (copy-on-write overlay); relative names are relative to PATH's folder.
        #[arg(long, short = 'b')]
        backing: Option<String>,
        /// Format of the backing file (detected once, at creation, when omitted).
        #[arg(long, short = 'F')]
        backing_format: Option<String>,
        /// qcow2 cluster size, 512 to 2M (default 64K).
        #[arg(long)]
        cluster_size: Option<String>,
        /// The new image.
        path: PathBuf,
    },
    /// Show format, virtual size, allocated size and the backing chain.
    Info {
        /// Format (detected when omitted).
        #[arg(long, short = 'f')]
        format: Option<String>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
        /// The image.
        path: PathBuf,
    },
    /// Check a qcow2 image for corruptions and leaks. Exit 0: clean, 2: corrupt, 3: leaks only.
    Check {
        /// Format (detected when omitted).
        #[arg(long, short = 'f')]
        format: Option<String>,
        /// Rebuild the refcounts to fix leaks and refcount errors.
        #[arg(long, short = 'r')]
        repair: bool,
        /// The image.
        path: PathBuf,
    },
    /// Copy an image (through its backing chain) into a new one, skipping unallocated and zero data.
    Convert {
        /// Source format (detected when omitted): raw, qcow2, vpc (vhd), vhdx.
        #[arg(long, short = 'f')]
        format: Option<String>,
        /// Target format: raw or qcow2.
        #[arg(long, short = 'O', default_value = "qcow2")]
        output_format: String,
        /// qcow2 cluster size of the target.
        #[arg(long)]
        cluster_size: Option<String>,
        /// Compress the data (qcow2 target; deflate, readable by QEMU).
        #[arg(long, short = 'c')]
        compress: bool,
        /// Never show a progress bar.
        #[arg(long)]
        quiet: bool,
        /// Source image.
        src: PathBuf,
        /// Target image (must not exist).
        dst: PathBuf,
    },
    /// Measure 4 KiB random and 1 MiB sequential I/O on raw and qcow2 files with O_DIRECT,
    /// beside `qemu-img bench -t none` on the same files (medians of interleaved rounds).
    Bench {
        /// Folder for the test images (not tmpfs: O_DIRECT); removed afterwards if created.
        #[arg(long, default_value = "thinvm-bench.tmp")]
        dir: PathBuf,
        /// Image size.
        #[arg(long, default_value = "256M")]
        size: String,
        /// Rounds per row.
        #[arg(long, default_value_t = 3)]
        rounds: usize,
        /// Skip qemu-img bench.
        #[arg(long)]
        no_qemu: bool,
    },
    /// Write a qcow2 overlay's data into its backing file.
    Commit {
        /// Never show a progress bar.
        #[arg(long)]
        quiet: bool,
        /// The overlay.
        path: PathBuf,
    },
}

fn format_arg(name: Option<&str>, path: &std::path::Path) -> anyhow::Result<Format> {
    match name {
        Some(n) => Format::from_name(n)
            .with_context(|| format!("unknown format {n:?} (raw, qcow2, vpc, vhdx)")),
        None => Ok(probe_format(path)?),
    }
}

/// A progress bar on stderr when it is a terminal.
fn progress(quiet: bool) -> impl FnMut(u64, u64) {
    let tty = !quiet && std::io::stderr().is_terminal();
    let mut last = u64::MAX;
    move |done, total| {
        if !tty || total == 0 {
            return;
        }
        let pct = done * 100 / total;
        if pct != last {
            last = pct;
            let bar = "#".repeat((pct / 4) as usize);
            eprint!("\r  [{bar:<25}] {pct:3}%");
            if done >= total {
                eprintln!();
            }
            let _ = std::io::stderr().flush();
        }
    }
}

fn human(n: u64) -> String {
    let units = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < units.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.3} {} ({n} bytes)", units[u])
    }
}

/// Runs one `thinvm image` command; returns the process exit code.
pub fn run(cmd: ImageCommand) -> anyhow::Result<i32> {
    match cmd {
        ImageCommand::Create {
            format,
            size,
            backing,
            backing_format,
            cluster_size,
            path,
        } => {
            let fmt =
                Format::from_name(&format).with_context(|| format!("unknown format {format:?}"))?;
            let size = size.as_deref().map(parse_size).transpose()?;
            let cs = cluster_size.as_deref().map(parse_size).transpose()?;
            let bfmt = match backing_format.as_deref() {
                Some(n) => Some(
                    Format::from_name(n)
                        .with_context(|| format!("unknown backing format {n:?}"))?,
                ),
                None => None,
            };
            ops::create_image(&path, fmt, size, backing.as_deref().map(|b| (b, bfmt)), cs)?;
            Ok(0)
        }
        ImageCommand::Info { format, json, path } => {
            let fmt = format_arg(format.as_deref(), &path)?;
            let chain = ops::image_info(&path, Some(fmt))?;
            if json {
                println!("{}", ops::info_json(&chain));
                return Ok(0);
            }
            for (depth, i) in chain.iter().enumerate() {
                if depth > 0 {
                    println!();
                    println!("backing image {depth}:");
                }
                println!("image: {}", i.filename);
                println!("file format: {}", i.format);
                println!("virtual size: {}", human(i.virtual_size));
                println!("disk size: {}", human(i.actual_size));
                if let Some(cs) = i.cluster_size {
                    println!("cluster_size: {cs}");
                }
                if let Some(v) = i.version {
                    println!("qcow2 version: {v}");
                }
                if let Some(b) = &i.backing_file {
                    println!("backing file: {b}");
                    println!(
                        "backing file format: {}",
                        i.backing_format.as_deref().unwrap_or("(none recorded)")
                    );
                }
                if i.dirty || i.corrupt {
                    println!(
                        "flags:{}{}",
                        if i.dirty { " dirty" } else { "" },
                        if i.corrupt { " corrupt" } else { "" }
                    );
                }
            }
            Ok(0)
        }
        ImageCommand::Check {
            format,
            repair,
            path,
        } => {
            let fmt = format_arg(format.as_deref(), &path)?;
            if fmt != Format::Qcow2 {
                storage::open_image(&path, fmt, &OpenOptions::default())?;
                println!(
                    "{}: {} images have no metadata to check; structure is valid",
                    path.display(),
                    fmt.name()
                );
                return Ok(0);
            }
            let opts = OpenOptions {
                writable: repair,
                ..OpenOptions::default()
            };
            let mut q = open_qcow2(&path, &opts)?;
            let r = q.check(repair)?;
            for m in &r.messages {
                println!("{m}");
            }
            if r.corruptions == 0 && r.leaks == 0 {
                println!("No errors were found on the image.");
                return Ok(0);
            }
            if r.corruptions > 0 {
                println!("{} errors were found on the image.", r.corruptions);
            }
            if r.leaks > 0 {
                println!(
                    "{} leaked clusters were found on the image (run with --repair to fix).",
                    r.leaks
                );
            }
            Ok(if r.corruptions > 0 { 2 } else { 3 })
        }
        ImageCommand::Convert {
            format,
            output_format,
            cluster_size,
            compress,
            quiet,
            src,
            dst,
        } => {
            let sfmt = format_arg(format.as_deref(), &src)?;
            let dfmt = Format::from_name(&output_format)
                .with_context(|| format!("unknown format {output_format:?}"))?;
            if !matches!(dfmt, Format::Raw | Format::Qcow2) {
                bail!(
                    "thinvm writes raw and qcow2 images only, not {}",
                    dfmt.name()
                );
            }
            let cs = cluster_size.as_deref().map(parse_size).transpose()?;
            let mut bar = progress(quiet);
            ops::convert(&src, sfmt, &dst, dfmt, cs, compress, &mut bar)?;
            Ok(0)
        }
        ImageCommand::Bench {
            dir,
            size,
            rounds,
            no_qemu,
        } => {
            let created = !dir.exists();
            let cfg = storage::bench::BenchConfig {
                dir: dir.clone(),
                size: parse_size(&size)?,
                rounds,
                qemu: !no_qemu,
            };
            let report = storage::bench::run(&cfg);
            if created {
                let _ = std::fs::remove_dir_all(&dir);
            }
            println!("{}", report?);
            Ok(0)
        }
        ImageCommand::Commit { quiet, path } => {
            let mut bar = progress(quiet);
            ops::commit(&path, &mut bar)?;
            println!("Image committed.");
            Ok(0)
        }
    }
}
