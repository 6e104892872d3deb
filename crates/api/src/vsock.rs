//! The guest CID rule of virtio-vsock, checked alike by the per-VM API and the daemon's.

/// Smallest and largest CID a guest can have: 0 (hypervisor), 1 (local), 2 (host) and
/// u32::MAX (any) are reserved.
pub const CID_RANGE: (u64, u64) = (3, u32::MAX as u64 - 1);

/// Whether `cid` can be a guest's CID.
pub fn valid_cid(cid: u64) -> bool {
    (CID_RANGE.0..=CID_RANGE.1).contains(&cid)
}

#[cfg(test)]
mod tests {
    #[test]
    fn reserved_cids_are_refused() {
        for bad in [0, 1, 2, u64::from(u32::MAX), u64::MAX] {
            assert!(!super::valid_cid(bad), "{bad}");
        }
        for ok in [3, 1000, u64::from(u32::MAX) - 1] {
            assert!(super::valid_cid(ok), "{ok}");
        }
    }
}
