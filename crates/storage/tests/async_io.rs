//! The asynchronous disk queue, with io_uring (when the kernel has it) and the synchronous
//! engine, on raw and qcow2 (fresh and allocated, with a backing file), buffered and O_DIRECT.

mod common;

use common::*;
use std::collections::HashMap;
use storage::formats::qcow2::{create_file, CreateOptions};

use storage::io::aligned::AlignedBuf;
use storage::io::buf::{ExternalIov, IoBuf};
use storage::io::disk::{AsyncDisk, DiskOp, DiskRequest};
use storage::io::engine::{best_engine, Engine, SyncEngine};
use storage::{open_image, Format, OpenOptions};

const SIZE: u64 = 4 << 20;

fn buf_from(data: &[u8]) -> AlignedBuf {
    let mut b = AlignedBuf::new(data.len()).unwrap();
    b.as_mut_slice().copy_from_slice(data);
    b
}

/// Memory outside the request, as a guest's buffers are: `len` bytes one byte into `backing`
/// (so never aligned), in two parts of odd sizes.
fn external(backing: &mut [u8], len: usize) -> IoBuf {
    let base = backing[1..].as_mut_ptr();
    let first = len.min(1000);
    // SAFETY: the backing vector is kept (in `keep`) until the request's completion.
    let parts = unsafe { [(base, first), (base.add(first), len - first)] };
    // SAFETY: as above.
    IoBuf::External(unsafe { ExternalIov::new(&parts) })
}

/// Random 4 KiB-aligned writes at queue depth 32 with flushes, then reads of everything;
/// with `ext`, the data is in external memory (unaligned: bounced for O_DIRECT).
fn exercise(mut q: AsyncDisk, mirror: &mut [u8], seed: u64, ext: bool) {
    let mut keep: HashMap<u64, Vec<u8>> = HashMap::new();
    let mut rng = Rng(seed);
    let mut id = 0u64;
    for _round in 0..8 {
        // 32 writes in flight at once, each inside its own 64 KiB slot (overlapping writes in
        // flight have no defined order).
        let mut slots: Vec<u64> = (0..SIZE / 65536).collect();
        for i in (1..slots.len()).rev() {
            slots.swap(i, rng.below(i as u64 + 1) as usize);
        }
        for &slot in slots.iter().take(32) {
            let first = rng.below(16);
            let off = slot * 65536 + first * 4096;
            let len = (1 + rng.below(16 - first)) * 4096;
            let mut data = vec![0u8; len as usize];
            rng.fill(&mut data);
            mirror[off as usize..(off + len) as usize].copy_from_slice(&data);
            id += 1;
            let buf = if ext {
                let mut backing = vec![0u8; data.len() + 1];
                backing[1..].copy_from_slice(&data);
                let b = external(&mut backing, data.len());
                keep.insert(id, backing);
                b
            } else {
                buf_from(&data).into()
            };
            q.submit(DiskRequest {
                id,
                op: DiskOp::Write,
                offset: off,
                buf,
            })
            .unwrap();
        }
        let mut left = q.pending();
        while left > 0 {
            for c in q.poll(1).unwrap() {
                c.result.unwrap();
                keep.remove(&c.id);
                left -= 1;
            }
        }
        id += 1;
        q.submit(DiskRequest {
            id,
            op: DiskOp::Flush,
            offset: 0,
            buf: AlignedBuf::new(0).unwrap().into(),
        })
        .unwrap();
        for c in q.poll(1).unwrap() {
            c.result.unwrap();
        }
    }
    // Read everything back at depth 32 in 64 KiB requests.
    let mut got = vec![0u8; SIZE as usize];
    let mut next = 0u64;
    let mut outstanding = 0;
    while next < SIZE || outstanding > 0 {
        while next < SIZE && outstanding < 32 {
            let buf = if ext {
                let mut backing = vec![0x5au8; 65536 + 1];
                let b = external(&mut backing, 65536);
                keep.insert(next, backing);
                b
            } else {
                AlignedBuf::new(65536).unwrap().into()
            };
            q.submit(DiskRequest {
                id: next,
                op: DiskOp::Read,
                offset: next,
                buf,
            })
            .unwrap();
            next += 65536;
            outstanding += 1;
        }
        for c in q.poll(1).unwrap() {
            c.result.unwrap();
            let data = match keep.remove(&c.id) {
                Some(backing) => backing[1..].to_vec(),
                None => c.buf.owned().unwrap().to_vec(),
            };
            got[c.id as usize..c.id as usize + 65536].copy_from_slice(&data);
            outstanding -= 1;
        }
    }
    assert_same("async read-back", &got, mirror);
}

type MakeEngine = fn() -> Box<dyn Engine>;

