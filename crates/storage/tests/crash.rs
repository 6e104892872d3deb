//! Crash safety: every image a crash may leave (all writes up to the last completed sync, plus
//! any subset of the later ones) opens, has no corruption (leaks allowed, and repaired), and
//! holds every write acknowledged by a flush. Checked by thinvm and by `qemu-img check`.

mod common;

use common::*;
use storage::file::MemFile;
use storage::formats::qcow2::{create, CreateOptions, Qcow2, Qcow2Options};
use storage::formats::raw::Raw;
use storage::recording::{crash_image, Event, RecordingFile};
use storage::BlockBackend;

const SIZE: u64 = 1 << 20;
const BIG: u64 = 3 << 20;
const SECTOR: usize = 512;

struct Run {
    base: Vec<u8>,
    events: Vec<Event>,
    /// (log length when the flush returned, mirror then, index of the next op).
    flushes: Vec<(usize, Vec<u8>, usize)>,
    /// Sectors each op touched, in op order.
    ops: Vec<(usize, usize)>,
    backing: Option<Vec<u8>>,
    size: u64,
}

fn open(img: Vec<u8>, backing: &Option<Vec<u8>>, writable: bool) -> Qcow2 {
    let opts = Qcow2Options {
        writable,
        ..Qcow2Options::default()
    };
    let mut q =
        Qcow2::open(Box::new(MemFile::new(img, "crash.qcow2")), opts).expect("crash image opens");
    if let Some(b) = backing {
        q.set_backing(Box::new(
            Raw::from_file(Box::new(MemFile::new(b.clone(), "base.raw")), true).unwrap(),
        ));
    }
    q
}

fn record(opts: &CreateOptions, backing: Option<Vec<u8>>, seed: u64, prefill: u64) -> Run {
    let size = opts.size;
    let f = MemFile::new(Vec::new(), "crash.qcow2");
    create(&f, opts).unwrap();
    let base = f.contents();
    let (rec, log) = RecordingFile::new(Box::new(f));
    let mut q = Qcow2::open(
        Box::new(rec),
        Qcow2Options {
            writable: true,
            ..Qcow2Options::default()
        },
    )
    .unwrap();
    let mut mirror = backing.clone().unwrap_or_else(|| vec![0u8; size as usize]);
    if let Some(b) = &backing {
        q.set_backing(Box::new(
            Raw::from_file(Box::new(MemFile::new(b.clone(), "base.raw")), true).unwrap(),
        ));
    }
    let cs = opts.cluster_size;
    let mut rng = Rng(seed);
    let mut run = Run {
        base,
        events: Vec::new(),
        flushes: vec![(0, mirror.clone(), 0)],
        ops: Vec::new(),
        backing: backing.clone(),
        size,
    };
    if prefill > 0 {
        let buf = vec![0x3cu8; prefill as usize];
        q.write_at(&buf, 0).unwrap();
        mirror[..prefill as usize].copy_from_slice(&buf);
        run.ops.push((0, prefill as usize / SECTOR));
    }
    for _ in 0..120 {
        let off = rng.below(size / 512) * 512;
        let len = ((1 + rng.below(4 * cs / 512 + 2)) * 512).min(size - off);
        match rng.below(8) {
            0..=4 => {
                let mut buf = vec![0u8; len as usize];
                rng.fill(&mut buf);
                q.write_at(&buf, off).unwrap();
                mirror[off as usize..(off + len) as usize].copy_from_slice(&buf);
            }
            5 => {
                q.write_zeroes(off, len).unwrap();
                mirror[off as usize..(off + len) as usize].fill(0);
            }
            6 => {
                let start = off - off % cs;
                let n = (len.div_ceil(cs) * cs).min(size - start);
                q.discard(start, n).unwrap();
                mirror[start as usize..(start + n) as usize].fill(0);
                run.ops
                    .push((start as usize / SECTOR, (start + n) as usize / SECTOR));
                continue;
            }
            _ => {
                q.flush().unwrap();
                run.flushes.push((log.len(), mirror.clone(), run.ops.len()));
                continue;
            }
        }
        run.ops
            .push((off as usize / SECTOR, (off + len) as usize / SECTOR));
    }
    q.flush().unwrap();
    run.flushes.push((log.len(), mirror.clone(), run.ops.len()));
    drop(q);
    run.events = log.events();
    run
}

