//! The qcow2 header and its extensions: parsing with validation, and serialization.

use super::Qcow2Error;

/// "QFI\xfb".
pub const MAGIC: u32 = 0x5146_49fb;
/// Length of a version 2 header (and of the fixed part of version 3).
pub const V2_HEADER_LEN: usize = 72;
/// Length of the version 3 header written by [`Header::to_bytes`].
pub const V3_HEADER_LEN: u32 = 112;
/// Largest L1 table accepted (QEMU's limit: 32 MiB).
pub const MAX_L1_BYTES: u64 = 32 << 20;
/// Largest refcount table accepted (QEMU's limit: 8 MiB).
pub const MAX_REFTABLE_BYTES: u64 = 8 << 20;

/// Incompatible feature bits.
pub mod incompat {
    /// Refcounts may be stale (lazy refcounts); rebuild before writing.
    pub const DIRTY: u64 = 1 << 0;
    /// The image was found corrupt; never write it.
    pub const CORRUPT: u64 = 1 << 1;
    /// Guest data lives in an external file.
    pub const DATA_FILE: u64 = 1 << 2;
    /// The compression type field is not deflate.
    pub const COMPRESSION: u64 = 1 << 3;
    /// Extended L2 entries (subclusters).
    pub const EXTL2: u64 = 1 << 4;
    /// Every bit this implementation understands.
    pub const KNOWN: u64 = DIRTY | CORRUPT | DATA_FILE | COMPRESSION | EXTL2;
}

const EXT_END: u32 = 0;
const EXT_BACKING_FORMAT: u32 = 0xe279_2aca;
const EXT_FEATURE_NAMES: u32 = 0x6803_f857;
const EXT_DATA_FILE: u32 = 0x4441_5441;
const EXT_CRYPTO: u32 = 0x0537_be77;

/// A parsed qcow2 header.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Header {
    /// 2 or 3.
    pub version: u32,
    /// Offset of the backing file name (0: none).
    pub backing_file_offset: u64,
    /// Length of the backing file name.
    pub backing_file_size: u32,
    /// log2 of the cluster size.
    pub cluster_bits: u32,
    /// Virtual disk size.
    pub size: u64,
    /// 0 (none) is the only method accepted.
    pub crypt_method: u32,
    /// Entries in the L1 table.
    pub l1_size: u32,
    /// Offset of the L1 table.
    pub l1_table_offset: u64,
    /// Offset of the refcount table.
    pub refcount_table_offset: u64,
    /// Clusters of the refcount table.
    pub refcount_table_clusters: u32,
    /// Internal snapshots.
    pub nb_snapshots: u32,
    /// Offset of the snapshot table.
    pub snapshots_offset: u64,
    /// Incompatible feature bits.
    pub incompatible: u64,
    /// Compatible feature bits.
    pub compatible: u64,
    /// Autoclear feature bits.
    pub autoclear: u64,
    /// log2 of the refcount width in bits.
    pub refcount_order: u32,
    /// Length of the header before extensions.
    pub header_length: u32,
    /// 0 deflate, 1 zstd.
    pub compression_type: u8,
    /// Backing file name.
    pub backing_file: Option<String>,
    /// Backing file format (extension 0xe2792aca).
    pub backing_format: Option<String>,
    /// Feature names: (type, bit, name).
    pub feature_names: Vec<(u8, u8, String)>,
    /// An external data file is named.
    pub has_data_file: bool,
}

fn be32(b: &[u8], at: usize) -> u32 {
    b.get(at..at + 4)
        .and_then(|s| s.try_into().ok())
        .map(u32::from_be_bytes)
        .unwrap_or(0)
}

fn be64(b: &[u8], at: usize) -> u64 {
    b.get(at..at + 8)
        .and_then(|s| s.try_into().ok())
        .map(u64::from_be_bytes)
        .unwrap_or(0)
}

impl Header {
    /// Cluster size in bytes.
    pub fn cluster_size(&self) -> u64 {
        1 << self.cluster_bits
    }

