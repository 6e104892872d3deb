//! `thinvm image bench`: 4 KiB random read/write IOPS at queue depths 1 and 32 and 1 MiB
//! sequential throughput on raw and qcow2 (fresh and fully allocated) files, with O_DIRECT,
//! beside `qemu-img bench -t none` on the same files in the same run. "Random" is a stride
//! of a large odd multiple of 4 KiB wrapping around the image (qemu-img bench's only mode),
//! used identically on both sides.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use crate::chain::{open_image, Format, OpenOptions};
use crate::formats::qcow2::{create_file, CreateOptions};
use crate::io::aligned::AlignedBuf;
use crate::io::buf::IoBuf;
use crate::io::disk::{AsyncDisk, DiskOp, DiskRequest};
use crate::io::engine::best_engine;

/// Error of a benchmark run.
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    /// An image operation failed.
    #[error("bench image {path}: {detail}")]
    Image {
        /// Image path.
        path: PathBuf,
        /// What failed.
        detail: String,
    },
    /// qemu-img bench failed or printed nothing usable.
    #[error("qemu-img bench {args}: {detail}")]
    Qemu {
        /// Its arguments.
        args: String,
        /// Its output or error.
        detail: String,
    },
}

/// Benchmark parameters.
#[derive(Debug, Clone)]
pub struct BenchConfig {
    /// Folder for the image files (must allow O_DIRECT: not tmpfs).
    pub dir: PathBuf,
    /// Image size in bytes.
    pub size: u64,
    /// Rounds per row (medians are reported).
    pub rounds: usize,
    /// Run qemu-img bench beside thinvm.
    pub qemu: bool,
}

/// One row of results (medians).
#[derive(Debug, Clone)]
pub struct Row {
    /// raw, qcow2 fresh, qcow2 allocated.
    pub image: &'static str,
    /// e.g. "4K randread QD32".
    pub workload: String,
    /// "IOPS" or "MiB/s".
    pub unit: &'static str,
    /// thinvm median.
    pub thinvm: f64,
    /// qemu-img bench median.
    pub qemu: Option<f64>,
}

/// The results of a run.
#[derive(Debug, Clone, Default)]
pub struct Report {
    /// Engine used by thinvm.
    pub engine: String,
    /// Rows.
    pub rows: Vec<Row>,
}

impl std::fmt::Display for Report {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(f, "thinvm engine: {}; medians; O_DIRECT on both sides (qemu-img bench -t none -i io_uring)\n", self.engine)?;
        writeln!(
            f,
            "| image | workload | thinvm | qemu-img bench | thinvm / qemu |"
        )?;
        writeln!(f, "|---|---|---:|---:|---:|")?;
        for r in &self.rows {
            let (q, ratio) = match r.qemu {
                Some(q) if q > 0.0 => {
                    (format!("{q:.0} {}", r.unit), format!("{:.2}", r.thinvm / q))
                }
                _ => ("-".into(), "-".into()),
            };
            writeln!(
                f,
                "| {} | {} | {:.0} {} | {q} | {ratio} |",
                r.image, r.workload, r.thinvm, r.unit
            )?;
        }
        Ok(())
    }
}

#[derive(Clone, Copy)]
struct Work {
    write: bool,
    bs: u64,
    depth: usize,
    step: u64,
}

fn image_err(path: &Path, e: impl std::fmt::Display) -> BenchError {
    BenchError::Image {
        path: path.to_path_buf(),
        detail: e.to_string(),
    }
}

