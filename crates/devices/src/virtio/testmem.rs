//! Test helpers: guest memory with a split virtqueue the test fills by hand, and an in-memory
//! disk.

use std::sync::{Arc, Mutex};

use std::fs::File;
use std::os::fd::FromRawFd;
use std::os::unix::fs::MetadataExt;
use storage::{BlockBackend, BlockError};
use virtio_queue::{Queue, QueueT};

use vm_memory::{
    Bytes, FileOffset, GuestAddress, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion,
};

fn memfd() -> File {
    // SAFETY: a NUL-terminated name and plain flags.
    let fd = unsafe { libc::memfd_create(c"thinvm-test-ram".as_ptr(), libc::MFD_CLOEXEC) };
    assert!(fd >= 0, "memfd_create: {}", std::io::Error::last_os_error());
    // SAFETY: memfd_create returned a new descriptor that nothing else owns.
    unsafe { File::from_raw_fd(fd) }
}

/// Guest memory size of the tests.
pub const MEM_SIZE: u64 = 0x40_0000;
/// Descriptor flag: chained.
pub const NEXT: u16 = 1;
/// Descriptor flag: device writes.
pub const WRITE: u16 = 2;
/// Descriptor flag: indirect table.
pub const INDIRECT: u16 = 4;
const DESC: u64 = 0x1000;
const AVAIL: u64 = 0x3000;
const USED: u64 = 0x4000;

/// A split ring in test memory.
pub struct TestRing {
    pub mem: GuestMemoryMmap,
    pub size: u16,
    avail_idx: u16,
    /// Descriptor table address; the avail ring is at +0x2000, the used ring at +0x3000.
    base: u64,
}

impl TestRing {
    pub fn new(size: u16) -> Self {
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEM_SIZE as usize)]).unwrap();
        Self::at(&mem, DESC, size)
    }

    /// A ring whose descriptor table is at `base` in `mem` (several rings share one memory;
    /// each takes 0x4000 bytes).
    pub fn at(mem: &GuestMemoryMmap, base: u64, size: u16) -> Self {
        TestRing {
            mem: mem.clone(),
            size,
            avail_idx: 0,
            base,
        }
    }

    fn avail(&self) -> u64 {
        self.base + (AVAIL - DESC)
    }

    fn used_ring(&self) -> u64 {
        self.base + (USED - DESC)
    }

    /// A ring in guest memory backed by a memfd, mapped shared as thinvm's guest RAM is, in
    /// two adjacent regions of [`MEM_SIZE`] / 2 (so ranges can straddle regions).
    pub fn new_memfd(size: u16) -> Self {
        let file = memfd();
        file.set_len(MEM_SIZE).unwrap();
        let half = MEM_SIZE / 2;
        let ranges = (0..2u64)
            .map(|i| {
                let fo = FileOffset::new(file.try_clone().unwrap(), i * half);
                (GuestAddress(i * half), half as usize, Some(fo))
            })
            .collect::<Vec<_>>();
        let mem = GuestMemoryMmap::from_ranges_with_files(ranges).unwrap();
        TestRing {
            mem,
            size,
            avail_idx: 0,
            base: DESC,
        }
    }

    /// 512-byte blocks the memfd behind guest memory has allocated (`st_blocks`).
    pub fn allocated_blocks(&self) -> u64 {
        let region = self.mem.iter().next().unwrap();
        let file = region.file_offset().expect("memfd-backed memory").file();
        file.metadata().unwrap().blocks()
    }

    /// A ready queue pointing at this ring.
    pub fn queue(&self) -> Queue {
        let mut q = Queue::new(self.size).unwrap();
        q.set_desc_table_address(Some(self.base as u32), Some(0));
        q.set_avail_ring_address(Some(self.avail() as u32), Some(0));
        q.set_used_ring_address(Some(self.used_ring() as u32), Some(0));
        q.set_ready(true);
        q
    }

    /// The ring addresses (descriptor table, avail, used).
    pub fn addresses() -> (u64, u64, u64) {
        (DESC, AVAIL, USED)
    }

    pub fn desc(&self, idx: u16, addr: u64, len: u32, flags: u16, next: u16) {
        self.desc_at(self.base, idx, addr, len, flags, next);
    }

    /// Writes a descriptor in a table at `table` (for indirect tables).
    pub fn desc_at(&self, table: u64, idx: u16, addr: u64, len: u32, flags: u16, next: u16) {
        let at = GuestAddress(table + u64::from(idx) * 16);
        self.mem.write_obj(addr, at).unwrap();
        self.mem.write_obj(len, GuestAddress(at.0 + 8)).unwrap();
        self.mem.write_obj(flags, GuestAddress(at.0 + 12)).unwrap();
        self.mem.write_obj(next, GuestAddress(at.0 + 14)).unwrap();
    }

    /// Makes chain `head` available.
    pub fn push(&mut self, head: u16) {
        let slot = self.avail() + 4 + u64::from(self.avail_idx % self.size) * 2;
        self.mem.write_obj(head, GuestAddress(slot)).unwrap();
        self.avail_idx = self.avail_idx.wrapping_add(1);
        self.mem
            .write_obj(self.avail_idx, GuestAddress(self.avail() + 2))
            .unwrap();
    }

    /// The used ring's index.
    pub fn used_idx(&self) -> u16 {
        self.mem
            .read_obj(GuestAddress(self.used_ring() + 2))
            .unwrap()
    }

    /// Used element `i`: (descriptor id, length).
    pub fn used(&self, i: u16) -> (u32, u32) {
        let at = self.used_ring() + 4 + u64::from(i % self.size) * 8;
        let id = self.mem.read_obj(GuestAddress(at)).unwrap();
        let len = self.mem.read_obj(GuestAddress(at + 4)).unwrap();
        (id, len)
    }

    pub fn write<T: vm_memory::ByteValued>(&self, addr: u64, v: T) {
        self.mem.write_obj(v, GuestAddress(addr)).unwrap();
    }

    pub fn read_bytes(&self, addr: u64, len: usize) -> Vec<u8> {
        let mut v = vec![0; len];
        self.mem.read_slice(&mut v, GuestAddress(addr)).unwrap();
        v
    }

    pub fn write_bytes(&self, addr: u64, data: &[u8]) {
        self.mem.write_slice(data, GuestAddress(addr)).unwrap();
    }
}

