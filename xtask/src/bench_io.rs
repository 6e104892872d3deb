//! `cargo xtask bench io`: disk and network throughput of thinvm (its network card on the
//! userspace data path, and with `vhost=on`) beside QEMU (`-M pc`, virtio-blk-pci and
//! virtio-net-pci, vhost-net off and on), in one outer boot, rounds interleaved.
//!
//! Every VMM gets the same guest (Debian's kernel, the busybox initramfs, 256 MiB, 1 vCPU), the
//! same 256 MiB raw disk file on the outer machine's tmpfs (so the figures are the virtio path,
//! not an emulated disk underneath), a read-only tools disk with fio and iperf3, and a TAP that
//! faces an iperf3 server in the outer machine. The guest runs fio with O_DIRECT on /dev/vda
//! (4 KiB random read and write at depth 1 and 32, 1 MiB sequential read and write) and
//! iperf3 in both directions; see xtask/guest/bench-io.sh.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{bail, Context, Result};

use crate::bench::median;
use testbed::{GuestSpec, OuterOptions, OuterSpec, Scenario, Script, Testbed, TestbedConfig};

const MEM_MIB: u32 = 256;
const MAC: &str = "02:54:00:10:00:02";
const GUEST_MODULES: [&str; 9] = [
    "virtio",
    "virtio_ring",
    "virtio_pci_modern_dev",
    "virtio_pci_legacy_dev",
    "virtio_pci",
    "virtio_blk",
    "failover",
    "net_failover",
    "virtio_net",
];

/// The VMMs compared: label and the command line that starts it on TAP `$TAP`.
fn vmms() -> Vec<(&'static str, String)> {
    let thinvm = |net_extra: &str| {
        format!(
            "\"$THINVM\" run --testbed never --kernel \"$GUEST_BZIMAGE\" \
             --initrd \"$GUEST_INITRD\" --cpus 1 --memory {MEM_MIB}M --disk path=/tmp/bench.raw \
             --disk path=/tmp/tools.img,readonly=on --net tap=$TAP,mac={MAC}{net_extra} \
             --cmdline \"$CMDLINE\""
        )
    };
    let qemu = |vhost: &str| {
        format!(
            "\"$QEMU\" -enable-kvm -M pc -nodefaults -cpu host -m {MEM_MIB} -smp 1 \
             -display none -serial stdio -no-reboot -kernel \"$GUEST_BZIMAGE\" \
             -initrd \"$GUEST_INITRD\" -append \"$CMDLINE\" \
             -drive if=none,id=d0,file=/tmp/bench.raw,format=raw \
             -device virtio-blk-pci,drive=d0 \
             -drive if=none,id=d1,file=/tmp/tools.img,format=raw,readonly=on \
             -device virtio-blk-pci,drive=d1 \
             -netdev tap,id=n0,ifname=$TAP,script=no,downscript=no,vhost={vhost} \
             -device virtio-net-pci,netdev=n0,mac={MAC},romfile="
        )
    };
    vec![
        ("thinvm", thinvm("")),
        ("thinvm-vhost", thinvm(",vhost=on")),
        ("qemu", qemu("off")),
        ("qemu-vhost", qemu("on")),
    ]
}

/// The outer side of one run: the disk file and the iperf3 server (once per boot), the VMM in
/// the background, its TAP addressed as soon as it exists.
fn script(label: &str, cmd: &str, tap: &str, secs: u32) -> String {
    format!(
        r#"CMDLINE='console=ttyS0 reboot=k panic=-1 quiet thinvm.test=bench-io thinvm.bench_secs={secs}'
TAP={tap}
[ -e /tmp/bench.raw ] || dd if=/dev/zero of=/tmp/bench.raw bs=1M count=256 2>/dev/null
[ -e /tmp/tools.img ] || dd if="$SCRATCH_DISK" of=/tmp/tools.img bs=1M 2>/dev/null
pidof iperf3 >/dev/null || iperf3 -s -D
{cmd} </dev/null >/tmp/out-{label} 2>/tmp/err-{label} &
pid=$!
i=0
until ip link show $TAP >/dev/null 2>&1; do
    i=$((i + 1)); [ $i -ge 600 ] && break; sleep 0.1
done
ip addr add 10.213.10.1/24 dev $TAP
ip link set $TAP up
wait $pid
rc=$?
sed 's/@@\(IO\|NET\) /@@\1 label={label} /' /tmp/out-{label}
sed 's/^/STDERR: /' /tmp/err-{label}
exit $rc
"#
    )
}

