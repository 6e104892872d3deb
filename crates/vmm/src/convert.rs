//! The boot crate's entry state, in the hypervisor crate's register types.

use boot::EntryState;
use hypervisor::{DescriptorTable, Regs, SRegs, Segment};

fn seg(s: &boot::Segment) -> Segment {
    Segment {
        base: s.base,
        limit: s.limit,
        selector: s.selector,
        type_: s.type_,
        present: s.present,
        dpl: s.dpl,
        db: s.db,
        s: s.s,
        l: s.l,
        g: s.g,
        avl: s.avl,
        unusable: s.unusable,
    }
}

fn table(t: &boot::DescriptorTable) -> DescriptorTable {
    DescriptorTable {
        base: t.base,
        limit: t.limit,
    }
}

/// Registers for the boot vCPU.
pub fn entry_state(e: &EntryState) -> (Regs, SRegs) {
    let regs = Regs {
        rip: e.regs.rip,
        rsp: e.regs.rsp,
        rbp: e.regs.rbp,
        rsi: e.regs.rsi,
        rbx: e.regs.rbx,
        rflags: e.regs.rflags,
        ..Default::default()
    };
    let s = &e.sregs;
    let sregs = SRegs {
        cs: seg(&s.cs),
        ds: seg(&s.ds),
        es: seg(&s.es),
        fs: seg(&s.fs),
        gs: seg(&s.gs),
        ss: seg(&s.ss),
        tr: seg(&s.tr),
        ldt: seg(&s.ldt),
        gdt: table(&s.gdt),
        idt: table(&s.idt),
        cr0: s.cr0,
        cr3: s.cr3,
        cr4: s.cr4,
        efer: s.efer,
    };
    (regs, sregs)
}
