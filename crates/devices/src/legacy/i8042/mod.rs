//! The i8042 keyboard controller at ports 0x60 (data) and 0x64 (status / command),
//! inserted as one device at 0x60 of length 5 (offsets 0 and 4; 1..=3 are not ours).
//!
//! It answers Linux's i8042 and atkbd probes quickly (self-tests, command byte, port
//! enables, AUX loopback, a minimal keyboard) and turns a reset pulse (0xfe on 0x64) into
//! [`GuestEvent::Reboot`]. There is no mouse: bytes sent to the AUX device come back as
//! 0xfe with the time-out bit, which makes Linux's psmouse give up at once.
//!
//! Interrupts: each byte that reaches the head of the output buffer raises IRQ 1 (keyboard
//! channel) or the AUX interrupt (IRQ 12; IRQ 1 if none was given) when enabled in the
//! command byte. Without an AUX interrupt, Linux's AUX IRQ test waits 250 ms and then
//! disables the AUX port; give one with [`I8042::with_aux_irq`] to avoid that.

mod keyboard;
mod state;

use std::collections::VecDeque;
use std::sync::Arc;

use super::{fill_invalid, DeviceMetrics, GuestLog};
use crate::bus::BusDevice;
use crate::events::{GuestEvent, GuestEventSink};
use crate::interrupt::Interrupt;
use keyboard::Keyboard;
pub use state::{I8042State, I8042StateError};

/// Base port (data register; the status / command register is at base + 4).
pub const I8042_BASE: u64 = 0x60;
/// Length of the port range.
pub const I8042_LEN: u64 = 5;

const OFF_DATA: u64 = 0;
const OFF_STATUS: u64 = 4;

// Status register.
const STS_OBF: u8 = 0x01;
const STS_SYS: u8 = 0x04;
const STS_CMD: u8 = 0x08;
const STS_UNLOCKED: u8 = 0x10;
const STS_AUXDATA: u8 = 0x20;
const STS_TIMEOUT: u8 = 0x40;

// Command byte ("CTR").
const CTR_KBDINT: u8 = 0x01;
const CTR_AUXINT: u8 = 0x02;
const CTR_SYS: u8 = 0x04;
const CTR_KBDDIS: u8 = 0x10;
const CTR_AUXDIS: u8 = 0x20;
const CTR_XLATE: u8 = 0x40;
const CTR_DEFAULT: u8 = CTR_XLATE | CTR_SYS | CTR_AUXINT | CTR_KBDINT;

// Controller commands.
const CMD_READ_CTR: u8 = 0x20;
const CMD_WRITE_CTR: u8 = 0x60;
const CMD_AUX_DISABLE: u8 = 0xa7;
const CMD_AUX_ENABLE: u8 = 0xa8;
const CMD_AUX_TEST: u8 = 0xa9;
const CMD_SELF_TEST: u8 = 0xaa;
const CMD_KBD_TEST: u8 = 0xab;
const CMD_KBD_DISABLE: u8 = 0xad;
const CMD_KBD_ENABLE: u8 = 0xae;
const CMD_READ_OUTPUT_PORT: u8 = 0xd0;
const CMD_WRITE_OUTPUT_PORT: u8 = 0xd1;
const CMD_KBD_LOOP: u8 = 0xd2;
const CMD_AUX_LOOP: u8 = 0xd3;
const CMD_AUX_SEND: u8 = 0xd4;

const SELF_TEST_OK: u8 = 0x55;
const INTERFACE_OK: u8 = 0x00;
/// Reply of an absent AUX device (with the time-out status bit).
const NO_DEVICE: u8 = 0xfe;
/// Output port: bit 0 is the CPU reset line (active low), bit 1 the A20 gate.
const OUTPUT_PORT_DEFAULT: u8 = 0x03;
const OUTPUT_PORT_RESET: u8 = 0x01;
/// Bytes the output buffer holds at most (more are dropped).
const OUT_CAPACITY: usize = 16;

/// What the next byte written to the data port is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum DataTarget {
    Keyboard,
    Ctr,
    OutputPort,
    KbdLoop,
    AuxLoop,
    AuxSend,
}

/// A byte waiting in the output buffer.
#[derive(Clone, Copy, Debug)]
struct OutByte {
    value: u8,
    aux: bool,
    timeout: bool,
}

/// The i8042 keyboard controller.
pub struct I8042 {
    ctr: u8,
    output_port: u8,
    target: DataTarget,
    last_was_command: bool,
    out: VecDeque<OutByte>,
    /// The head of `out` has raised its interrupt already.
    head_signalled: bool,
    last_data: u8,
    keyboard: Keyboard,
    kbd_irq: Arc<dyn Interrupt>,
    aux_irq: Option<Arc<dyn Interrupt>>,
    events: Arc<dyn GuestEventSink>,
    metrics: Arc<DeviceMetrics>,
    log_reset: GuestLog,
}

impl I8042 {
    /// A controller raising `kbd_irq` (IRQ 1) and reporting reset pulses to `events`.
    pub fn new(kbd_irq: Arc<dyn Interrupt>, events: Arc<dyn GuestEventSink>) -> Self {
        Self {
            ctr: CTR_DEFAULT,
            output_port: OUTPUT_PORT_DEFAULT,
            target: DataTarget::Keyboard,
            last_was_command: false,
            out: VecDeque::with_capacity(OUT_CAPACITY),
            head_signalled: false,
            last_data: 0,
            keyboard: Keyboard::default(),
            kbd_irq,
            aux_irq: None,
            events,
            metrics: Arc::default(),
            log_reset: GuestLog::default(),
        }
    }

