//! `thinvm image`: through the module's entry point and through the binary.

#[path = "../src/image_cmd.rs"]
#[allow(dead_code)]
mod image_cmd;

use std::path::{Path, PathBuf};
use std::process::Command;

use clap::Parser;
use image_cmd::{run, ImageCommand};

#[derive(Parser)]
struct Cli {
    #[command(subcommand)]
    cmd: ImageCommand,
}

fn image(args: &[&str]) -> i32 {
    let cli = Cli::try_parse_from(std::iter::once("image").chain(args.iter().copied())).unwrap();
    run(cli.cmd).unwrap()
}

fn image_err(args: &[&str]) -> String {
    let cli = Cli::try_parse_from(std::iter::once("image").chain(args.iter().copied())).unwrap();
    format!("{:#}", run(cli.cmd).unwrap_err())
}

struct Dir(PathBuf);
impl Dir {
    fn new(tag: &str) -> Dir {
        let d = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
            .join(format!("image-cli-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        Dir(d)
    }
    fn p(&self, n: &str) -> String {
        self.0.join(n).to_str().unwrap().to_owned()
    }
}
impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn qemu_img() -> bool {
    let ok = Command::new("qemu-img")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !ok {
        eprintln!("\n*** SKIPPED: qemu-img is not installed (apt-get install qemu-utils) ***\n");
    }
    ok
}

fn qemu(args: &[&str]) -> (i32, String) {
    let o = Command::new("qemu-img").args(args).output().unwrap();
    (
        o.status.code().unwrap_or(-1),
        format!(
            "{}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        ),
    )
}

fn fill(path: &str, seed: u8) -> Vec<u8> {
    let mut v = vec![0u8; 4 << 20];
    for (i, b) in v.iter_mut().enumerate().take(3 << 20) {
        if (i / 65536) % 3 != 1 {
            *b = (i as u8).wrapping_mul(31).wrapping_add(seed);
        }
    }
    std::fs::write(path, &v).unwrap();
    v
}

#[test]
fn create_overlay_write_commit_convert() {
    let d = Dir::new("flow");
    let base = d.p("base.raw");
    let data = fill(&base, 1);
    assert_eq!(
        image(&[
            "create",
            "-f",
            "qcow2",
            "-b",
            "base.raw",
            "-F",
            "raw",
            &d.p("ov.qcow2")
        ]),
        0
    );
    let chain = storage::ops::image_info(Path::new(&d.p("ov.qcow2")), None).unwrap();
    assert_eq!(chain.len(), 2);
    assert_eq!(chain[0].virtual_size, 4 << 20);
    assert_eq!(chain[0].backing_format.as_deref(), Some("raw"));
    assert_eq!(image(&["info", &d.p("ov.qcow2")]), 0);
    assert_eq!(image(&["info", "--json", &d.p("ov.qcow2")]), 0);

    // Write into the overlay through the library, then commit it back.
    {
        let o = storage::OpenOptions {
            writable: true,
            ..Default::default()
        };
        let mut ov =
            storage::open_image(Path::new(&d.p("ov.qcow2")), storage::Format::Qcow2, &o).unwrap();
        ov.write_at(&[0xee; 8192], 65536).unwrap();
        ov.write_zeroes(0, 4096).unwrap();
        ov.flush().unwrap();
    }
    assert_eq!(
        std::fs::read(&base).unwrap(),
        data,
        "the backing file is untouched before commit"
    );
    assert_eq!(image(&["check", &d.p("ov.qcow2")]), 0);
    assert_eq!(image(&["commit", "--quiet", &d.p("ov.qcow2")]), 0);
    let after = std::fs::read(&base).unwrap();
    let mut want = data.clone();
    want[65536..65536 + 8192].fill(0xee);
    want[..4096].fill(0);
    assert_eq!(after, want);

    // Convert the chain to qcow2 and back to raw: same bytes; zero data is not stored.
    assert_eq!(
        image(&[
            "convert",
            "--quiet",
            "-O",
            "qcow2",
            &d.p("ov.qcow2"),
            &d.p("flat.qcow2")
        ]),
        0
    );
    assert_eq!(
        image(&[
            "convert",
            "--quiet",
            "-O",
            "raw",
            &d.p("flat.qcow2"),
            &d.p("flat.raw")
        ]),
        0
    );
    assert_eq!(std::fs::read(d.p("flat.raw")).unwrap(), want);
    let flat = storage::ops::image_info(Path::new(&d.p("flat.qcow2")), None).unwrap();
    assert!(
        flat[0].actual_size < 3 << 20,
        "zero stretches were skipped: {}",
        flat[0].actual_size
    );
    if qemu_img() {
        let (c, out) = qemu(&["check", &d.p("flat.qcow2")]);
        assert_eq!(c, 0, "{out}");
        let (c, out) = qemu(&[
            "compare",
            "-f",
            "qcow2",
            "-F",
            "raw",
            &d.p("flat.qcow2"),
            &base,
        ]);
        assert_eq!(c, 0, "{out}");
    }
}

#[test]
fn convert_from_vhd_and_vhdx() {
    if !qemu_img() {
        return;
    }
    let d = Dir::new("import");
    let src = d.p("src.raw");
    let data = fill(&src, 9);
    for (fmt, ext) in [("vpc", "vhd"), ("vhdx", "vhdx")] {
        let img = d.p(&format!("disk.{ext}"));
        let (c, out) = qemu(&[
            "convert",
            "-f",
            "raw",
            "-O",
            fmt,
            "-o",
            if fmt == "vpc" {
                "force_size=on"
            } else {
                "block_size=1M"
            },
            &src,
            &img,
        ]);
        assert_eq!(c, 0, "{out}");
        let out_img = d.p(&format!("from-{ext}.qcow2"));
        assert_eq!(
            image(&["convert", "--quiet", "-O", "qcow2", &img, &out_img]),
            0
        );
        let raw = d.p(&format!("from-{ext}.raw"));
        assert_eq!(
            image(&["convert", "--quiet", "-O", "raw", &out_img, &raw]),
            0
        );
        assert_eq!(std::fs::read(&raw).unwrap(), data, "{fmt}");
    }
}

/// Makes a leak: a cluster past the end of the metadata gets refcount 1 and nothing refers
/// to it (16-bit refcounts, as created by default).
fn leak_clusters(path: &std::path::Path, n: u64) {
    use std::os::unix::fs::FileExt;
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .unwrap();
    let mut h = [0u8; 512];
    f.read_exact_at(&mut h, 0).unwrap();
    let cs = 1u64 << u32::from_be_bytes(h[20..24].try_into().unwrap());
    let rt = u64::from_be_bytes(h[48..56].try_into().unwrap());
    let mut e = [0u8; 8];
    f.read_exact_at(&mut e, rt).unwrap();
    let block = u64::from_be_bytes(e);
    let len = f.metadata().unwrap().len().next_multiple_of(cs);
    let first = len / cs;
    for c in first..first + n {
        assert!(
            c < cs / 2,
            "cluster {c} is covered by the first refcount block"
        );
        f.write_all_at(&1u16.to_be_bytes(), block + c * 2).unwrap();
    }
    f.set_len(len + n * cs).unwrap();
}

#[test]
fn check_exit_codes_and_errors() {
    let d = Dir::new("check");
    assert_eq!(
        image(&["create", "-f", "qcow2", "-s", "1M", &d.p("a.qcow2")]),
        0
    );
    assert_eq!(image(&["check", &d.p("a.qcow2")]), 0);
    // Leak a cluster: a refcount for a cluster nothing refers to.
    leak_clusters(Path::new(&d.p("a.qcow2")), 1);
    assert_eq!(image(&["check", &d.p("a.qcow2")]), 3);
    assert_eq!(image(&["check", "--repair", &d.p("a.qcow2")]), 0);
    assert_eq!(image(&["check", &d.p("a.qcow2")]), 0);
    let e = image_err(&["create", "-f", "qcow2", "-s", "1M", &d.p("a.qcow2")]);
    assert!(e.contains("already exists"), "{e}");
    let e = image_err(&["create", "-f", "qcow2", "-s", "12Q", &d.p("b.qcow2")]);
    assert!(e.contains("unknown unit"), "{e}");
    let e = image_err(&["convert", "-O", "vhdx", &d.p("a.qcow2"), &d.p("c.vhdx")]);
    assert!(e.contains("raw and qcow2 images only"), "{e}");
    let e = image_err(&["info", &d.p("missing.qcow2")]);
    assert!(e.contains("missing.qcow2"), "{e}");
}

fn bin(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_thinvm"))
        .args(args)
        .output()
        .unwrap()
}

#[test]
fn binary_create_info_json_check() {
    let d = Dir::new("bin");
    let img = d.p("x.qcow2");
    assert!(
        bin(&["image", "create", "--format", "qcow2", "--size", "10G", &img])
            .status
            .success()
    );
    let o = bin(&["image", "info", "--json", &img]);
    assert!(o.status.success());
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(text.contains("\"virtual_size\": 10737418240"), "{text}");
    let o = bin(&["image", "check", &img]);
    assert_eq!(
        o.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&o.stdout)
    );
}
