//! A minimal, bounds-checked ELF64 little-endian reader: section lookup and note scanning.
//! Used to read `.modinfo` of kernel modules and to find the PVH note of a vmlinux.

/// Errors reading an ELF file.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum ElfError {
    /// The file does not start with the ELF64 little-endian identification.
    #[error("not an ELF64 little-endian file (first bytes {0:02x?})")]
    BadMagic(Vec<u8>),
    /// A header or table points outside the file.
    #[error("ELF {what} at offset {offset:#x} (+{len:#x}) lies outside the {size}-byte file")]
    OutOfBounds {
        /// Which structure.
        what: &'static str,
        /// Its offset.
        offset: u64,
        /// Its length.
        len: u64,
        /// The file size.
        size: usize,
    },
}

/// The ELF note type of the PVH 32-bit entry point (`XEN_ELFNOTE_PHYS32_ENTRY`).
pub const XEN_ELFNOTE_PHYS32_ENTRY: u32 = 18;
/// The ELF program header type of a note segment.
const PT_NOTE: u32 = 4;

fn slice<'a>(data: &'a [u8], what: &'static str, off: u64, len: u64) -> Result<&'a [u8], ElfError> {
    let oob = ElfError::OutOfBounds {
        what,
        offset: off,
        len,
        size: data.len(),
    };
    let start = usize::try_from(off).map_err(|_| oob.clone())?;
    let end = off
        .checked_add(len)
        .and_then(|e| usize::try_from(e).ok())
        .ok_or(oob.clone())?;
    data.get(start..end).ok_or(oob)
}

fn u16_at(b: &[u8], off: usize) -> u16 {
    let mut v = [0u8; 2];
    if let Some(s) = b.get(off..off + 2) {
        v.copy_from_slice(s);
    }
    u16::from_le_bytes(v)
}

fn u32_at(b: &[u8], off: usize) -> u32 {
    let mut v = [0u8; 4];
    if let Some(s) = b.get(off..off + 4) {
        v.copy_from_slice(s);
    }
    u32::from_le_bytes(v)
}

fn u64_at(b: &[u8], off: usize) -> u64 {
    let mut v = [0u8; 8];
    if let Some(s) = b.get(off..off + 8) {
        v.copy_from_slice(s);
    }
    u64::from_le_bytes(v)
}

/// Checks the ELF64 little-endian identification.
pub fn check_magic(data: &[u8]) -> Result<(), ElfError> {
    match data.get(..6) {
        Some([0x7f, b'E', b'L', b'F', 2, 1]) => Ok(()),
        _ => Err(ElfError::BadMagic(data.iter().take(6).copied().collect())),
    }
}

/// Returns the contents of the section called `name`, if present.
pub fn section<'a>(data: &'a [u8], name: &str) -> Result<Option<&'a [u8]>, ElfError> {
    check_magic(data)?;
    let hdr = slice(data, "header", 0, 64)?;
    let shoff = u64_at(hdr, 0x28);
    let shentsize = u64::from(u16_at(hdr, 0x3a));
    let shnum = u64::from(u16_at(hdr, 0x3c));
    let shstrndx = u64::from(u16_at(hdr, 0x3e));
    if shentsize < 64 {
        return Ok(None);
    }
    let shdr = |i: u64| -> Result<&'a [u8], ElfError> {
        let off = shoff.saturating_add(i.saturating_mul(shentsize));
        slice(data, "section header", off, 64)
    };
    let strtab_hdr = shdr(shstrndx)?;
    let strtab = slice(
        data,
        "section names",
        u64_at(strtab_hdr, 0x18),
        u64_at(strtab_hdr, 0x20),
    )?;
    for i in 0..shnum {
        let sh = shdr(i)?;
        let name_off = u32_at(sh, 0) as usize;
        let sec_name = strtab
            .get(name_off..)
            .and_then(|s| s.split(|&c| c == 0).next())
            .unwrap_or_default();
        if sec_name == name.as_bytes() {
            return slice(data, "section", u64_at(sh, 0x18), u64_at(sh, 0x20)).map(Some);
        }
    }
    Ok(None)
}

/// Iterates the notes of a note area as (name, type, desc).
fn notes(mut area: &[u8]) -> Vec<(&[u8], u32, &[u8])> {
    let align4 = |n: usize| n.checked_add(3).map(|v| v & !3);
    let mut out = Vec::new();
    while area.len() >= 12 {
        let namesz = u32_at(area, 0) as usize;
        let descsz = u32_at(area, 4) as usize;
        let ntype = u32_at(area, 8);
        let Some(name_end) = align4(namesz).and_then(|n| n.checked_add(12)) else {
            break;
        };
        let Some(desc_end) = align4(descsz).and_then(|d| d.checked_add(name_end)) else {
            break;
        };
        let (Some(name), Some(desc)) = (
            area.get(12..12 + namesz),
            area.get(name_end..name_end.saturating_add(descsz)),
        ) else {
            break;
        };
        let name = name.strip_suffix(&[0]).unwrap_or(name);
        out.push((name, ntype, desc));
        area = area.get(desc_end..).unwrap_or_default();
    }
    out
}