/// What the in-memory disk saw.
#[derive(Default, Debug)]
pub struct DiskLog {
    pub flushes: u32,
    pub discards: Vec<(u64, u64)>,
    pub zeroes: Vec<(u64, u64)>,
}

/// An in-memory disk.
#[derive(Clone)]
pub struct MemDisk {
    pub data: Arc<Mutex<Vec<u8>>>,
    pub log: Arc<Mutex<DiskLog>>,
    pub read_only: bool,
}

impl MemDisk {
    pub fn new(size: usize, read_only: bool) -> Self {
        let data = (0..size).map(|i| (i / 512) as u8).collect();
        MemDisk {
            data: Arc::new(Mutex::new(data)),
            log: Arc::default(),
            read_only,
        }
    }
}

fn range(off: u64, len: usize, size: usize) -> Result<std::ops::Range<usize>, BlockError> {
    let start = off as usize;
    let end = start + len;
    if end > size {
        return Err(BlockError::OutOfRange {
            offset: off,
            len: len as u64,
            size: size as u64,
        });
    }
    Ok(start..end)
}

impl BlockBackend for MemDisk {
    fn read_at(&mut self, buf: &mut [u8], offset: u64) -> Result<(), BlockError> {
        let d = self.data.lock().unwrap();
        buf.copy_from_slice(&d[range(offset, buf.len(), d.len())?]);
        Ok(())
    }
    fn write_at(&mut self, buf: &[u8], offset: u64) -> Result<(), BlockError> {
        let mut d = self.data.lock().unwrap();
        let r = range(offset, buf.len(), d.len())?;
        d[r].copy_from_slice(buf);
        Ok(())
    }
    fn flush(&mut self) -> Result<(), BlockError> {
        self.log.lock().unwrap().flushes += 1;
        Ok(())
    }
    fn discard(&mut self, offset: u64, len: u64) -> Result<(), BlockError> {
        self.log.lock().unwrap().discards.push((offset, len));
        Ok(())
    }
    fn write_zeroes(&mut self, offset: u64, len: u64) -> Result<(), BlockError> {
        let mut d = self.data.lock().unwrap();
        let r = range(offset, len as usize, d.len())?;
        d[r].fill(0);
        self.log.lock().unwrap().zeroes.push((offset, len));
        Ok(())
    }
    fn size(&self) -> u64 {
        self.data.lock().unwrap().len() as u64
    }
    fn read_only(&self) -> bool {
        self.read_only
    }
}