/// Runs `count` requests through thinvm's async disk; returns seconds.
fn thinvm_run(path: &Path, fmt: Format, w: Work, count: u64) -> Result<f64, BenchError> {
    let opts = OpenOptions {
        writable: w.write,
        direct: true,
        ..OpenOptions::default()
    };
    let disk = open_image(path, fmt, &opts).map_err(|e| image_err(path, e))?;
    let size = disk.size();
    let mut q = AsyncDisk::new(disk, best_engine(w.depth as u32));
    let mut bufs: Vec<IoBuf> = (0..w.depth)
        .map(|_| {
            let mut b = AlignedBuf::new(w.bs as usize)
                .ok_or_else(|| image_err(path, "buffer allocation"))?;
            b.as_mut_slice().fill(0xa5);
            Ok(IoBuf::Owned(b))
        })
        .collect::<Result<_, _>>()?;
    let (mut sent, mut done, mut offset) = (0u64, 0u64, 0u64);
    let start = Instant::now();
    while done < count {
        while sent < count && (sent - done) < w.depth as u64 {
            let Some(buf) = bufs.pop() else { break };
            let op = if w.write { DiskOp::Write } else { DiskOp::Read };
            q.submit(DiskRequest {
                id: sent,
                op,
                offset,
                buf,
            })
            .map_err(|e| image_err(path, e))?;
            sent += 1;
            offset = (offset + w.step) % size;
            if offset + w.bs > size {
                offset = 0;
            }
        }
        for c in q.poll(1).map_err(|e| image_err(path, e))? {
            c.result.map_err(|e| image_err(path, e))?;
            bufs.push(c.buf);
            done += 1;
        }
    }
    // qemu-img bench stops its clock before closing (and flushing) the image: so does this.
    let secs = start.elapsed().as_secs_f64();
    if w.write {
        q.submit(DiskRequest {
            id: u64::MAX,
            op: DiskOp::Flush,
            offset: 0,
            buf: AlignedBuf::new(0).expect("empty").into(),
        })
        .map_err(|e| image_err(path, e))?;
        for c in q.poll(1).map_err(|e| image_err(path, e))? {
            c.result.map_err(|e| image_err(path, e))?;
        }
    }
    Ok(secs)
}

/// Runs qemu-img bench; returns seconds.
fn qemu_run(path: &Path, fmt: Format, w: Work, count: u64) -> Result<f64, BenchError> {
    let mut args: Vec<String> = ["bench", "-t", "none", "-i", "io_uring", "-f", fmt.name()]
        .map(String::from)
        .to_vec();
    args.extend([
        "-c".into(),
        count.to_string(),
        "-d".into(),
        w.depth.to_string(),
    ]);
    args.extend([
        "-s".into(),
        w.bs.to_string(),
        "-S".into(),
        w.step.to_string(),
    ]);
    if w.write {
        args.push("-w".into());
    }
    args.push(path.display().to_string());
    let qerr = |detail: String| BenchError::Qemu {
        args: args.join(" "),
        detail,
    };
    let out = Command::new("qemu-img")
        .args(&args)
        .output()
        .map_err(|e| qerr(e.to_string()))?;
    let text = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        return Err(qerr(String::from_utf8_lossy(&out.stderr).into_owned()));
    }
    // "Run completed in 1.234 seconds." (excludes opening the image, as thinvm's timing does).
    text.lines()
        .find_map(|l| {
            l.strip_prefix("Run completed in ")?
                .split_whitespace()
                .next()?
                .parse::<f64>()
                .ok()
        })
        .map(|s| s.max(0.0005))
        .ok_or_else(|| qerr(format!("no timing in its output: {text}")))
}

fn fill(path: &Path, fmt: Format, size: u64) -> Result<(), BenchError> {
    let opts = OpenOptions {
        writable: true,
        ..OpenOptions::default()
    };
    let mut d = open_image(path, fmt, &opts).map_err(|e| image_err(path, e))?;
    let chunk = vec![0x5au8; 1 << 20];
    let mut off = 0;
    while off < size {
        let n = (size - off).min(chunk.len() as u64) as usize;
        d.write_at(&chunk[..n], off)
            .map_err(|e| image_err(path, e))?;
        off += n as u64;
    }
    d.flush().map_err(|e| image_err(path, e))
}