/// True if a PT_NOTE segment holds a "Xen" note of type `XEN_ELFNOTE_PHYS32_ENTRY` (PVH boot).
pub fn has_pvh_note(data: &[u8]) -> Result<bool, ElfError> {
    check_magic(data)?;
    let hdr = slice(data, "header", 0, 64)?;
    let phoff = u64_at(hdr, 0x20);
    let phentsize = u64::from(u16_at(hdr, 0x36));
    let phnum = u64::from(u16_at(hdr, 0x38));
    if phentsize < 56 {
        return Ok(false);
    }
    for i in 0..phnum {
        let off = phoff.saturating_add(i.saturating_mul(phentsize));
        let ph = slice(data, "program header", off, 56)?;
        if u32_at(ph, 0) != PT_NOTE {
            continue;
        }
        let area = slice(data, "note segment", u64_at(ph, 0x08), u64_at(ph, 0x20))?;
        if notes(area)
            .iter()
            .any(|(name, t, _)| *name == b"Xen" && *t == XEN_ELFNOTE_PHYS32_ENTRY)
        {
            return Ok(true);
        }
    }
    Ok(false)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    fn note(name: &[u8], ntype: u32, desc: &[u8]) -> Vec<u8> {
        let mut n = Vec::new();
        n.extend_from_slice(&((name.len() + 1) as u32).to_le_bytes());
        n.extend_from_slice(&(desc.len() as u32).to_le_bytes());
        n.extend_from_slice(&ntype.to_le_bytes());
        n.extend_from_slice(name);
        n.push(0);
        while n.len() % 4 != 0 {
            n.push(0);
        }
        n.extend_from_slice(desc);
        while n.len() % 4 != 0 {
            n.push(0);
        }
        n
    }

    /// An ELF64 file with one PT_NOTE segment holding `notes`, and sections `.shstrtab` and
    /// `sec_name` (contents `sec`).
    pub(crate) fn build_elf(notes_area: &[u8], sec_name: &str, sec: &[u8]) -> Vec<u8> {
        let mut f = vec![0u8; 64];
        f[..6].copy_from_slice(&[0x7f, b'E', b'L', b'F', 2, 1]);
        let phoff = f.len();
        f.resize(phoff + 56, 0);
        let note_off = f.len();
        f.extend_from_slice(notes_area);
        let sec_off = f.len();
        f.extend_from_slice(sec);
        let strtab_off = f.len();
        let strtab = format!("\0.shstrtab\0{sec_name}\0");
        f.extend_from_slice(strtab.as_bytes());
        let shoff = f.len();
        f.resize(shoff + 64 * 3, 0);
        // program header: PT_NOTE
        f[phoff..phoff + 4].copy_from_slice(&PT_NOTE.to_le_bytes());
        f[phoff + 8..phoff + 16].copy_from_slice(&(note_off as u64).to_le_bytes());
        f[phoff + 0x20..phoff + 0x28].copy_from_slice(&(notes_area.len() as u64).to_le_bytes());
        // section 1: .shstrtab, section 2: sec_name
        let put = |f: &mut Vec<u8>, i: usize, name: u32, off: usize, len: usize| {
            let b = shoff + 64 * i;
            f[b..b + 4].copy_from_slice(&name.to_le_bytes());
            f[b + 0x18..b + 0x20].copy_from_slice(&(off as u64).to_le_bytes());
            f[b + 0x20..b + 0x28].copy_from_slice(&(len as u64).to_le_bytes());
        };
        put(&mut f, 1, 1, strtab_off, strtab.len());
        put(&mut f, 2, 11, sec_off, sec.len());
        f[0x20..0x28].copy_from_slice(&(phoff as u64).to_le_bytes());
        f[0x28..0x30].copy_from_slice(&(shoff as u64).to_le_bytes());
        f[0x36..0x38].copy_from_slice(&56u16.to_le_bytes());
        f[0x38..0x3a].copy_from_slice(&1u16.to_le_bytes());
        f[0x3a..0x3c].copy_from_slice(&64u16.to_le_bytes());
        f[0x3c..0x3e].copy_from_slice(&3u16.to_le_bytes());
        f[0x3e..0x40].copy_from_slice(&1u16.to_le_bytes());
        f
    }

    #[test]
    fn finds_pvh_note_and_section() {
        let mut area = note(b"GNU", 3, &[1, 2, 3, 4]);
        area.extend(note(
            b"Xen",
            XEN_ELFNOTE_PHYS32_ENTRY,
            &0x100_0000u32.to_le_bytes(),
        ));
        let elf = build_elf(&area, ".modinfo", b"name=x\0");
        assert!(has_pvh_note(&elf).unwrap());
        assert_eq!(section(&elf, ".modinfo").unwrap(), Some(&b"name=x\0"[..]));
        assert_eq!(section(&elf, ".text").unwrap(), None);
    }

    #[test]
    fn no_pvh_note_without_xen_type_18() {
        let area = note(b"Xen", 17, &[0; 4]);
        let elf = build_elf(&area, ".x", b"");
        assert!(!has_pvh_note(&elf).unwrap());
    }

    #[test]
    fn bad_input_is_an_error_not_a_panic() {
        assert!(matches!(check_magic(b"MZ"), Err(ElfError::BadMagic(_))));
        let mut elf = build_elf(&note(b"Xen", 18, &[0; 4]), ".x", b"abc");
        // Point the section table far outside the file.
        elf[0x28..0x30].copy_from_slice(&u64::MAX.to_le_bytes());
        assert!(matches!(
            section(&elf, ".x"),
            Err(ElfError::OutOfBounds { .. })
        ));
        // Truncations of a valid file never panic.
        let good = build_elf(&note(b"Xen", 18, &[0; 4]), ".x", b"abc");
        for n in 0..good.len() {
            let _ = has_pvh_note(&good[..n]);
            let _ = section(&good[..n], ".x");
        }
    }
}