fn check_crashes(run: &Run, tag: &str, seed: u64, rounds: usize, qemu_every: usize) {
    let s = Scratch::new(tag);
    let mut rng = Rng(seed);
    let qemu = have_qemu_img();
    let n = run.events.len();
    for round in 0..rounds {
        let at = if round == 0 {
            n
        } else {
            rng.below(n as u64 + 1) as usize
        };
        let img = crash_image(&run.base, &run.events, at, &mut |_| rng.below(2) == 0);
        // The latest flush that had returned by then.
        let (_, durable, first_op) = run
            .flushes
            .iter()
            .rev()
            .find(|(pos, _, _)| *pos <= at)
            .unwrap();
        let mut exempt = vec![false; run.size as usize / SECTOR];
        for &(a, b) in &run.ops[*first_op..] {
            exempt[a..b].fill(true);
        }
        let mut q = open(img.clone(), &run.backing, false);
        let r = q.check(false).unwrap();
        assert_eq!(
            r.corruptions, 0,
            "crash at event {at}/{n}: {:?}",
            r.messages
        );
        let got = read_all(&mut q);
        for (i, ex) in exempt.iter().enumerate() {
            let sec = i * SECTOR..(i + 1) * SECTOR;
            assert!(
                *ex || got[sec.clone()] == durable[sec.clone()],
                "crash at event {at}/{n}: flushed sector {i} lost"
            );
        }
        if qemu && round % qemu_every == 0 {
            let path = s.path(&format!("crash{round}.qcow2"));
            std::fs::write(&path, &img).unwrap();
            if let Some(b) = &run.backing {
                std::fs::write(s.path("base.raw"), b).unwrap();
            }
            let (code, out) = qemu_img_status(&["check", p(&path)]);
            assert!(
                code == 0 || code == 3,
                "crash at event {at}/{n}: qemu-img check exit {code}: {out}"
            );
        }
        // Repair leaves no leaks and the same content.
        let mut q = open(img, &run.backing, true);
        let r = q.check(true).unwrap();
        assert_eq!(
            (r.corruptions, r.leaks),
            (0, 0),
            "repair after crash at {at}: {:?}",
            r.messages
        );
        assert_same("after repair", &read_all(&mut q), &got);
    }
}

#[test]
fn crashes_with_small_clusters_and_refcount_growth() {
    let opts = CreateOptions {
        size: BIG,
        cluster_size: 512,
        refcount_bits: 64,
        ..CreateOptions::default()
    };
    let run = record(&opts, None, 0xc0ffee, BIG - (512 << 10));
    assert!(run.events.iter().filter(|e| **e == Event::Sync).count() > 10);
    let grew = run
        .events
        .iter()
        .any(|e| matches!(e, Event::Write(48, d) if d.len() == 12));
    assert!(grew, "the workload should outgrow the first refcount table");
    check_crashes(&run, "crash-small", 1, 60, 6);
}

#[test]
fn crashes_in_an_overlay() {
    let s = Scratch::new("crash-ov-base");
    let base = patterned_raw(&s.path("b.raw"), SIZE, 17);
    let opts = CreateOptions {
        size: SIZE,
        cluster_size: 4096,
        backing_file: Some("base.raw".into()),
        backing_format: Some("raw".into()),
        ..CreateOptions::default()
    };
    let run = record(&opts, Some(base), 0xdecaf, 0);
    check_crashes(&run, "crash-ov", 2, 120, 10);
}

#[test]
fn recording_sees_the_ordered_flush() {
    // A write to a fresh cluster: the refcount is synced before the L2 table is written, and
    // the L2 table before the L1 entry.
    let f = MemFile::new(Vec::new(), "o.qcow2");
    create(
        &f,
        &CreateOptions {
            size: SIZE,
            cluster_size: 4096,
            ..CreateOptions::default()
        },
    )
    .unwrap();
    let l1 = u64::from_be_bytes(f.contents()[40..48].try_into().unwrap());
    let (rec, log) = RecordingFile::new(Box::new(f));
    let mut q = Qcow2::open(
        Box::new(rec),
        Qcow2Options {
            writable: true,
            ..Qcow2Options::default()
        },
    )
    .unwrap();
    q.write_at(&[1u8; 4096], 8192).unwrap();
    q.flush().unwrap();
    let ev = log.events();
    let l1_write = ev
        .iter()
        .position(|e| matches!(e, Event::Write(o, d) if *o == l1 && d.len() == 8))
        .expect("L1 entry written");
    let Event::Write(_, l1e) = &ev[l1_write] else {
        unreachable!()
    };
    let l2off = u64::from_be_bytes(l1e[..8].try_into().unwrap()) & 0x00ff_ffff_ffff_fe00;
    let l2_write = ev
        .iter()
        .position(|e| matches!(e, Event::Write(o, d) if *o == l2off && d.iter().any(|&b| b != 0)))
        .expect("L2 table written");
    let data_write = ev
        .iter()
        .position(|e| matches!(e, Event::Write(_, d) if d == &vec![1u8; 4096]))
        .expect("data written");
    let sync_between = |a: usize, b: usize| ev[a..b].contains(&Event::Sync);
    assert!(data_write < l2_write && sync_between(data_write, l2_write));
    assert!(l2_write < l1_write && sync_between(l2_write, l1_write));
    assert_eq!(ev.last(), Some(&Event::Sync));
}
