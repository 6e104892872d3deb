//! Per-device counters of a VM, named as Cloud Hypervisor names its devices in `vm.counters`:
//! `_disk<N>`, `_net<N>` and `_vsock<N>`, N from one counter shared by every named device, in
//! the order they were added (so one disk and one card are `_disk0` and `_net1`, as in Cloud
//! Hypervisor; the vsock device is added after them).
//! The handles are the devices' own lock-free stats, read while the VM runs.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use devices::virtio::block::BlockStats;
use devices::virtio::net::NetStats;
use devices::virtio::vsock::VsockStats;

/// One device's live stats.
#[derive(Clone, Debug)]
enum Stats {
    Block(Arc<BlockStats>),
    Net(Arc<NetStats>),
    Vsock(Arc<VsockStats>),
    /// A device whose I/O the VMM does not see (a vhost-net card): named, no counters.
    Unmeasured,
}

/// The counters of every named device of a VM (cheap to clone; the values stay live).
#[derive(Clone, Debug, Default)]
pub struct DeviceCounters {
    devices: Vec<(String, Stats)>,
}

/// One group of `vm.counters`: the device's name and its counters.
pub type CounterGroup = (String, Vec<(&'static str, u64)>);

impl DeviceCounters {
    fn next_name(&self, prefix: &str) -> String {
        format!("{prefix}{}", self.devices.len())
    }

    /// Registers a block device; returns its name (`_diskN`).
    pub(crate) fn add_block(&mut self, stats: Arc<BlockStats>) -> String {
        let name = self.next_name("_disk");
        self.devices.push((name.clone(), Stats::Block(stats)));
        name
    }

    /// Registers a net device; returns its name (`_netN`). A card without `stats` (vhost-net:
    /// the kernel moves its frames) keeps its name and number but reports no counters, rather
    /// than zeros that were never measured.
    pub(crate) fn add_net(&mut self, stats: Option<Arc<NetStats>>) -> String {
        let name = self.next_name("_net");
        let stats = stats.map_or(Stats::Unmeasured, Stats::Net);
        self.devices.push((name.clone(), stats));
        name
    }

    /// Registers the vsock device; returns its name (`_vsockN`).
    pub(crate) fn add_vsock(&mut self, stats: Arc<VsockStats>) -> String {
        let name = self.next_name("_vsock");
        self.devices.push((name.clone(), Stats::Vsock(stats)));
        name
    }

    /// Every device's counters now, in the order the devices were added.
    pub fn groups(&self) -> Vec<CounterGroup> {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        self.devices
            .iter()
            .map(|(name, stats)| {
                let values = match stats {
                    Stats::Block(s) => vec![
                        ("read_bytes", get(&s.read_bytes)),
                        ("read_ops", get(&s.read_ops)),
                        ("write_bytes", get(&s.write_bytes)),
                        ("write_ops", get(&s.write_ops)),
                    ],
                    Stats::Net(s) => vec![
                        ("rx_bytes", get(&s.rx_bytes)),
                        ("rx_frames", get(&s.rx_frames)),
                        ("tx_bytes", get(&s.tx_bytes)),
                        ("tx_frames", get(&s.tx_frames)),
                    ],
                    Stats::Vsock(s) => vec![
                        ("connections", get(&s.connections)),
                        ("active", get(&s.active)),
                        ("to_host_bytes", get(&s.to_host_bytes)),
                        ("to_guest_bytes", get(&s.to_guest_bytes)),
                        ("refused", get(&s.refused)),
                        ("resets", get(&s.resets)),
                        ("connect_timeouts", get(&s.connect_timeouts)),
                        ("line_timeouts", get(&s.line_timeouts)),
                    ],
                    Stats::Unmeasured => Vec::new(),
                };
                (name.clone(), values)
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_share_one_counter_and_values_are_live() {
        let mut c = DeviceCounters::default();
        let b = Arc::new(BlockStats::default());
        let n = Arc::new(NetStats::default());
        assert_eq!(c.add_block(b.clone()), "_disk0");
        assert_eq!(c.add_block(Arc::default()), "_disk1");
        assert_eq!(c.add_net(Some(n.clone())), "_net2");
        let snapshot = c.clone();
        b.read_bytes.fetch_add(4096, Ordering::Relaxed);
        n.tx_frames.fetch_add(3, Ordering::Relaxed);
        let g = snapshot.groups();
        assert_eq!(g.len(), 3);
        assert_eq!(g[0].0, "_disk0");
        assert!(g[0].1.contains(&("read_bytes", 4096)));
        assert_eq!(g[2].0, "_net2");
        assert!(g[2].1.contains(&("tx_frames", 3)));
        assert!(g[2].1.contains(&("rx_bytes", 0)));
    }

    #[test]
    fn the_vsock_device_reports_its_connections_and_timeouts() {
        let mut c = DeviceCounters::default();
        assert_eq!(c.add_block(Arc::default()), "_disk0");
        let v = Arc::new(VsockStats::default());
        assert_eq!(c.add_vsock(v.clone()), "_vsock1");
        v.connect_timeouts.fetch_add(2, Ordering::Relaxed);
        v.to_guest_bytes.fetch_add(10, Ordering::Relaxed);
        let g = c.groups();
        assert_eq!(g[1].0, "_vsock1");
        assert!(g[1].1.contains(&("connect_timeouts", 2)));
        assert!(g[1].1.contains(&("to_guest_bytes", 10)));
        assert_eq!(g[1].1.len(), 8);
    }

    #[test]
    fn a_vhost_card_is_named_but_reports_nothing() {
        let mut c = DeviceCounters::default();
        assert_eq!(c.add_net(None), "_net0");
        assert_eq!(c.add_net(Some(Arc::default())), "_net1");
        let g = c.groups();
        assert_eq!(g[0], ("_net0".to_string(), Vec::new()));
        assert_eq!(g[1].1.len(), 4);
    }
}
