//! The 16550A UART (ttyS0), on vm-superio's serial model.

use std::io::Write;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use vm_superio::serial::SerialEvents;
use vm_superio::Trigger;

use super::{fill_invalid, DeviceMetrics};
use crate::bus::BusDevice;
use crate::interrupt::Interrupt;

/// Port of COM1.
pub const SERIAL_BASE: u64 = 0x3f8;
/// Number of UART registers.
pub const SERIAL_LEN: u64 = 8;

/// Lock-free counters of one UART, fed by vm-superio's `SerialEvents` hook and by
/// [`Serial`] itself.
#[derive(Debug, Default)]
pub struct SerialMetrics {
    /// Bytes the guest transmitted that reached the output.
    pub bytes_out: AtomicU64,
    /// Bytes the guest transmitted that the output failed to take (lost).
    pub bytes_out_lost: AtomicU64,
    /// Bytes the guest read from the receive buffer.
    pub bytes_in: AtomicU64,
    /// Input bytes offered by the host that did not fit in the receive FIFO.
    pub missed_input: AtomicU64,
    /// Interrupts that could not be delivered.
    pub irq_errors: AtomicU64,
    /// Bad accesses (sizes other than 1 byte).
    pub access: DeviceMetrics,
}

impl SerialEvents for SerialMetrics {
    fn buffer_read(&self) {
        self.bytes_in.fetch_add(1, Ordering::Relaxed);
    }
    fn out_byte(&self) {
        self.bytes_out.fetch_add(1, Ordering::Relaxed);
    }
    fn tx_lost_byte(&self) {
        self.bytes_out_lost.fetch_add(1, Ordering::Relaxed);
    }
    fn in_buffer_empty(&self) {}
}

/// Adapts an [`Interrupt`] to vm-superio's `Trigger`.
struct IrqTrigger(Arc<dyn Interrupt>);

impl Trigger for IrqTrigger {
    type E = std::io::Error;
    fn trigger(&self) -> std::io::Result<()> {
        self.0.trigger()
    }
}

type Uart = vm_superio::Serial<IrqTrigger, Arc<SerialMetrics>, Box<dyn Write + Send>>;

/// A 16550A UART: 8 one-byte registers; output goes to a writer, input is queued by the
/// VMM with [`Serial::enqueue_input`].
pub struct Serial {
    uart: Uart,
    metrics: Arc<SerialMetrics>,
    /// Set once an output or interrupt error has been logged.
    error_logged: AtomicBool,
}

impl Serial {
    /// A UART that raises `irq` (IRQ 4 for COM1) and writes the guest's output to `out`.
    pub fn new(irq: Arc<dyn Interrupt>, out: Box<dyn Write + Send>) -> Self {
        let metrics = Arc::new(SerialMetrics::default());
        let uart = vm_superio::Serial::with_events(IrqTrigger(irq), Arc::clone(&metrics), out);
        Self {
            uart,
            metrics,
            error_logged: AtomicBool::new(false),
        }
    }

    /// The counters of this UART, readable without the device lock.
    pub fn metrics(&self) -> Arc<SerialMetrics> {
        Arc::clone(&self.metrics)
    }

    /// Queues host input for the guest and raises the receive interrupt. Returns how many
    /// bytes were taken: the FIFO is bounded, and the caller retries the rest later (bytes
    /// not taken are counted as missed input).
    pub fn enqueue_input(&mut self, bytes: &[u8]) -> usize {
        let capacity = self.uart.fifo_capacity();
        let taken = if bytes.is_empty() || capacity == 0 {
            0
        } else {
            match self.uart.enqueue_raw_bytes(bytes) {
                Ok(n) => n,
                Err(e) => {
                    // The only error left is the interrupt, raised after the bytes were
                    // queued: the guest still finds them at its next read of LSR.
                    self.log_error(format_args!("receive interrupt failed: {e:?}"));
                    self.metrics.irq_errors.fetch_add(1, Ordering::Relaxed);
                    bytes.len().min(capacity)
                }
            }
        };
        let missed = bytes.len().saturating_sub(taken);
        self.metrics
            .missed_input
            .fetch_add(missed as u64, Ordering::Relaxed);
        taken
    }

    /// Free space in the receive FIFO, in bytes.
    pub fn input_space(&self) -> usize {
        self.uart.fifo_capacity()
    }

    fn log_error(&self, what: std::fmt::Arguments<'_>) {
        if !self.error_logged.swap(true, Ordering::Relaxed) {
            tracing::warn!("serial: {what} (further errors are only counted)");
        }
    }
}

impl BusDevice for Serial {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        match (u8::try_from(offset), data) {
            (Ok(off), [byte]) if u64::from(off) < SERIAL_LEN => *byte = self.uart.read(off),
            (_, data) => {
                self.metrics.access.bad_access(
                    "serial",
                    format_args!("read of {} bytes at offset {offset:#x}", data.len()),
                );
                fill_invalid(data);
            }
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        match (u8::try_from(offset), data) {
            (Ok(off), &[value]) if u64::from(off) < SERIAL_LEN => {
                if let Err(e) = self.uart.write(off, value) {
                    // Output errors are counted by the SerialEvents hook (tx_lost_byte).
                    if let vm_superio::serial::Error::Trigger(_) = e {
                        self.metrics.irq_errors.fetch_add(1, Ordering::Relaxed);
                    }
                    self.log_error(format_args!("write of {value:#04x} at offset {off}: {e:?}"));
                }
            }
            _ => self.metrics.access.bad_access(
                "serial",
                format_args!("write of {} bytes at offset {offset:#x}", data.len()),
            ),
        }
    }
}

#[cfg(test)]
#[path = "serial_tests.rs"]
mod tests;
