//! A writer process killed with SIGKILL at random points while writing with flushes: the image
//! then opens in thinvm and in qemu-img, `qemu-img check` finds no corruption (leaks allowed,
//! and repaired by check with repair), and every write acknowledged by a flush is there.
//! (The page cache keeps every completed write, so this shows consistency at any instant;
//! tests/crash.rs covers lost unsynced writes.)

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;
use storage::chain::open_qcow2;
use storage::formats::qcow2::{create_file, CreateOptions};
use storage::{open_image, Format, OpenOptions};

const SIZE: u64 = 4 << 20;
const BLOCK: u64 = 64 << 10;
const SLOTS: u64 = SIZE / BLOCK;

/// Write number `k`: a 64 KiB pattern at a slot, sometimes a zeroing or a discard.
fn op(k: u64) -> (u64, Option<u8>) {
    let slot = (k * 7 + k / SLOTS) % SLOTS;
    let fill = if k % 11 == 5 {
        None
    } else {
        Some((k % 251 + 1) as u8)
    };
    (slot * BLOCK, fill)
}

/// Not a test: the writer process that `writer_killed_with_sigkill` starts and kills.
#[test]
#[ignore = "the child process of writer_killed_with_sigkill"]
fn sigkill_child_writer() {
    let Some(path) = std::env::var_os("STORAGE_SIGKILL_IMAGE") else {
        eprintln!("sigkill_child_writer only runs as the child of writer_killed_with_sigkill");
        return;
    };
    let o = OpenOptions {
        writable: true,
        ..OpenOptions::default()
    };
    let mut d = open_image(std::path::Path::new(&path), Format::Qcow2, &o).unwrap();
    for k in 0..200_000u64 {
        let (off, fill) = op(k);
        println!("START {k}");
        match fill {
            Some(b) => d.write_at(&vec![b; BLOCK as usize], off).unwrap(),
            None => d.discard(off, BLOCK).unwrap(),
        }
        if k % 3 == 2 {
            d.flush().unwrap();
            println!("FLUSHED {k}");
        }
    }
}

#[test]
fn writer_killed_with_sigkill() {
    let s = Scratch::new("sigkill");
    let mut rng = Rng(0x5151);
    let qemu = have_qemu_img();
    for trial in 0..4 {
        let img = s.path(&format!("k{trial}.qcow2"));
        let cs = [4096u64, 65536, 512, 16384][trial];
        create_file(
            &img,
            &CreateOptions {
                size: SIZE,
                cluster_size: cs,
                ..CreateOptions::default()
            },
        )
        .unwrap();
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args([
                "sigkill_child_writer",
                "--exact",
                "--ignored",
                "--nocapture",
                "--test-threads=1",
            ])
            .env("STORAGE_SIGKILL_IMAGE", &img)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let out = child.stdout.take().unwrap();
        let reader = std::thread::spawn(move || {
            let (mut flushed, mut started) = (None, 0u64);
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                if let Some(n) = line.strip_prefix("FLUSHED ") {
                    flushed = n.trim().parse::<u64>().ok();
                }
                if let Some(n) = line.strip_prefix("START ") {
                    started = n.trim().parse::<u64>().unwrap_or(started);
                }
            }
            flushed.map(|f| (f, started))
        });
        std::thread::sleep(Duration::from_millis(150 + rng.below(400)));
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        let Some((last, started)) = reader.join().unwrap() else {
            eprintln!("trial {trial}: the writer was killed before its first flush");
            continue;
        };
        // The expected content after the last acknowledged flush; later writes are exempt.
        let mut want = vec![0u8; SIZE as usize];
        for k in 0..=last {
            let (off, fill) = op(k);
            want[off as usize..(off + BLOCK) as usize].fill(fill.unwrap_or(0));
        }
        // Writes started after the last acknowledged flush may or may not be there.
        let mut exempt = vec![false; SLOTS as usize];
        for k in last + 1..=started {
            exempt[(op(k).0 / BLOCK) as usize] = true;
        }
        assert!(
            started - last <= 3,
            "at most one flush interval is unacknowledged"
        );
        if qemu {
            let (code, text) = qemu_img_status(&["check", p(&img)]);
            assert!(
                code == 0 || code == 3,
                "trial {trial}: qemu-img check exit {code}: {text}"
            );
        }
        let mut q = open_qcow2(
            &img,
            &OpenOptions {
                writable: true,
                ..OpenOptions::default()
            },
        )
        .unwrap();
        let r = q.check(true).unwrap();
        assert_eq!(
            (r.corruptions, r.leaks),
            (0, 0),
            "trial {trial}: {:?}",
            r.messages
        );
        let got = read_all(&mut q);
        for (slot, ex) in exempt.iter().enumerate() {
            let range = slot * BLOCK as usize..(slot + 1) * BLOCK as usize;
            assert!(
                *ex || got[range.clone()] == want[range.clone()],
                "trial {trial}: flushed slot {slot} lost (last flush after write {last})"
            );
        }
        drop(q);
        if qemu {
            let (code, text) = qemu_img_status(&["check", p(&img)]);
            assert_eq!(code, 0, "trial {trial} after repair: {text}");
        }
        eprintln!("trial {trial}: killed after write {started}, last flush after write {last}");
    }
}
