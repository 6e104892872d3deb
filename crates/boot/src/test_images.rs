//! Hand-built kernel images for the tests: a minimal bzImage (boot protocol setup header at
//! its documented offsets) and a minimal ELF64 vmlinux, with or without the Xen PVH note.

use std::fs::File;
use std::io::{Seek, Write};

use vmm_sys_util::tempfile::TempFile;

/// An unlinked temporary file holding `bytes`, positioned at 0.
pub fn file_with(bytes: &[u8]) -> File {
    let mut f = TempFile::new().expect("temp file").into_file();
    f.write_all(bytes).expect("write temp file");
    f.rewind().expect("rewind temp file");
    f
}

/// Deterministic filler bytes (xorshift), so copies can be checked byte for byte.
pub fn pattern(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

fn put(buf: &mut [u8], off: usize, bytes: &[u8]) {
    buf[off..off + bytes.len()].copy_from_slice(bytes);
}

/// The setup header fields a test may vary.
#[derive(Clone, Copy, Debug)]
pub struct BzSpec {
    pub setup_sects: u8,
    pub version: u16,
    pub loadflags: u8,
    pub xloadflags: u16,
    pub initrd_addr_max: u32,
    pub cmdline_size: u32,
    pub kernel_alignment: u32,
    pub pref_address: u64,
    pub init_size: u32,
    pub payload_len: usize,
    /// File offset where the header ends (0x202 + the jump displacement at 0x201).
    pub header_end: usize,
}

impl Default for BzSpec {
    fn default() -> Self {
        BzSpec {
            setup_sects: 3,
            version: 0x020f,
            loadflags: 0x01,  // LOADED_HIGH
            xloadflags: 0x03, // XLF_KERNEL_64 | XLF_CAN_BE_LOADED_ABOVE_4G
            initrd_addr_max: 0x7fff_ffff,
            cmdline_size: 2047,
            kernel_alignment: 0x20_0000,
            pref_address: 0x100_0000,
            init_size: 0x40_0000,
            payload_len: 0x2345,
            header_end: 0x26c,
        }
    }
}

/// Builds a bzImage: boot sector + `setup_sects` setup sectors, then the payload.
/// Offsets are those of Documentation/arch/x86/boot.rst.
pub fn bzimage(s: &BzSpec) -> Vec<u8> {
    let setup_len = (usize::from(s.setup_sects.max(1)) + 1) * 512;
    let mut img = vec![0u8; setup_len];
    put(&mut img, 0x1f1, &[s.setup_sects]);
    put(&mut img, 0x1fe, &0xaa55u16.to_le_bytes());
    // Short jump over the header, which ends at 0x26c for protocol 2.15.
    put(
        &mut img,
        0x200,
        &[0xeb, s.header_end.saturating_sub(0x202) as u8],
    );
    put(&mut img, 0x202, b"HdrS");
    put(&mut img, 0x206, &s.version.to_le_bytes());
    put(&mut img, 0x211, &[s.loadflags]);
    put(&mut img, 0x214, &0x10_0000u32.to_le_bytes());
    put(&mut img, 0x22c, &s.initrd_addr_max.to_le_bytes());
    put(&mut img, 0x230, &s.kernel_alignment.to_le_bytes());
    put(&mut img, 0x234, &[1]);
    put(&mut img, 0x236, &s.xloadflags.to_le_bytes());
    put(&mut img, 0x238, &s.cmdline_size.to_le_bytes());
    put(&mut img, 0x258, &s.pref_address.to_le_bytes());
    put(&mut img, 0x260, &s.init_size.to_le_bytes());
    img.extend_from_slice(&pattern(s.payload_len, 0xb2));
    img
}

/// The ELF fields a test may vary.
#[derive(Clone, Debug)]
pub struct ElfSpec {
    pub paddr: u64,
    pub entry: u64,
    pub payload: Vec<u8>,
    pub memsz: u64,
    pub pvh_entry: Option<u32>,
    pub class: u8,
    pub machine: u16,
}

impl Default for ElfSpec {
    fn default() -> Self {
        ElfSpec {
            paddr: 0x100_0000,
            entry: 0x100_0000,
            payload: pattern(0x1800, 0xe1),
            memsz: 0x3000,
            pvh_entry: None,
            class: 2,
            machine: 62,
        }
    }
}

/// Payload offset in the file.
pub const ELF_PAYLOAD_OFFSET: usize = 0x1000;

fn note(name: &[u8], type_: u32, desc: &[u8]) -> Vec<u8> {
    let mut n = Vec::new();
    n.extend_from_slice(&(name.len() as u32).to_le_bytes());
    n.extend_from_slice(&(desc.len() as u32).to_le_bytes());
    n.extend_from_slice(&type_.to_le_bytes());
    for part in [name, desc] {
        n.extend_from_slice(part);
        n.resize(n.len().next_multiple_of(4), 0);
    }
    n
}

fn phdr(p_type: u32, offset: u64, paddr: u64, filesz: u64, memsz: u64) -> Vec<u8> {
    let mut p = Vec::with_capacity(56);
    p.extend_from_slice(&p_type.to_le_bytes());
    p.extend_from_slice(&7u32.to_le_bytes()); // RWX
    for v in [
        offset,
        paddr | 0xffff_ffff_8000_0000,
        paddr,
        filesz,
        memsz,
        0x1000,
    ] {
        p.extend_from_slice(&v.to_le_bytes());
    }
    p
}

/// Builds an ELF64 executable: one PT_LOAD, and a PT_NOTE (a GNU build-id note, then the
/// Xen PHYS32_ENTRY note when `pvh_entry` is set).
pub fn elf(s: &ElfSpec) -> Vec<u8> {
    let mut notes = note(b"GNU\0", 3, &[0xab; 20]);
    if let Some(e) = s.pvh_entry {
        notes.extend(note(b"Xen\0", 18, &e.to_le_bytes()));
    }
    let phnum: u16 = 2;
    let notes_off = 64 + 56 * usize::from(phnum);
    let mut img = vec![0u8; 64];
    put(&mut img, 0, &[0x7f, b'E', b'L', b'F', s.class, 1, 1]);
    put(&mut img, 16, &2u16.to_le_bytes()); // ET_EXEC
    put(&mut img, 18, &s.machine.to_le_bytes());
    put(&mut img, 20, &1u32.to_le_bytes());
    put(&mut img, 24, &s.entry.to_le_bytes());
    put(&mut img, 32, &64u64.to_le_bytes()); // e_phoff
    put(&mut img, 52, &64u16.to_le_bytes()); // e_ehsize
    put(&mut img, 54, &56u16.to_le_bytes()); // e_phentsize
    put(&mut img, 56, &phnum.to_le_bytes());
    let payload_len = s.payload.len() as u64;
    img.extend(phdr(
        1,
        ELF_PAYLOAD_OFFSET as u64,
        s.paddr,
        payload_len,
        s.memsz,
    ));
    img.extend(phdr(4, notes_off as u64, 0, notes.len() as u64, 0));
    img.extend(notes);
    img.resize(ELF_PAYLOAD_OFFSET, 0);
    img.extend_from_slice(&s.payload);
    img
}