    /// Uses `irq` (IRQ 12) for bytes of the AUX channel instead of the keyboard IRQ.
    pub fn with_aux_irq(mut self, irq: Arc<dyn Interrupt>) -> Self {
        self.aux_irq = Some(irq);
        self
    }

    /// Bad-access and interrupt-error counters.
    pub fn metrics(&self) -> Arc<DeviceMetrics> {
        Arc::clone(&self.metrics)
    }

    fn status(&self) -> u8 {
        let mut s = STS_UNLOCKED;
        if self.ctr & CTR_SYS != 0 {
            s |= STS_SYS;
        }
        if self.last_was_command {
            s |= STS_CMD;
        }
        if let Some(head) = self.out.front() {
            s |= STS_OBF;
            if head.aux {
                s |= STS_AUXDATA;
            }
            if head.timeout {
                s |= STS_TIMEOUT;
            }
        }
        s
    }

    fn push(&mut self, value: u8, aux: bool, timeout: bool) {
        if self.out.len() >= OUT_CAPACITY {
            tracing::debug!("i8042: output buffer full, dropping {value:#04x}");
            return;
        }
        self.out.push_back(OutByte {
            value,
            aux,
            timeout,
        });
        self.signal_head();
    }

    /// Raises the interrupt of the byte at the head of the output buffer, once, if its
    /// channel's interrupt is enabled in the command byte.
    fn signal_head(&mut self) {
        let Some(head) = self.out.front() else {
            return;
        };
        if self.head_signalled {
            return;
        }
        let (enabled, irq) = if head.aux {
            let irq = self.aux_irq.as_ref().unwrap_or(&self.kbd_irq);
            (self.ctr & CTR_AUXINT != 0, irq)
        } else {
            (self.ctr & CTR_KBDINT != 0, &self.kbd_irq)
        };
        if enabled {
            self.head_signalled = true;
            if let Err(e) = irq.trigger() {
                self.metrics.irq_error("i8042", &e);
            }
        }
    }

    fn read_data(&mut self) -> u8 {
        if let Some(head) = self.out.pop_front() {
            self.last_data = head.value;
            self.head_signalled = false;
            self.signal_head();
        }
        // An empty buffer reads the last byte again, as the hardware does.
        self.last_data
    }

    fn reset_pulse(&self, source: &str) {
        self.log_reset.info(format_args!(
            "i8042: guest pulsed the reset line ({source})"
        ));
        self.events.notify(GuestEvent::Reboot);
    }

    fn command(&mut self, cmd: u8) {
        self.target = DataTarget::Keyboard;
        match cmd {
            CMD_READ_CTR => self.push(self.ctr, false, false),
            CMD_WRITE_CTR => self.target = DataTarget::Ctr,
            CMD_AUX_DISABLE => self.ctr |= CTR_AUXDIS,
            CMD_AUX_ENABLE => self.ctr &= !CTR_AUXDIS,
            CMD_AUX_TEST | CMD_KBD_TEST => self.push(INTERFACE_OK, false, false),
            CMD_SELF_TEST => {
                self.ctr |= CTR_SYS;
                self.push(SELF_TEST_OK, false, false);
            }
            CMD_KBD_DISABLE => self.ctr |= CTR_KBDDIS,
            CMD_KBD_ENABLE => self.ctr &= !CTR_KBDDIS,
            CMD_READ_OUTPUT_PORT => self.push(self.output_port, false, false),
            CMD_WRITE_OUTPUT_PORT => self.target = DataTarget::OutputPort,
            CMD_KBD_LOOP => self.target = DataTarget::KbdLoop,
            CMD_AUX_LOOP => self.target = DataTarget::AuxLoop,
            CMD_AUX_SEND => self.target = DataTarget::AuxSend,
            // Pulse output lines: bit 0 clear pulses the CPU reset line (0xfe).
            0xf0..=0xff if cmd & 1 == 0 => self.reset_pulse("command 0xfe"),
            0xf0..=0xff => {}
            _ => self
                .metrics
                .bad_access("i8042", format_args!("unsupported command {cmd:#04x}")),
        }
    }

    fn write_data(&mut self, value: u8) {
        let target = std::mem::replace(&mut self.target, DataTarget::Keyboard);
        match target {
            DataTarget::Ctr => {
                self.ctr = value;
                // Enabling a channel's interrupt with a byte pending raises it.
                self.signal_head();
            }
            DataTarget::OutputPort => {
                self.output_port = value;
                if value & OUTPUT_PORT_RESET == 0 {
                    self.reset_pulse("output port write");
                }
            }
            DataTarget::KbdLoop => self.push(value, false, false),
            DataTarget::AuxLoop => self.push(value, true, false),
            DataTarget::AuxSend => self.push(NO_DEVICE, true, true),
            DataTarget::Keyboard => {
                for reply in self.keyboard.write(value) {
                    self.push(reply, false, false);
                }
            }
        }
    }
}

impl BusDevice for I8042 {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        match (offset, data) {
            (OFF_DATA, [byte]) => *byte = self.read_data(),
            (OFF_STATUS, [byte]) => *byte = self.status(),
            (_, data) => {
                self.metrics.bad_access(
                    "i8042",
                    format_args!("read of {} bytes at offset {offset}", data.len()),
                );
                fill_invalid(data);
            }
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        match (offset, data) {
            (OFF_DATA, &[value]) => {
                self.last_was_command = false;
                self.write_data(value);
            }
            (OFF_STATUS, &[cmd]) => {
                self.last_was_command = true;
                self.command(cmd);
            }
            _ => self.metrics.bad_access(
                "i8042",
                format_args!("write of {} bytes at offset {offset}", data.len()),
            ),
        }
    }
}

#[cfg(test)]
mod tests;