    /// Parses and validates the first cluster of an image (`buf`) of `file_len` bytes.
    pub fn parse(buf: &[u8], file_len: u64) -> Result<Header, Qcow2Error> {
        let bad = |field: &'static str, value: u64, why: &'static str| Qcow2Error::BadHeader {
            field,
            value,
            why,
        };
        if buf.len() < V2_HEADER_LEN {
            return Err(Qcow2Error::Truncated { len: file_len });
        }
        if be32(buf, 0) != MAGIC {
            return Err(Qcow2Error::BadMagic);
        }
        let mut h = Header {
            version: be32(buf, 4),
            backing_file_offset: be64(buf, 8),
            backing_file_size: be32(buf, 16),
            cluster_bits: be32(buf, 20),
            size: be64(buf, 24),
            crypt_method: be32(buf, 32),
            l1_size: be32(buf, 36),
            l1_table_offset: be64(buf, 40),
            refcount_table_offset: be64(buf, 48),
            refcount_table_clusters: be32(buf, 56),
            nb_snapshots: be32(buf, 60),
            snapshots_offset: be64(buf, 64),
            refcount_order: 4,
            header_length: V2_HEADER_LEN as u32,
            ..Header::default()
        };
        if h.version != 2 && h.version != 3 {
            return Err(Qcow2Error::UnsupportedVersion(h.version));
        }
        if !(9..=21).contains(&h.cluster_bits) {
            return Err(bad("cluster_bits", h.cluster_bits.into(), "must be 9..=21"));
        }
        let cs = h.cluster_size();
        if h.version == 3 {
            if buf.len() < 104 {
                return Err(Qcow2Error::Truncated { len: file_len });
            }
            h.incompatible = be64(buf, 72);
            h.compatible = be64(buf, 80);
            h.autoclear = be64(buf, 88);
            h.refcount_order = be32(buf, 96);
            h.header_length = be32(buf, 100);
            if h.header_length < 104 || u64::from(h.header_length) > cs {
                return Err(bad(
                    "header_length",
                    h.header_length.into(),
                    "must be 104..=cluster size",
                ));
            }
            if h.header_length > 104 {
                h.compression_type = buf.get(104).copied().unwrap_or(0);
            }
        }
        h.validate(file_len)?;
        h.parse_extensions(buf)?;
        let unknown = h.incompatible & !incompat::KNOWN;
        if unknown != 0 {
            return Err(Qcow2Error::UnknownIncompatible(
                h.describe_incompatible(unknown),
            ));
        }
        h.parse_backing_name(buf)?;
        Ok(h)
    }

    fn validate(&self, file_len: u64) -> Result<(), Qcow2Error> {
        let bad = |field: &'static str, value: u64, why: &'static str| Qcow2Error::BadHeader {
            field,
            value,
            why,
        };
        let cs = self.cluster_size();
        if self.crypt_method != 0 {
            return Err(Qcow2Error::Unsupported(format!(
                "encryption (crypt_method {})",
                self.crypt_method
            )));
        }
        if self.refcount_order > 6 {
            return Err(bad(
                "refcount_order",
                self.refcount_order.into(),
                "must be 0..=6",
            ));
        }
        if self.size > (1 << 60) {
            return Err(bad("size", self.size, "larger than 2^60 bytes"));
        }
        let l2_entries = cs / self.l2_entry_size();
        let per_l1 = cs * l2_entries;
        let needed = self.size.div_ceil(per_l1);
        if u64::from(self.l1_size) < needed {
            return Err(bad(
                "l1_size",
                self.l1_size.into(),
                "too small for the virtual size",
            ));
        }
        if u64::from(self.l1_size) * 8 > MAX_L1_BYTES {
            return Err(bad(
                "l1_size",
                self.l1_size.into(),
                "L1 table larger than 32 MiB",
            ));
        }
        let in_file = |off: u64, len: u64| off.checked_add(len).is_some_and(|e| e <= file_len);
        if self.l1_size > 0
            && (self.l1_table_offset == 0
                || !self.l1_table_offset.is_multiple_of(cs)
                || !in_file(self.l1_table_offset, u64::from(self.l1_size) * 8))
        {
            return Err(bad(
                "l1_table_offset",
                self.l1_table_offset,
                "unaligned, in the header or past the end of the file",
            ));
        }
        let rt_len = u64::from(self.refcount_table_clusters) * cs;
        if self.refcount_table_clusters == 0 || rt_len > MAX_REFTABLE_BYTES {
            return Err(bad(
                "refcount_table_clusters",
                self.refcount_table_clusters.into(),
                "must be 1.. and at most 8 MiB",
            ));
        }
        if self.refcount_table_offset == 0
            || !self.refcount_table_offset.is_multiple_of(cs)
            || !in_file(self.refcount_table_offset, rt_len)
        {
            return Err(bad(
                "refcount_table_offset",
                self.refcount_table_offset,
                "unaligned, in the header or past the end of the file",
            ));
        }
        if self.nb_snapshots > 65536 {
            return Err(bad(
                "nb_snapshots",
                self.nb_snapshots.into(),
                "more than 65536",
            ));
        }
        if self.nb_snapshots > 0
            && (!self.snapshots_offset.is_multiple_of(cs)
                || self.snapshots_offset == 0
                || self.snapshots_offset >= file_len)
        {
            return Err(bad(
                "snapshots_offset",
                self.snapshots_offset,
                "unaligned or outside the file",
            ));
        }
        if self.compression_type > 1 {
            return Err(bad(
                "compression_type",
                self.compression_type.into(),
                "must be 0 (deflate) or 1 (zstd)",
            ));
        }
        if (self.compression_type != 0) != (self.incompatible & incompat::COMPRESSION != 0) {
            return Err(bad(
                "compression_type",
                self.compression_type.into(),
                "does not match incompatible bit 3",
            ));
        }
        Ok(())
    }

    /// Bytes per L2 entry: 8, or 16 with extended L2.
    pub fn l2_entry_size(&self) -> u64 {
        if self.incompatible & incompat::EXTL2 != 0 {
            16
        } else {
            8
        }
    }

