//! `thinvm vm ...` driving thinvmd with real VMM processes running hand-made guests on this
//! host's /dev/kvm: create (relative paths made absolute, disks passed as descriptors), list,
//! show, stop, logs, delete; network cards, vsock and balloon options; bad arguments refused.

mod daemon_support;

use daemon_support::{call, have_kvm, scratch, state, wait_vm, Thinvmd};
use serde_json::Value;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_drives_the_daemon() {
    if !have_kvm() {
        return;
    }
    let dir = scratch("daemon-cli");
    let d = Thinvmd::start(&dir);
    let cli = |args: &[&str]| {
        let out = std::process::Command::new(daemon_support::THINVM)
            .arg("vm")
            .args(args)
            .env("THINVM_SOCKET", &d.socket)
            .current_dir(dir.join("images"))
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        (
            out.status.code(),
            text,
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    // Relative kernel and disk paths are made absolute by the CLI.
    std::fs::write(dir.join("images/disk.img"), vec![0u8; 1 << 20]).unwrap();
    let (code, out, err) = cli(&[
        "create",
        "web",
        "--kernel",
        "button",
        "--memory",
        "32M",
        "--disk",
        "path=disk.img,readonly=on",
        "--rng",
        "--restart",
        "on-failure",
        "--start",
    ]);
    assert_eq!(code, Some(0), "{err}");
    assert!(
        out.lines().nth(1).unwrap().starts_with("web") && out.contains("running"),
        "{out}"
    );
    // The VMM got the disk, with its absolute path.
    let vmm = api::client::Client::new(dir.join("state/vms/web/api.sock"));
    let (_, info) = call(&vmm, "GET", "/api/v1/vm.info", None).await;
    // The VMM was given an inherited descriptor of the file, not its name.
    let fd_path = info["config"]["disks"][0]["path"]
        .as_str()
        .unwrap()
        .to_string();
    let fd = fd_path
        .strip_prefix("/proc/self/fd/")
        .expect("a descriptor path");
    let pid = info_pid(&d, "web").await;
    let target = std::fs::read_link(format!("/proc/{pid}/fd/{fd}")).unwrap();
    assert_eq!(target, dir.join("images/disk.img"));
    assert_eq!(info["config"]["disks"][0]["readonly"], true);
    assert_eq!(info["config"]["rng"], true);
    let (_, out, _) = cli(&["list", "--json"]);
    let v: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(
        (v[0]["name"].as_str(), v[0]["restart"].as_str()),
        (Some("web"), Some("on-failure"))
    );
    let (_, out, _) = cli(&["list"]);
    assert!(out.starts_with("NAME") && out.contains("32M"), "{out}");
    let (code, out, _) = cli(&["stop", "web", "--timeout", "20"]);
    assert_eq!(code, Some(0));
    assert!(out.contains("stopped"), "stop waits until stopped: {out}");
    let (_, out, _) = cli(&["logs", "web"]);
    assert_eq!(out, "hello\n");
    let (code, _, err) = cli(&["pause", "web"]);
    assert_eq!(code, Some(2));
    assert!(err.contains("conflict") && err.contains("stopped"), "{err}");
    let (code, _, err) = cli(&["create", "Bad/Name", "--kernel", "button"]);
    assert_eq!(code, Some(2));
    assert!(err.contains("invalid VM name"), "{err}");
    // Network cards: `--net` as `thinvm run` takes it; the daemon adds and keeps a MAC.
    let (code, _, err) = cli(&[
        "create",
        "nets",
        "--kernel",
        "button",
        "--net",
        "tap=tn0",
        "--net",
        "tap=tn1,mac=52:54:00:00:00:07",
    ]);
    assert_eq!(code, Some(0), "{err}");
    let (_, out, _) = cli(&["show", "nets"]);
    assert!(
        out.contains("net1   tap=tn1,mac=52:54:00:00:00:07"),
        "{out}"
    );
    let net0 = out
        .lines()
        .find(|l| l.starts_with("net0"))
        .unwrap_or_default();
    assert!(
        net0.starts_with("net0   tap=tn0,mac=") && !net0.ends_with('-'),
        "{out}"
    );
    for (bad, why) in [
        ("tap=tn0,mac=01:00:00:00:00:01", "multicast"),
        ("tap=0123456789abcdef", "1 to 15"),
        ("fd=5", "tap=NAME"),
    ] {
        let (code, _, err) = cli(&["create", "nets2", "--kernel", "button", "--net", bad]);
        assert_eq!(code, Some(2), "{bad}");
        assert!(err.contains(why), "{bad}: {err}");
    }
    let (code, _, err) = cli(&[
        "create", "nets2", "--kernel", "button", "--net", "tap=x", "--net", "tap=x",
    ]);
    assert_eq!(code, Some(2));
    assert!(err.contains("already used"), "{err}");
    cli(&["delete", "nets"]);
    // A vsock device and a balloon: the daemon places the socket in the VM's folder.
    let (code, _, err) = cli(&[
        "create",
        "vs",
        "--kernel",
        "button",
        "--memory",
        "32M",
        "--vsock",
        "cid=5",
        "--balloon",
        "size=8M,deflate_on_oom=off",
        "--start",
    ]);
    assert_eq!(code, Some(0), "{err}");
    let socket = dir.join("state/vms/vs/vsock.sock");
    let vmm = api::client::Client::new(dir.join("state/vms/vs/api.sock"));
    let (_, info) = call(&vmm, "GET", "/api/v1/vm.info", None).await;
    assert_eq!(info["config"]["vsock"]["cid"], 5, "{info}");
    assert_eq!(
        info["config"]["vsock"]["socket"].as_str(),
        socket.to_str(),
        "{info}"
    );
    assert_eq!(info["config"]["balloon"]["size"], 8 << 20, "{info}");
    assert!(std::fs::metadata(&socket).is_ok(), "the VMM listens there");
    let (_, out, _) = cli(&["show", "vs"]);
    let want = format!("vsock   cid=5,socket={}", socket.display());
    assert!(out.contains(&want), "{out}");
    assert!(
        out.contains("balloon size=8388608,deflate_on_oom=off,free_page_reporting=on"),
        "{out}"
    );
    for (args, why) in [
        (&["--vsock", "cid=2"][..], "reserved"),
        (&["--vsock", "cid=5"][..], "\"vs\""),
        (&["--vsock", "cid=6,socket=/tmp/v.sock"][..], "not a number"),
        (&["--vsock", "socket=/tmp/v.sock"][..], "cid=N"),
        (&["--balloon", "size=64M"][..], "larger than"),
        (&["--balloon", "stats=on"][..], "unknown balloon option"),
    ] {
        let mut a = vec!["create", "vs2", "--kernel", "button", "--memory", "32M"];
        a.extend_from_slice(args);
        let (code, _, err) = cli(&a);
        assert_eq!(code, Some(2), "{args:?}: {err}");
        assert!(err.contains(why), "{args:?}: {err}");
    }
    cli(&["kill", "vs"]);
    wait_vm(&d.client, "vs", 10, |v| state(v) == "stopped").await;
    cli(&["delete", "vs"]);
    let (code, out, _) = cli(&["delete", "web"]);
    assert_eq!((code, out.trim()), (Some(0), "deleted web"));
    let (_, out, _) = cli(&["list", "--json"]);
    assert_eq!(out.trim(), "[]");
}

async fn info_pid(d: &Thinvmd, name: &str) -> i32 {
    let (_, v) = call(&d.client, "GET", &format!("/v1/vms/{name}"), None).await;
    v["pid"].as_i64().unwrap() as i32
}
