//! A quick mutation run of the fuzz entry points, so every `cargo test` exercises the parsers
//! with damaged images (the cargo-fuzz targets in fuzz/ go much further).

mod common;

use common::*;
use storage::formats::qcow2::{create_file, CreateOptions};
use storage::{fuzz_api, open_image, Format, OpenOptions};

fn mutate(seed: &[u8], rng: &mut Rng, hot: usize) -> Vec<u8> {
    let mut d = seed.to_vec();
    for _ in 0..1 + rng.below(6) {
        // Mostly in the metadata near the start, sometimes anywhere.
        let span = if rng.below(4) == 0 {
            d.len()
        } else {
            hot.min(d.len())
        };
        let at = rng.below(span as u64) as usize;
        match rng.below(4) {
            0 => d[at] ^= 1 << rng.below(8),
            1 => d[at] = 0xff,
            2 => d[at] = 0,
            _ => {
                let cut = rng.below(d.len() as u64 + 1) as usize;
                d.truncate(cut.max(1));
            }
        }
        if d.is_empty() {
            break;
        }
    }
    d
}

#[test]
fn qcow2_mutations_never_panic() {
    let s = Scratch::new("fuzzq");
    let mut seeds = Vec::new();
    for (i, (cs, ver, backing)) in [(512u64, 3u32, false), (4096, 2, false), (65536, 3, true)]
        .into_iter()
        .enumerate()
    {
        let img = s.path(&format!("s{i}.qcow2"));
        let opts = CreateOptions {
            size: 1 << 20,
            cluster_size: cs,
            version: ver,
            backing_file: backing.then(|| "b.raw".into()),
            backing_format: backing.then(|| "raw".into()),
            ..CreateOptions::default()
        };
        create_file(&img, &opts).unwrap();
        {
            let mut d = open_image(
                &img,
                Format::Qcow2,
                &OpenOptions {
                    writable: true,
                    ..Default::default()
                },
            );
            if let Ok(d) = d.as_mut() {
                d.write_at(&[0x42; 5000], 1000).unwrap();
                d.write_zeroes(300_000, 70_000).unwrap();
            }
        }
        seeds.push((std::fs::read(&img).unwrap(), (4 * cs) as usize));
    }
    let mut rng = Rng(0xfeed);
    for (seed, hot) in &seeds {
        fuzz_api::qcow2(seed);
        for _ in 0..300 {
            fuzz_api::qcow2(&mutate(seed, &mut rng, *hot));
        }
    }
}

#[test]
fn vhd_and_vhdx_mutations_never_panic() {
    if !have_qemu_img() {
        return;
    }
    let s = Scratch::new("fuzzv");
    let vhd = s.path("a.vhd");
    let vhdx = s.path("a.vhdx");
    run("qemu-img", &["create", "-q", "-f", "vpc", p(&vhd), "1M"]);
    run("qemu-io", &["-f", "vpc", "-c", "write -P 1 0 4k", p(&vhd)]);
    run(
        "qemu-img",
        &[
            "create",
            "-q",
            "-f",
            "vhdx",
            "-o",
            "log_size=1M,block_size=1M",
            p(&vhdx),
            "2M",
        ],
    );
    let mut rng = Rng(0xbeef);
    let v = std::fs::read(&vhd).unwrap();
    let x = std::fs::read(&vhdx).unwrap();
    fuzz_api::vhd(&v);
    fuzz_api::vhdx(&x);
    for _ in 0..300 {
        fuzz_api::vhd(&mutate(&v, &mut rng, 4096));
        // The VHDX metadata sits in the first few hundred KiB and at the metadata region.
        fuzz_api::vhdx(&mutate(&x, &mut rng, 4 << 20));
    }
}