/// One `@@IO ...@@` or `@@NET ...@@` line: (label, test, figure, second figure).
fn parse_line(line: &str) -> Option<(String, String, f64, f64)> {
    let (_, rest) = line
        .split_once("@@IO ")
        .or_else(|| line.split_once("@@NET "))?;
    let fields: BTreeMap<&str, &str> = rest
        .trim_end()
        .trim_end_matches("@@")
        .split_whitespace()
        .filter_map(|kv| kv.split_once('='))
        .collect();
    let num = |k: &str| fields.get(k).and_then(|v| v.parse::<f64>().ok());
    let (a, b) = match num("mbps") {
        Some(m) => (m, 0.0),
        None => (num("iops")?, num("bw_kib")?),
    };
    Some((
        fields.get("label")?.to_string(),
        fields.get("test")?.to_string(),
        a,
        b,
    ))
}

/// A read-only ext4 image with fio and iperf3 under /bin and every library they load under
/// /lib (with the dynamic loader), so the guest runs them through the loader.
fn tools_image(dir: &Path) -> Result<PathBuf> {
    let root = dir.join("tools");
    std::fs::create_dir_all(root.join("bin"))?;
    std::fs::create_dir_all(root.join("lib"))?;
    for tool in ["fio", "iperf3"] {
        let path = ["/usr/bin", "/bin"]
            .iter()
            .map(|d| Path::new(d).join(tool))
            .find(|p| p.exists())
            .with_context(|| format!("{tool} is not installed (scripts/deps.sh installs it)"))?;
        std::fs::copy(&path, root.join("bin").join(tool))?;
        for lib in testbed::ldd::libraries(&path)? {
            let name = lib.file_name().context("library without a name")?;
            std::fs::copy(&lib, root.join("lib").join(name))?;
        }
    }
    let img = dir.join("tools.img");
    let st = Command::new("mkfs.ext4")
        .args(["-q", "-F", "-d"])
        .arg(&root)
        .arg(&img)
        .arg("256M")
        .status()?;
    if !st.success() {
        bail!("mkfs.ext4 of the tools image failed: {st}");
    }
    Ok(img)
}

