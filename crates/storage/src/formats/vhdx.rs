//! VHDX (Hyper-V) images, read-only: headers with CRC-32C, region table, metadata, BAT.
//! Images with a pending log or a parent are refused with a clear error.

use crate::backend::{check_range, BlockBackend, BlockError, Extent, ExtentKind};
use crate::file::ImageFile;

/// Error opening a VHDX image.
#[derive(Debug, thiserror::Error)]
pub enum VhdxError {
    /// I/O failed.
    #[error(transparent)]
    Block(#[from] BlockError),
    /// No "vhdxfile" signature.
    #[error("not a VHDX image (no vhdxfile signature)")]
    BadSignature,
    /// A structure that does not check out.
    #[error("VHDX {what}: {why}")]
    Bad {
        /// Structure or field.
        what: &'static str,
        /// What is wrong, with values.
        why: String,
    },
    /// A feature thinvm does not read.
    #[error("unsupported VHDX feature: {0}")]
    Unsupported(String),
}

const KIB64: u64 = 64 << 10;
const BAT_GUID: &str = "2DC27766-F623-4200-9D64-115E9BFD4A08";
const METADATA_GUID: &str = "8B7CA206-4790-4B9A-B8FE-575F050F886E";
const FILE_PARAMS: &str = "CAA16737-FA36-4D43-B3B6-33F0AA44E76B";
const DISK_SIZE: &str = "2FA54224-CD1B-4876-B211-5DBED83BF4B8";
const LOGICAL_SECTOR: &str = "8141BF1D-A96F-4709-BA47-F233A8FAAB5F";
const KNOWN_METADATA: [&str; 6] = [
    FILE_PARAMS,
    DISK_SIZE,
    LOGICAL_SECTOR,
    "CDA348C7-445D-4471-9CC9-E9885251C556", // physical sector size
    "BECA12AB-B2E6-4523-93EF-C309E000C746", // page 83 data
    "A8D35F2D-B30B-454D-ABF7-D3D84834AB0C", // parent locator
];

/// A GUID in its on-disk form (first three fields little-endian).
fn guid(s: &str) -> [u8; 16] {
    let hex: Vec<u8> = s
        .bytes()
        .filter(|c| *c != b'-')
        .collect::<Vec<_>>()
        .chunks(2)
        .map(|p| u8::from_str_radix(std::str::from_utf8(p).unwrap_or("00"), 16).unwrap_or(0))
        .collect();
    let mut g = [0u8; 16];
    g.copy_from_slice(&hex[..16]);
    g[0..4].reverse();
    g[4..6].reverse();
    g[6..8].reverse();
    g
}

/// CRC-32C (Castagnoli), as VHDX headers and region tables use.
pub fn crc32c(data: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in data {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0x82f6_3b78
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

fn le16(b: &[u8], at: usize) -> u16 {
    b.get(at..at + 2)
        .map_or(0, |s| u16::from_le_bytes([s[0], s[1]]))
}
fn le32(b: &[u8], at: usize) -> u32 {
    b.get(at..at + 4)
        .map_or(0, |s| u32::from_le_bytes(s.try_into().expect("4")))
}
fn le64(b: &[u8], at: usize) -> u64 {
    b.get(at..at + 8)
        .map_or(0, |s| u64::from_le_bytes(s.try_into().expect("8")))
}

fn checksum_ok(buf: &[u8]) -> bool {
    let mut copy = buf.to_vec();
    copy[4..8].fill(0);
    crc32c(&copy) == le32(buf, 4)
}

/// (offset, length) of a region.
type Region = (u64, u32);

/// An open VHDX image.
pub struct Vhdx {
    file: Box<dyn ImageFile>,
    size: u64,
    block: u64,
    chunk_ratio: u64,
    bat: Vec<u64>,
    flen: u64,
}

fn bad(what: &'static str, why: String) -> VhdxError {
    VhdxError::Bad { what, why }
}

impl Vhdx {
    /// Opens a VHDX image (read-only).
    pub fn open(file: Box<dyn ImageFile>) -> Result<Self, VhdxError> {
        let flen = file.len_checked()?;
        let mut sig = [0u8; 8];
        if flen < 5 * KIB64 {
            return Err(VhdxError::BadSignature);
        }
        file.read_exact_at(&mut sig, 0)?;
        if &sig != b"vhdxfile" {
            return Err(VhdxError::BadSignature);
        }
        let header = Self::current_header(&*file)?;
        if header[0x30..0x40].iter().any(|&b| b != 0) {
            return Err(VhdxError::Unsupported(
                "the log is not empty (replay it first, e.g. with Hyper-V or qemu-img check -r all)".into(),
            ));
        }
        if le16(&header, 0x42) != 1 {
            return Err(VhdxError::Unsupported(format!(
                "header version {}",
                le16(&header, 0x42)
            )));
        }
        let (bat_region, meta_region) = Self::regions(&*file, flen)?;
        let (block, size, lss) = Self::metadata(&*file, meta_region)?;
        let chunk_ratio = ((1u64 << 23) * lss) / block;
        let blocks = size.div_ceil(block);
        let entries = blocks + blocks.saturating_sub(1) / chunk_ratio;
        if entries * 8 > u64::from(bat_region.1) {
            return Err(bad(
                "BAT",
                format!("{} bytes cannot hold {entries} entries", bat_region.1),
            ));
        }
        let mut raw = vec![0u8; (entries * 8) as usize];
        file.read_exact_at(&mut raw, bat_region.0)?;
        let bat = raw
            .chunks_exact(8)
            .map(|c| u64::from_le_bytes(c.try_into().expect("8")))
            .collect();
        Ok(Vhdx {
            file,
            size,
            block,
            chunk_ratio,
            bat,
            flen,
        })
    }

    fn current_header(file: &dyn ImageFile) -> Result<Vec<u8>, VhdxError> {
        let mut best: Option<Vec<u8>> = None;
        for off in [KIB64, 2 * KIB64] {
            let mut h = vec![0u8; 4096];
            file.read_exact_at(&mut h, off)?;
            if &h[..4] != b"head" || !checksum_ok(&h) {
                continue;
            }
            if best.as_ref().is_none_or(|b| le64(&h, 8) > le64(b, 8)) {
                best = Some(h);
            }
        }
        best.ok_or_else(|| {
            bad(
                "headers",
                "neither header has a valid signature and checksum".into(),
            )
        })
    }

    /// (offset, length) of the BAT and metadata regions.
    fn regions(file: &dyn ImageFile, flen: u64) -> Result<(Region, Region), VhdxError> {
        for off in [3 * KIB64, 4 * KIB64] {
            let mut t = vec![0u8; KIB64 as usize];
            file.read_exact_at(&mut t, off)?;
            if &t[..4] != b"regi" || !checksum_ok(&t) {
                continue;
            }
            let count = le32(&t, 8);
            if count > 2047 {
                return Err(bad(
                    "region table",
                    format!("{count} entries (at most 2047)"),
                ));
            }
            let (mut bat, mut meta) = (None, None);
            for i in 0..count as usize {
                let e = &t[16 + 32 * i..48 + 32 * i];
                let (roff, rlen, req) = (le64(e, 16), le32(e, 24), le32(e, 28));
                if roff < 5 * KIB64 || roff.checked_add(u64::from(rlen)).is_none_or(|x| x > flen) {
                    return Err(bad(
                        "region",
                        format!("at {roff:#x} length {rlen} is outside the file ({flen} bytes)"),
                    ));
                }
                if e[..16] == guid(BAT_GUID) {
                    bat = Some((roff, rlen));
                } else if e[..16] == guid(METADATA_GUID) {
                    meta = Some((roff, rlen));
                } else if req & 1 != 0 {
                    return Err(VhdxError::Unsupported("an unknown required region".into()));
                }
            }
            return match (bat, meta) {
                (Some(b), Some(m)) => Ok((b, m)),
                _ => Err(bad("region table", "no BAT or no metadata region".into())),
            };
        }
        Err(bad(
            "region tables",
            "neither copy has a valid signature and checksum".into(),
        ))
    }

    /// (block size, virtual size, logical sector size) from the metadata region.
    fn metadata(
        file: &dyn ImageFile,
        (off, len): (u64, u32),
    ) -> Result<(u64, u64, u64), VhdxError> {
        let mut m = vec![0u8; len.min(1 << 20) as usize];
        file.read_exact_at(&mut m, off)?;
        if m.get(..8) != Some(b"metadata") {
            return Err(bad("metadata table", "no metadata signature".into()));
        }
        let count = le16(&m, 10) as usize;
        if count > 2047 {
            return Err(bad(
                "metadata table",
                format!("{count} entries (at most 2047)"),
            ));
        }
        let item = |id: &str| -> Result<Option<&[u8]>, VhdxError> {
            for i in 0..count {
                let e = m
                    .get(32 + 32 * i..64 + 32 * i)
                    .ok_or_else(|| bad("metadata table", "entries past the region".into()))?;
                if e[..16] == guid(id) {
                    let (io, il) = (le32(e, 16) as usize, le32(e, 20) as usize);
                    return m.get(io..io.saturating_add(il)).map(Some).ok_or_else(|| {
                        bad(
                            "metadata item",
                            format!("{id} at {io:#x} length {il} is outside the region"),
                        )
                    });
                }
            }
            Ok(None)
        };
        for i in 0..count {
            let e = &m[32 + 32 * i..64 + 32 * i];
            let known = KNOWN_METADATA.iter().any(|k| e[..16] == guid(k));
            if !known && le32(e, 24) & 4 != 0 {
                return Err(VhdxError::Unsupported(
                    "an unknown required metadata item".into(),
                ));
            }
        }
        let params =
            item(FILE_PARAMS)?.ok_or_else(|| bad("metadata", "no file parameters".into()))?;
        let block = u64::from(le32(params, 0));
        if le32(params, 4) & 2 != 0 {
            return Err(VhdxError::Unsupported(
                "differencing images (has parent)".into(),
            ));
        }
        if !block.is_power_of_two() || !(1 << 20..=256 << 20).contains(&block) {
            return Err(bad(
                "block size",
                format!("{block} (must be a power of two, 1 MiB to 256 MiB)"),
            ));
        }
        let size = le64(
            item(DISK_SIZE)?.ok_or_else(|| bad("metadata", "no virtual disk size".into()))?,
            0,
        );
        let lss = u64::from(le32(
            item(LOGICAL_SECTOR)?
                .ok_or_else(|| bad("metadata", "no logical sector size".into()))?,
            0,
        ));
        if lss != 512 && lss != 4096 {
            return Err(bad(
                "logical sector size",
                format!("{lss} (must be 512 or 4096)"),
            ));
        }
        if size == 0 || size > 64 << 40 || !size.is_multiple_of(lss) {
            return Err(bad(
                "virtual disk size",
                format!("{size} (must be 1 sector .. 64 TiB, whole sectors)"),
            ));
        }
        Ok((block, size, lss))
    }

    fn map(&self, guest: u64) -> Result<(Option<u64>, u64), BlockError> {
        let bi = guest / self.block;
        let rest = self.block - guest % self.block;
        let idx = bi + bi / self.chunk_ratio;
        let e = self.bat.get(idx as usize).copied().unwrap_or(0);
        match e & 7 {
            0..=3 => Ok((None, rest)),
            6 => {
                let host = (e >> 20) << 20;
                if host < 5 * KIB64 || host >= self.flen {
                    return Err(BlockError::Corrupt {
                        path: self.file.path().to_path_buf(),
                        detail: format!("VHDX block {bi} at {host:#x} is in the header area or past the end of the file"),
                    });
                }
                Ok((Some(host + guest % self.block), rest))
            }
            s => Err(BlockError::Corrupt {
                path: self.file.path().to_path_buf(),
                detail: format!("VHDX block {bi} has state {s}, invalid without a parent"),
            }),
        }
    }
}

impl BlockBackend for Vhdx {
    fn read_at(&mut self, buf: &mut [u8], offset: u64) -> Result<(), BlockError> {
        check_range(offset, buf.len() as u64, self.size)?;
        let mut done = 0usize;
        while done < buf.len() {
            let pos = offset + done as u64;
            let (host, rest) = self.map(pos)?;
            let n = (rest as usize).min(buf.len() - done);
            match host {
                Some(h) => self.file.read_zero_fill(&mut buf[done..done + n], h)?,
                None => buf[done..done + n].fill(0),
            }
            done += n;
        }
        Ok(())
    }
    fn write_at(&mut self, _buf: &[u8], _offset: u64) -> Result<(), BlockError> {
        Err(BlockError::ReadOnly {
            path: self.file.path().to_path_buf(),
        })
    }
    fn flush(&mut self) -> Result<(), BlockError> {
        Ok(())
    }
    fn discard(&mut self, _offset: u64, _len: u64) -> Result<(), BlockError> {
        Err(BlockError::ReadOnly {
            path: self.file.path().to_path_buf(),
        })
    }
    fn write_zeroes(&mut self, _offset: u64, _len: u64) -> Result<(), BlockError> {
        Err(BlockError::ReadOnly {
            path: self.file.path().to_path_buf(),
        })
    }
    fn size(&self) -> u64 {
        self.size
    }
    fn read_only(&self) -> bool {
        true
    }
    fn extent(&mut self, offset: u64, len: u64) -> Result<Extent, BlockError> {
        check_range(offset, len, self.size)?;
        let (host, rest) = self.map(offset)?;
        let kind = if host.is_some() {
            ExtentKind::Data
        } else {
            ExtentKind::Zero
        };
        Ok(Extent {
            kind,
            len: rest.min(len).max(1),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc32c_check_value() {
        assert_eq!(crc32c(b"123456789"), 0xe306_9283);
    }

    #[test]
    fn guid_layout() {
        assert_eq!(guid(BAT_GUID)[..4], [0x66, 0x77, 0xc2, 0x2d]);
        assert_eq!(
            guid(BAT_GUID)[8..],
            [0x9d, 0x64, 0x11, 0x5e, 0x9b, 0xfd, 0x4a, 0x08]
        );
    }
}
