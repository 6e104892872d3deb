//! Fuzzes kernel loading: any bytes as the "kernel" (bzImage setup header, ELF headers and
//! program headers, PVH notes) must give an error or a load inside guest memory, never a panic.
#![no_main]

use std::fs::File;
use std::io::{Seek, SeekFrom, Write};
use std::os::fd::FromRawFd;

use libfuzzer_sys::fuzz_target;
use vm_memory::{GuestAddress, GuestMemoryMmap};

thread_local! {
    static MEM: GuestMemoryMmap =
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 96 << 20)]).expect("guest memory");
    static FILE: File = {
        // SAFETY: a valid NUL-terminated name; the new descriptor is owned by the File.
        let fd = unsafe { libc::memfd_create(c"fuzz-kernel".as_ptr(), 0) };
        assert!(fd >= 0, "memfd_create");
        // SAFETY: fd is a fresh descriptor nothing else owns.
        unsafe { File::from_raw_fd(fd) }
    };
}

fuzz_target!(|data: &[u8]| {
    FILE.with(|f| {
        let mut f = f.try_clone().expect("dup memfd");
        f.set_len(0).expect("truncate");
        f.seek(SeekFrom::Start(0)).expect("seek");
        f.write_all(data).expect("write");
        f.seek(SeekFrom::Start(0)).expect("seek");
        MEM.with(|mem| {
            let _ = boot::load(
                mem,
                boot::BootConfig {
                    kernel: &mut f,
                    initrd: None,
                    cmdline: "console=ttyS0",
                    cpus: 2,
                },
            );
        });
    });
});