fn engines() -> Vec<(&'static str, MakeEngine)> {
    vec![
        ("best", || best_engine(32)),
        ("sync", || Box::new(SyncEngine::default())),
    ]
}

#[test]
fn raw_and_qcow2_through_both_engines() {
    let s = Scratch::new("async");
    let base = s.path("base.raw");
    let original = patterned_raw(&base, SIZE, 4);
    let direct_ok = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags_direct()
        .open(&base)
        .is_ok();
    println!("engine: {}", best_engine(4).name());
    for (ename, engine) in engines() {
        for direct in [false, true] {
            if direct && !direct_ok {
                eprintln!(
                    "*** O_DIRECT unsupported on {}: skipping direct variants ***",
                    s.0.display()
                );
                continue;
            }
            let tag = format!("{ename}-{direct}");
            let opts = OpenOptions {
                writable: true,
                direct,
                ..OpenOptions::default()
            };
            // raw
            let raw = s.path(&format!("r-{tag}.raw"));
            std::fs::copy(&base, &raw).unwrap();
            let mut mirror = original.clone();
            for (seed, ext) in [(1, false), (2, true)] {
                exercise(
                    AsyncDisk::new(open_image(&raw, Format::Raw, &opts).unwrap(), engine()),
                    &mut mirror,
                    seed,
                    ext,
                );
            }
            assert_same("raw file", &std::fs::read(&raw).unwrap(), &mirror);
            // qcow2 overlay: the first passes allocate (sync path), later ones overwrite in place
            // (engine); every other pass with external memory.
            let ov = s.path(&format!("o-{tag}.qcow2"));
            let c = CreateOptions {
                size: SIZE,
                backing_file: Some("base.raw".into()),
                backing_format: Some("raw".into()),
                ..CreateOptions::default()
            };
            create_file(&ov, &c).unwrap();
            let mut mirror = original.clone();
            for pass in 0..4 {
                exercise(
                    AsyncDisk::new(open_image(&ov, Format::Qcow2, &opts).unwrap(), engine()),
                    &mut mirror,
                    10 + pass,
                    pass % 2 == 1,
                );
            }
            if have_qemu_img() {
                let (code, out) = qemu_img_status(&["check", p(&ov)]);
                assert_eq!(code, 0, "{out}");
            }
        }
    }
}

trait Direct {
    fn custom_flags_direct(&mut self) -> &mut Self;
}
impl Direct for std::fs::OpenOptions {
    fn custom_flags_direct(&mut self) -> &mut Self {
        use std::os::unix::fs::OpenOptionsExt;
        self.custom_flags(libc::O_DIRECT)
    }
}

/// One request at a time (the io_uring engine runs a lone request with preadv/pwritev): writes
/// then reads, from owned and from external buffers, against a mirror.
#[test]
fn lone_requests_round_trip() {
    let s = Scratch::new("async-lone");
    let raw = s.path("lone.raw");
    let mut mirror = patterned_raw(&raw, SIZE, 5);
    let opts = OpenOptions {
        writable: true,
        ..OpenOptions::default()
    };
    let mut q = AsyncDisk::new(
        open_image(&raw, Format::Raw, &opts).unwrap(),
        best_engine(32),
    );
    let mut rng = Rng(77);
    for id in 0..64u64 {
        let off = rng.below(SIZE / 4096) * 4096;
        let mut data = vec![0u8; 4096];
        rng.fill(&mut data);
        mirror[off as usize..off as usize + 4096].copy_from_slice(&data);
        let mut backing = vec![0u8; 4097];
        backing[1..].copy_from_slice(&data);
        let buf = if id % 2 == 0 {
            buf_from(&data).into()
        } else {
            external(&mut backing, 4096)
        };
        q.submit(DiskRequest {
            id,
            op: DiskOp::Write,
            offset: off,
            buf,
        })
        .unwrap();
        let done = q.poll(1).unwrap();
        assert_eq!(done.len(), 1);
        done.into_iter().for_each(|c| c.result.unwrap());
    }
    for (i, off) in (0..SIZE).step_by(65536).enumerate() {
        let mut backing = vec![0u8; 65537];
        let buf = if i % 2 == 0 {
            AlignedBuf::new(65536).unwrap().into()
        } else {
            external(&mut backing, 65536)
        };
        q.submit(DiskRequest {
            id: off,
            op: DiskOp::Read,
            offset: off,
            buf,
        })
        .unwrap();
        let c = q.poll(1).unwrap().pop().unwrap();
        c.result.unwrap();
        let got = match c.buf.owned() {
            Some(b) => b.to_vec(),
            None => backing[1..].to_vec(),
        };
        assert_same(
            "lone read",
            &got,
            &mirror[off as usize..off as usize + 65536],
        );
    }
}