fn make(path: &Path, fmt: Format, size: u64, allocated: bool) -> Result<(), BenchError> {
    let _ = std::fs::remove_file(path);
    match fmt {
        Format::Raw => {
            crate::formats::raw::Raw::create(path, size).map_err(|e| image_err(path, e))?;
        }
        _ => create_file(
            path,
            &CreateOptions {
                size,
                ..CreateOptions::default()
            },
        )
        .map_err(|e| image_err(path, e))?,
    }
    if allocated {
        fill(path, fmt, size)?;
    }
    Ok(())
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v.get(v.len() / 2).copied().unwrap_or(0.0)
}

/// Runs every row, interleaving thinvm and qemu-img rounds.
pub fn run(cfg: &BenchConfig) -> Result<Report, BenchError> {
    std::fs::create_dir_all(&cfg.dir).map_err(|e| image_err(&cfg.dir, e))?;
    let stride = 4096 * 2047;
    let works: Vec<(String, Work)> = vec![
        (
            "4K randread QD1".into(),
            Work {
                write: false,
                bs: 4096,
                depth: 1,
                step: stride,
            },
        ),
        (
            "4K randread QD32".into(),
            Work {
                write: false,
                bs: 4096,
                depth: 32,
                step: stride,
            },
        ),
        (
            "4K randwrite QD1".into(),
            Work {
                write: true,
                bs: 4096,
                depth: 1,
                step: stride,
            },
        ),
        (
            "4K randwrite QD32".into(),
            Work {
                write: true,
                bs: 4096,
                depth: 32,
                step: stride,
            },
        ),
        (
            "1M seq read QD1".into(),
            Work {
                write: false,
                bs: 1 << 20,
                depth: 1,
                step: 1 << 20,
            },
        ),
        (
            "1M seq write QD1".into(),
            Work {
                write: true,
                bs: 1 << 20,
                depth: 1,
                step: 1 << 20,
            },
        ),
    ];
    let images: [(&'static str, Format, bool); 3] = [
        ("raw", Format::Raw, true),
        ("qcow2 fresh", Format::Qcow2, false),
        ("qcow2 allocated", Format::Qcow2, true),
    ];
    let mut report = Report {
        engine: best_engine(4).name().into(),
        rows: Vec::new(),
    };
    for (name, fmt, allocated) in images {
        let path = cfg
            .dir
            .join(format!("bench-{}.img", name.replace(' ', "-")));
        make(&path, fmt, cfg.size, allocated)?;
        for (wname, w) in &works {
            // Counts: about the whole image for 1 MiB, a fixed number of 4 KiB requests.
            let count = if w.bs >= 1 << 20 {
                cfg.size / w.bs
            } else {
                (cfg.size / 4096).min(20_000)
            };
            let (mut t, mut q) = (Vec::new(), Vec::new());
            for _ in 0..cfg.rounds.max(1) {
                // A fresh image is new for every run (reads then see only unallocated clusters).
                if !allocated {
                    make(&path, fmt, cfg.size, false)?;
                }
                t.push(thinvm_run(&path, fmt, *w, count)?);
                if cfg.qemu {
                    if !allocated {
                        make(&path, fmt, cfg.size, false)?;
                    }
                    q.push(qemu_run(&path, fmt, *w, count)?);
                }
            }
            let rate = |secs: f64| {
                if w.bs >= 1 << 20 {
                    (count * w.bs) as f64 / (1 << 20) as f64 / secs
                } else {
                    count as f64 / secs
                }
            };
            let unit = if w.bs >= 1 << 20 { "MiB/s" } else { "IOPS" };
            report.rows.push(Row {
                image: name,
                workload: wname.clone(),
                unit,
                thinvm: rate(median(&mut t)),
                qemu: (!q.is_empty()).then(|| rate(median(&mut q))),
            });
        }
        let _ = std::fs::remove_file(&path);
    }
    Ok(report)
}
