//! Hand-made guest programs for the KVM tests: flat 32-bit protected mode at CPL0, code at
//! 0x1000, with a small assembler of the few instructions the tests need.

#![allow(dead_code)]

use std::io::Write;
use std::sync::{Arc, Mutex};

use vmm::{DescriptorTable, Payload, Regs, SRegs, Segment, VmConfig};

pub const LOAD_ADDR: u64 = 0x1000;

/// Machine code, built up instruction by instruction.
#[derive(Default)]
pub struct Asm(pub Vec<u8>);

impl Asm {
    pub fn mov_dx(mut self, v: u16) -> Self {
        self.0.extend([0x66, 0xba]);
        self.0.extend(v.to_le_bytes());
        self
    }
    pub fn mov_al(mut self, v: u8) -> Self {
        self.0.extend([0xb0, v]);
        self
    }
    pub fn mov_ax(mut self, v: u16) -> Self {
        self.0.extend([0x66, 0xb8]);
        self.0.extend(v.to_le_bytes());
        self
    }
    pub fn mov_ecx(mut self, v: u32) -> Self {
        self.0.push(0xb9);
        self.0.extend(v.to_le_bytes());
        self
    }
    /// out dx, al
    pub fn out_al(mut self) -> Self {
        self.0.push(0xee);
        self
    }
    /// out dx, ax
    pub fn out_ax(mut self) -> Self {
        self.0.extend([0x66, 0xef]);
        self
    }
    /// in al, dx
    pub fn in_al(mut self) -> Self {
        self.0.push(0xec);
        self
    }
    /// mov [addr], al
    pub fn store_al(mut self, addr: u32) -> Self {
        self.0.push(0xa2);
        self.0.extend(addr.to_le_bytes());
        self
    }
    /// mov al, [addr]
    pub fn load_al(mut self, addr: u32) -> Self {
        self.0.push(0xa0);
        self.0.extend(addr.to_le_bytes());
        self
    }
    pub fn ud2(mut self) -> Self {
        self.0.extend([0x0f, 0x0b]);
        self
    }
    /// jmp $ (spin)
    pub fn spin(mut self) -> Self {
        self.0.extend([0xeb, 0xfe]);
        self
    }
    /// Current offset, for loops.
    pub fn here(&self) -> usize {
        self.0.len()
    }
    /// jmp back to `target` (an offset from `here`).
    pub fn jmp_to(mut self, target: usize) -> Self {
        let rel = target as isize - (self.0.len() as isize + 2);
        self.0.extend([0xeb, rel as i8 as u8]);
        self
    }
    /// Writes one byte to the serial port.
    pub fn serial_byte(self, b: u8) -> Self {
        self.mov_dx(0x3f8).mov_al(b).out_al()
    }
    /// ACPI S5: SLP_TYP=5 | SLP_EN into PM1a_CNT.
    pub fn acpi_poweroff(self) -> Self {
        self.mov_dx(0x604)
            .mov_ax((5 << 10) | (1 << 13))
            .out_ax()
            .spin()
    }
}

fn flat(selector: u16, type_: u8) -> Segment {
    Segment {
        base: 0,
        limit: 0xffff_ffff,
        selector,
        type_,
        present: 1,
        dpl: 0,
        db: 1,
        s: 1,
        l: 0,
        g: 1,
        avl: 0,
        unusable: 0,
    }
}

/// Entry state for flat 32-bit protected mode, paging off.
pub fn protected_mode() -> (Regs, SRegs) {
    let data = flat(0x10, 0x3);
    let sregs = SRegs {
        cs: flat(0x08, 0xb),
        ds: data,
        es: data,
        fs: data,
        gs: data,
        ss: data,
        tr: Segment {
            selector: 0x18,
            type_: 0xb,
            present: 1,
            limit: 0x67,
            ..Default::default()
        },
        ldt: Segment {
            type_: 0x2,
            present: 1,
            unusable: 1,
            ..Default::default()
        },
        gdt: DescriptorTable { base: 0, limit: 0 },
        idt: DescriptorTable { base: 0, limit: 0 },
        cr0: 0x11,
        cr3: 0,
        cr4: 0,
        efer: 0,
    };
    let regs = Regs {
        rip: LOAD_ADDR,
        rsp: 0x8000,
        rflags: 0x2,
        ..Default::default()
    };
    (regs, sregs)
}

pub fn config(code: Asm, cpus: usize) -> VmConfig {
    let (regs, sregs) = protected_mode();
    VmConfig {
        payload: Payload::Raw {
            code: code.0,
            load_addr: LOAD_ADDR,
            regs: Box::new(regs),
            sregs: Box::new(sregs),
        },
        cpus,
        memory: 32 << 20,
    }
}

/// A console writer the test can read back.
#[derive(Clone, Default)]
pub struct Captured(pub Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Captured {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}
