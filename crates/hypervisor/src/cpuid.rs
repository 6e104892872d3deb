//! CPUID as the guest sees it: what KVM supports, plus the hypervisor bit and a topology of
//! `count` single-threaded cores in one socket with APIC ID = vCPU index.

use kvm_bindings::{kvm_cpuid_entry2, CpuId};

/// Where one vCPU sits in the VM's topology.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CpuTopology {
    pub index: u8,
    pub count: u8,
}

const LEAF1_ECX_HYPERVISOR: u32 = 1 << 31;
const LEAF1_EDX_HTT: u32 = 1 << 28;

/// Bits needed to number `count` cores.
fn id_bits(count: u8) -> u32 {
    if count <= 1 {
        0
    } else {
        u32::BITS - u32::from(count - 1).leading_zeros()
    }
}

/// Adjusts the supported CPUID for one vCPU.
pub fn patch(cpuid: &mut CpuId, topo: CpuTopology) {
    for e in cpuid.as_mut_slice().iter_mut() {
        patch_entry(e, topo);
    }
}

fn patch_entry(e: &mut kvm_cpuid_entry2, topo: CpuTopology) {
    let apic_id = u32::from(topo.index);
    let count = u32::from(topo.count.max(1));
    match e.function {
        0x1 => {
            e.ecx |= LEAF1_ECX_HYPERVISOR;
            // EBX: [31:24] initial APIC ID, [23:16] logical processors per package, [15:8] CLFLUSH
            // line size (keep), [7:0] brand index (keep).
            e.ebx = (apic_id << 24) | (count << 16) | (e.ebx & 0xffff);
            if count > 1 {
                e.edx |= LEAF1_EDX_HTT;
            } else {
                e.edx &= !LEAF1_EDX_HTT;
            }
        }
        0x4 => {
            // Intel cache leaves: EAX[31:26] = cores per package - 1; [25:14] sharing: 1 thread.
            e.eax = (e.eax & 0x3ff) | ((count - 1) << 26);
        }
        0xb | 0x1f => {
            // Extended topology: level 0 = SMT (1 thread), level 1 = core (count cores).
            match e.index {
                0 => {
                    e.eax = 0;
                    e.ebx = 1;
                    e.ecx = 1 << 8;
                }
                1 => {
                    e.eax = id_bits(topo.count);
                    e.ebx = count;
                    e.ecx = 1 | (2 << 8);
                }
                _ => {
                    e.eax = 0;
                    e.ebx = 0;
                    e.ecx = e.index;
                }
            }
            e.edx = apic_id;
        }
        0x8000_0008 => {
            // ECX[15:12] APIC ID size, [7:0] number of cores - 1.
            e.ecx = (id_bits(topo.count) << 12) | (count - 1);
        }
        0x8000_001e => {
            // AMD extended APIC ID, compute unit ID (1 thread per core), node 0.
            e.eax = apic_id;
            e.ebx = apic_id & 0xff;
            e.ecx = 0;
            e.edx = 0;
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(function: u32, index: u32) -> kvm_cpuid_entry2 {
        kvm_cpuid_entry2 {
            function,
            index,
            ebx: 0x0000_0800,
            ..Default::default()
        }
    }

    #[test]
    fn leaf1_has_hypervisor_bit_and_apic_id() {
        let mut e = entry(1, 0);
        patch_entry(&mut e, CpuTopology { index: 3, count: 4 });
        assert_ne!(e.ecx & LEAF1_ECX_HYPERVISOR, 0);
        assert_eq!(e.ebx >> 24, 3);
        assert_eq!((e.ebx >> 16) & 0xff, 4);
        assert_eq!(e.ebx & 0xffff, 0x0800, "CLFLUSH size kept");
        assert_ne!(e.edx & LEAF1_EDX_HTT, 0);
    }

    #[test]
    fn extended_topology_counts_cores() {
        let mut core = entry(0xb, 1);
        patch_entry(&mut core, CpuTopology { index: 2, count: 3 });
        assert_eq!(core.ebx, 3);
        assert_eq!(core.eax, 2, "3 cores need 2 bits of APIC ID");
        assert_eq!(core.edx, 2);
        let mut smt = entry(0xb, 0);
        patch_entry(&mut smt, CpuTopology { index: 2, count: 3 });
        assert_eq!(smt.ebx, 1);
    }

    #[test]
    fn id_bits_rounds_up() {
        assert_eq!(id_bits(1), 0);
        assert_eq!(id_bits(2), 1);
        assert_eq!(id_bits(3), 2);
        assert_eq!(id_bits(4), 2);
        assert_eq!(id_bits(5), 3);
        assert_eq!(id_bits(255), 8);
    }
}