/// Runs the I/O benchmark; true if every VMM gave every figure at least once.
pub fn io(rounds: u32, secs: u32, thinvm: Option<PathBuf>, echo: bool) -> Result<bool> {
    let thinvm = crate::thinvm_binary(thinvm)?;
    let dir = std::env::temp_dir().join(format!("thinvm-bench-io-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    let tools = tools_image(&dir)?;
    let mut tests = testbed::images::builtin_guest_tests();
    tests.push(Script::new(
        "bench-io",
        include_str!("../guest/bench-io.sh"),
    ));
    let mut outer_modules = OuterSpec::default().modules;
    outer_modules
        .extend(["virtio_pci", "virtio_blk", "tun", "vhost", "vhost_net"].map(String::from));
    let config = TestbedConfig {
        guest: GuestSpec {
            modules: GUEST_MODULES.map(String::from).into(),
            tests,
            ..GuestSpec::default()
        },
        outer: OuterSpec {
            modules: outer_modules,
            with_qemu: true,
            thinvm: Some(thinvm),
            extra_binaries: vec![PathBuf::from("/usr/bin/iperf3")],
            ..OuterSpec::default()
        },
        ..TestbedConfig::default()
    };
    let tb = Testbed::new(&config)?;
    let vmms = vmms();
    let mut scenarios = Vec::new();
    for round in 0..rounds.max(1) as usize {
        for i in 0..vmms.len() {
            let Some((label, cmd)) = vmms.get((i + round) % vmms.len()) else {
                continue;
            };
            scenarios.push(Scenario {
                name: format!("r{}-{label}", round + 1),
                script: script(label, cmd, &format!("tvio{round}{i}"), secs),
                timeout: Duration::from_secs(240 + 12 * u64::from(secs)),
            });
        }
    }
    let opts = OuterOptions {
        scratch_disk: Some(tools),
        echo,
        ..OuterOptions::default()
    };
    let results = tb.run(&opts, &scenarios)?;
    // (label, test) -> samples of (first figure, second figure).
    let mut samples: BTreeMap<(String, String), Vec<(f64, f64)>> = BTreeMap::new();
    for r in &results {
        let mut n = 0;
        for (label, test, a, b) in r.log.lines().filter_map(parse_line) {
            if a > 0.0 {
                samples.entry((label, test)).or_default().push((a, b));
                n += 1;
            }
        }
        println!("{:<16} {:?}: {n} figures", r.name, r.status);
    }
    if let Some(r) = results.first() {
        println!("console log: {}", r.console_log.display());
    }
    let ok = report(&vmms, &samples);
    let _ = std::fs::remove_dir_all(&dir);
    Ok(ok)
}

const TESTS: [(&str, &str); 8] = [
    ("randread-4k-qd1", "IOPS"),
    ("randwrite-4k-qd1", "IOPS"),
    ("randread-4k-qd32", "IOPS"),
    ("randwrite-4k-qd32", "IOPS"),
    ("read-1m-qd4", "MiB/s"),
    ("write-1m-qd4", "MiB/s"),
    ("g2h", "Mbit/s"),
    ("h2g", "Mbit/s"),
];

/// The ratios printed: (numerator, denominator) labels.
const RATIOS: [(&str, &str); 4] = [
    ("thinvm", "qemu"),
    ("thinvm", "qemu-vhost"),
    ("thinvm-vhost", "qemu-vhost"),
    ("thinvm-vhost", "thinvm"),
];

/// Prints the medians and the ratios of [`RATIOS`]; true if no figure is missing.
fn report(vmms: &[(&str, String)], samples: &BTreeMap<(String, String), Vec<(f64, f64)>>) -> bool {
    let med = |label: &str, test: &str, unit: &str| {
        let v = samples.get(&(label.to_string(), test.to_string()))?;
        median(
            v.iter()
                .map(|&(a, b)| if unit == "MiB/s" { b / 1024.0 } else { a })
                .collect(),
        )
    };
    let mut complete = true;
    print!(
        "\nmedians ({MEM_MIB} MiB guest, 1 vCPU)\n{:<20}{:>8}",
        "test", "unit"
    );
    for (label, _) in vmms {
        print!("{label:>14}");
    }
    for (a, b) in RATIOS {
        print!("  {a}/{b}");
    }
    println!();
    for (test, unit) in TESTS {
        print!("{test:<20}{unit:>8}");
        for (label, _) in vmms {
            match med(label, test, unit) {
                Some(m) => print!("{m:>14.0}"),
                None => {
                    complete = false;
                    print!("{:>14}", "-")
                }
            }
        }
        for (num, den) in RATIOS {
            let w = num.len() + den.len() + 3;
            match (med(num, test, unit), med(den, test, unit)) {
                (Some(a), Some(b)) if b > 0.0 => print!("{:>w$.2}", a / b),
                _ => print!("{:>w$}", "-"),
            }
        }
        println!();
    }
    complete
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_parse() {
        let io = "x @@IO label=qemu test=randread-4k-qd1 iops=1234 bw_kib=4936@@\r";
        assert_eq!(
            parse_line(io),
            Some(("qemu".into(), "randread-4k-qd1".into(), 1234.0, 4936.0))
        );
        let net = "@@NET label=thinvm test=g2h mbps=812.5@@";
        assert_eq!(
            parse_line(net),
            Some(("thinvm".into(), "g2h".into(), 812.5, 0.0))
        );
        assert_eq!(parse_line("@@IO label=x test=y iops=oops@@"), None);
        assert_eq!(parse_line("@@NET test=g2h mbps=1@@"), None);
        assert_eq!(parse_line("plain text"), None);
    }

    #[test]
    fn scripts_label_the_guest_lines_and_use_the_tap() {
        let v = vmms();
        let labels: Vec<&str> = v.iter().map(|(l, _)| *l).collect();
        assert_eq!(labels, ["thinvm", "thinvm-vhost", "qemu", "qemu-vhost"]);
        assert!(!v[0].1.contains("vhost") && v[1].1.contains(",vhost=on "));
        assert!(v[2].1.contains("vhost=off") && v[3].1.contains("vhost=on"));
        for (num, den) in RATIOS {
            assert!(
                labels.contains(&num) && labels.contains(&den),
                "{num}/{den}"
            );
        }
        let s = script("qemu", &v[2].1, "tvio01", 5);
        assert!(s.contains("TAP=tvio01"), "{s}");
        assert!(s.contains("label=qemu"), "{s}");
        assert!(s.contains("thinvm.bench_secs=5"), "{s}");
        // The sed that labels the guest's lines gives lines the parser reads.
        let labelled = "@@IO label=qemu test=read-1m-qd4 iops=10 bw_kib=10240@@";
        assert_eq!(parse_line(labelled).map(|l| l.3), Some(10240.0));
    }
}