    fn parse_extensions(&mut self, buf: &[u8]) -> Result<(), Qcow2Error> {
        let mut at = self.header_length as usize;
        let limit = if self.backing_file_offset > 0 {
            (self.backing_file_offset as usize).min(buf.len())
        } else {
            buf.len()
        };
        loop {
            // No room for an extension header: the list ends here (a version 2 header
            // followed directly by the backing file name, for instance).
            if at + 8 > limit {
                return Ok(());
            }
            let ty = be32(buf, at);
            let len = be32(buf, at + 4) as usize;
            let data_at = at + 8;
            let Some(data) = buf
                .get(data_at..data_at.saturating_add(len))
                .filter(|_| data_at + len <= limit)
            else {
                return Err(Qcow2Error::BadExtension {
                    offset: at as u64,
                    why: "extension length past the header cluster",
                });
            };
            match ty {
                EXT_END => return Ok(()),
                EXT_BACKING_FORMAT => {
                    self.backing_format = Some(String::from_utf8_lossy(data).into_owned());
                }
                EXT_FEATURE_NAMES => {
                    for e in data.chunks_exact(48) {
                        let name = e[2..].split(|&c| c == 0).next().unwrap_or(&[]);
                        self.feature_names.push((
                            e[0],
                            e[1],
                            String::from_utf8_lossy(name).into_owned(),
                        ));
                    }
                }
                EXT_DATA_FILE => self.has_data_file = true,
                EXT_CRYPTO => {
                    return Err(Qcow2Error::Unsupported("encryption (crypto header)".into()));
                }
                _ => {}
            }
            at = data_at + len.next_multiple_of(8);
        }
    }

    fn parse_backing_name(&mut self, buf: &[u8]) -> Result<(), Qcow2Error> {
        if self.backing_file_offset == 0 {
            return Ok(());
        }
        let start = self.backing_file_offset as usize;
        let len = self.backing_file_size as usize;
        if len == 0 || len > 1023 {
            return Err(Qcow2Error::BadHeader {
                field: "backing_file_size",
                value: len as u64,
                why: "must be 1..=1023",
            });
        }
        match buf.get(start..start.saturating_add(len)) {
            Some(name) if (self.backing_file_offset as u128) < buf.len() as u128 => {
                let s = std::str::from_utf8(name).map_err(|_| Qcow2Error::BadHeader {
                    field: "backing_file_offset",
                    value: self.backing_file_offset,
                    why: "backing file name is not UTF-8",
                })?;
                self.backing_file = Some(s.to_owned());
                Ok(())
            }
            _ => Err(Qcow2Error::BadHeader {
                field: "backing_file_offset",
                value: self.backing_file_offset,
                why: "backing file name outside the first cluster",
            }),
        }
    }

    /// Names the given incompatible bits from the feature-name table (or by number).
    pub fn describe_incompatible(&self, bits: u64) -> String {
        let mut out = Vec::new();
        for bit in 0..64u8 {
            if bits & (1 << bit) == 0 {
                continue;
            }
            let name = self
                .feature_names
                .iter()
                .find(|(t, b, _)| *t == 0 && *b == bit);
            match name {
                Some((_, _, n)) => out.push(format!("bit {bit} ({n})")),
                None => out.push(format!("bit {bit}")),
            }
        }
        out.join(", ")
    }

    /// Serializes a header (version 3 unless `version` is 2) with its backing file name and
    /// backing format extension, into one cluster.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut b = vec![0u8; self.cluster_size() as usize];
        let put32 =
            |b: &mut Vec<u8>, at: usize, v: u32| b[at..at + 4].copy_from_slice(&v.to_be_bytes());
        let put64 =
            |b: &mut Vec<u8>, at: usize, v: u64| b[at..at + 8].copy_from_slice(&v.to_be_bytes());
        put32(&mut b, 0, MAGIC);
        put32(&mut b, 4, self.version);
        put32(&mut b, 20, self.cluster_bits);
        put64(&mut b, 24, self.size);
        put32(&mut b, 36, self.l1_size);
        put64(&mut b, 40, self.l1_table_offset);
        put64(&mut b, 48, self.refcount_table_offset);
        put32(&mut b, 56, self.refcount_table_clusters);
        let mut at = V2_HEADER_LEN;
        if self.version == 3 {
            put64(&mut b, 72, self.incompatible);
            put64(&mut b, 80, self.compatible);
            put64(&mut b, 88, self.autoclear);
            put32(&mut b, 96, self.refcount_order);
            put32(&mut b, 100, V3_HEADER_LEN);
            at = V3_HEADER_LEN as usize;
        }
        if let Some(fmt) = &self.backing_format {
            put32(&mut b, at, EXT_BACKING_FORMAT);
            put32(&mut b, at + 4, fmt.len() as u32);
            b[at + 8..at + 8 + fmt.len()].copy_from_slice(fmt.as_bytes());
            at += 8 + fmt.len().next_multiple_of(8);
        }
        at += 8; // end-of-extensions marker: type 0, length 0
        if let Some(name) = &self.backing_file {
            put64(&mut b, 8, at as u64);
            put32(&mut b, 16, name.len() as u32);
            b[at..at + name.len()].copy_from_slice(name.as_bytes());
        }
        b
    }
}
