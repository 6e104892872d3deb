//! The vsock device out of file descriptors: accept(2) fails with EMFILE, and the worker must
//! neither spin on its level-triggered listener nor lose the connection once descriptors are
//! free again. Lowers this test process's RLIMIT_NOFILE, so it is a test binary of its own.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::Arc;
use std::time::{Duration, Instant};

use devices::virtio::vsock::Vsock;
use devices::virtio::{InterruptKind, VirtioDevice, VirtioInterrupt};
use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

struct NoIrq;
impl VirtioInterrupt for NoIrq {
    fn trigger(&self, _: InterruptKind) -> std::io::Result<()> {
        Ok(())
    }
}

fn queue(base: u64) -> Queue {
    let mut q = Queue::new(16).unwrap();
    q.set_desc_table_address(Some(base as u32), Some(0));
    q.set_avail_ring_address(Some((base + 0x1000) as u32), Some(0));
    q.set_used_ring_address(Some((base + 0x2000) as u32), Some(0));
    q.set_ready(true);
    q
}

fn cpu_seconds() -> f64 {
    // SAFETY: getrusage fills the zeroed struct it is given.
    let mut u: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: `u` is a valid rusage to write.
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut u) };
    let t = |tv: libc::timeval| tv.tv_sec as f64 + tv.tv_usec as f64 / 1e6;
    t(u.ru_utime) + t(u.ru_stime)
}

fn unix_socket() -> OwnedFd {
    // SAFETY: plain socket(2); checked below, then owned.
    let fd = unsafe { libc::socket(libc::AF_UNIX, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
    assert!(fd >= 0);
    // SAFETY: a new descriptor nobody else owns.
    unsafe { OwnedFd::from_raw_fd(fd) }
}

fn connect(fd: &OwnedFd, path: &std::path::Path) {
    // SAFETY: zeroed sockaddr_un is valid; the path fits (checked by the assert).
    let mut a: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    let b = path.as_os_str().as_encoded_bytes();
    assert!(b.len() < a.sun_path.len());
    a.sun_family = libc::AF_UNIX as libc::sa_family_t;
    for (d, s) in a.sun_path.iter_mut().zip(b) {
        *d = *s as libc::c_char;
    }
    let len = std::mem::size_of::<libc::sockaddr_un>() as libc::socklen_t;
    // SAFETY: `a` is a valid address of `len` bytes for the call's duration.
    let r = unsafe { libc::connect(fd.as_raw_fd(), (&raw const a).cast(), len) };
    assert_eq!(r, 0, "{}", std::io::Error::last_os_error());
}

#[test]
fn out_of_descriptors_pauses_the_listener_without_spinning() {
    let dir = std::env::temp_dir().join(format!("thinvm-vsock-emfile-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir(&dir).unwrap();
    let path = dir.join("v.sock");
    let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
    // rx ring at 0x10000 with one 4 KiB buffer at 0x80000.
    mem.write_obj(0x80000u64, GuestAddress(0x10000)).unwrap();
    mem.write_obj(4096u32, GuestAddress(0x10008)).unwrap();
    mem.write_obj(2u16, GuestAddress(0x1000c)).unwrap();
    mem.write_obj(1u16, GuestAddress(0x11002)).unwrap();
    let mut v = Vsock::new(3, &path).unwrap();
    let evts: Vec<EventFd> = (0..3)
        .map(|_| EventFd::new(EFD_NONBLOCK).unwrap())
        .collect();
    let rx_kick = evts[0].try_clone().unwrap();
    let queues = vec![queue(0x10000), queue(0x20000), queue(0x30000)];
    v.activate(mem.clone(), Arc::new(NoIrq), queues, evts)
        .unwrap();

    // The client socket is made first; then the limit is lowered and every free descriptor
    // number below it taken, so the worker's accept(2) gets EMFILE.
    let client = unix_socket();
    let top = std::fs::read_dir("/proc/self/fd")
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u64>().ok())
        .max()
        .unwrap();
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit with a valid struct.
    unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) };
    let old = lim.rlim_cur;
    lim.rlim_cur = top + 4;
    // SAFETY: as above.
    assert_eq!(unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lim) }, 0);
    let mut fillers = Vec::new();
    loop {
        // SAFETY: plain eventfd(2); checked, then owned.
        let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC) };
        if fd < 0 {
            break;
        }
        // SAFETY: a new descriptor nobody else owns.
        fillers.push(unsafe { OwnedFd::from_raw_fd(fd) });
    }
    assert!(!fillers.is_empty());

    connect(&client, &path);
    std::thread::sleep(Duration::from_millis(200));
    let before = cpu_seconds();
    std::thread::sleep(Duration::from_millis(1000));
    let spent = cpu_seconds() - before;
    assert!(
        spent < 0.3,
        "the worker spun on EMFILE: {spent:.2} s of CPU in 1 s"
    );

    // A descriptor frees up; the next notification retries, and the host's CONNECT reaches
    // the guest.
    fillers.clear();
    rx_kick.write(1).unwrap();
    let stream = std::os::unix::net::UnixStream::from(client);
    (&stream).write_all_connect();
    let deadline = Instant::now() + Duration::from_secs(5);
    let used = || mem.read_obj::<u16>(GuestAddress(0x12002)).unwrap();
    while used() == 0 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    lim.rlim_cur = old;
    // SAFETY: as above.
    unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lim) };
    assert_eq!(used(), 1, "the REQUEST reached the guest after the pause");
    let op: u16 = mem.read_obj(GuestAddress(0x80000 + 30)).unwrap();
    assert_eq!(op, 1);
    drop(v);
    let _ = std::fs::remove_dir_all(&dir);
}

trait WriteConnect {
    fn write_all_connect(self);
}
impl WriteConnect for &std::os::unix::net::UnixStream {
    fn write_all_connect(self) {
        use std::io::Write;
        let mut s = self;
        s.write_all(b"CONNECT 7\n").unwrap();
    }
}
