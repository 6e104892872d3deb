use super::*;

/// A reader for newc archives, independent of the writer, used to check what it wrote.
type Parsed = (String, u32, Vec<u8>, (u32, u32));

fn parse(mut data: &[u8]) -> Vec<Parsed> {
    let mut out = Vec::new();
    let mut off = 0usize;
    loop {
        assert_eq!(&data[..6], b"070701", "magic at offset {off}");
        let field = |i: usize| {
            u32::from_str_radix(
                std::str::from_utf8(&data[6 + 8 * i..14 + 8 * i]).unwrap(),
                16,
            )
            .unwrap()
        };
        let (mode, size, namesize) = (field(1), field(6) as usize, field(11) as usize);
        let rdev = (field(9), field(10));
        let name = std::str::from_utf8(&data[110..110 + namesize - 1])
            .unwrap()
            .to_string();
        let hdr = (110 + namesize).div_ceil(4) * 4;
        let body = data[hdr..hdr + size].to_vec();
        let total = hdr + size.div_ceil(4) * 4;
        off += total;
        data = &data[total..];
        if name == "TRAILER!!!" {
            assert!(data.is_empty());
            return out;
        }
        out.push((name, mode, body, rdev));
    }
}

fn sample(dir: &Path) -> Archive {
    std::fs::create_dir_all(dir).unwrap();
    let f = dir.join("host.txt");
    std::fs::write(&f, b"hello from a file").unwrap();
    let mut a = Archive::new();
    a.file(
        "/bin/init",
        Source::Bytes(b"#!/bin/sh\necho hi\n".to_vec()),
        0o755,
    )
    .file("etc/x/host.txt", Source::Path(f), 0o644)
    .symlink("bin/sh", "busybox")
    .char_dev("dev/console", 0o600, 5, 1);
    a
}

#[test]
fn newc_roundtrip() {
    let dir = std::env::temp_dir().join(format!("testbed-cpio-rt-{}", std::process::id()));
    let a = sample(&dir);
    let mut buf = Vec::new();
    a.write_newc(&mut buf, Path::new("mem")).unwrap();
    assert_eq!(buf.len() % 4, 0);
    let entries = parse(&buf);
    let names: Vec<&str> = entries.iter().map(|e| e.0.as_str()).collect();
    assert_eq!(
        names,
        [
            "bin",
            "bin/init",
            "bin/sh",
            "dev",
            "dev/console",
            "etc",
            "etc/x",
            "etc/x/host.txt"
        ]
    );
    let get = |n: &str| entries.iter().find(|e| e.0 == n).unwrap();
    assert_eq!(get("bin").1, 0o040755);
    assert_eq!(get("bin/init").1, 0o100755);
    assert_eq!(get("bin/init").2, b"#!/bin/sh\necho hi\n");
    assert_eq!(get("bin/sh").1, 0o120777);
    assert_eq!(get("bin/sh").2, b"busybox");
    assert_eq!(get("dev/console").1, 0o020600);
    assert_eq!(get("dev/console").3, (5, 1));
    assert_eq!(get("etc/x/host.txt").2, b"hello from a file");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn key_changes_with_content_and_layout() {
    let dir = std::env::temp_dir().join(format!("testbed-cpio-key-{}", std::process::id()));
    let a = sample(&dir);
    let k1 = a.key("t").unwrap();
    assert_eq!(k1, sample(&dir).key("t").unwrap());
    std::fs::write(dir.join("host.txt"), b"changed").unwrap();
    assert_ne!(k1, a.key("t").unwrap());
    let mut b = sample(&dir);
    let k2 = b.key("t").unwrap();
    b.symlink("bin/sh", "other");
    assert_ne!(k2, b.key("t").unwrap());
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn missing_input_is_an_error() {
    let mut a = Archive::new();
    a.file("x", Source::Path("/nonexistent/testbed/file".into()), 0o644);
    let err = a.write_newc(&mut Vec::new(), Path::new("mem")).unwrap_err();
    assert!(
        err.to_string().contains("/nonexistent/testbed/file"),
        "{err}"
    );
    assert!(a.key("t").is_err());
}

#[test]
fn gzip_output_extracts_with_cpio() {
    let dir = std::env::temp_dir().join(format!("testbed-cpio-gz-{}", std::process::id()));
    let a = sample(&dir);
    let gz = dir.join("out.cpio.gz");
    a.write_gz(&gz).unwrap();
    let out = Command::new("sh")
        .arg("-c")
        .arg(format!("gzip -dc {} | cpio -it 2>/dev/null", gz.display()))
        .output()
        .unwrap();
    let listing = String::from_utf8_lossy(&out.stdout);
    if out.status.success() {
        assert!(listing.lines().any(|l| l == "etc/x/host.txt"), "{listing}");
        assert!(listing.lines().any(|l| l == "dev/console"), "{listing}");
    }
    let raw = Command::new("gzip").arg("-dc").arg(&gz).output().unwrap();
    assert!(raw.status.success());
    assert_eq!(parse(&raw.stdout).len(), 8);
    std::fs::remove_dir_all(&dir).unwrap();
}
