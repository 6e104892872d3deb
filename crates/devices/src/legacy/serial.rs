//! The 16550A UART (ttyS0), on vm-superio's serial model.

use std::io::Write;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use vm_superio::serial::SerialEvents;
pub use vm_superio::serial::SerialState;
use vm_superio::Trigger;

use super::{fill_invalid, DeviceMetrics};
use crate::bus::BusDevice;
use crate::interrupt::Interrupt;

/// Port of COM1.
pub const SERIAL_BASE: u64 = 0x3f8;
/// Number of UART registers.
pub const SERIAL_LEN: u64 = 8;

/// Lock-free counters of one UART, fed by vm-superio's `SerialEvents` hook and by
/// [`Serial`] itself. Readable without the device lock (see [`Serial::metrics`]).
#[derive(Debug, Default)]
pub struct SerialMetrics {
    /// Bytes the guest transmitted that reached the output.
    pub bytes_out: AtomicU64,
    /// Bytes the guest transmitted that the output failed to take (lost).
    pub bytes_out_lost: AtomicU64,
    /// Bytes the guest read from the receive buffer.
    pub bytes_in: AtomicU64,
    /// Calls of [`Serial::enqueue_input`] that could not take every byte (FIFO full; the
    /// caller retries, so this counts back-pressure events, not lost bytes).
    pub missed_input: AtomicU64,
    /// Interrupts that could not be delivered.
    pub irq_errors: AtomicU64,
    /// Bad accesses (sizes other than 1 byte).
    pub access: DeviceMetrics,
}

/// vm-superio's event hook: feeds the metrics and wakes the input feeder.
struct SerialHooks {
    metrics: Arc<SerialMetrics>,
    /// Signalled when the guest has drained the receive FIFO.
    drained: Mutex<Option<Arc<dyn Interrupt>>>,
}

impl SerialEvents for SerialHooks {
    fn buffer_read(&self) {
        self.metrics.bytes_in.fetch_add(1, Ordering::Relaxed);
    }
    fn out_byte(&self) {
        self.metrics.bytes_out.fetch_add(1, Ordering::Relaxed);
    }
    fn tx_lost_byte(&self) {
        self.metrics.bytes_out_lost.fetch_add(1, Ordering::Relaxed);
    }
    fn in_buffer_empty(&self) {
        let drained = self.drained.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(notify) = drained.as_ref() {
            if notify.trigger().is_err() {
                self.metrics.irq_errors.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

/// Adapts an [`Interrupt`] to vm-superio's `Trigger`.
struct IrqTrigger(Arc<dyn Interrupt>);

impl Trigger for IrqTrigger {
    type E = std::io::Error;
    fn trigger(&self) -> std::io::Result<()> {
        self.0.trigger()
    }
}

type Uart = vm_superio::Serial<IrqTrigger, SerialHooks, Box<dyn Write + Send>>;

/// Why a UART could not be restored from a [`SerialState`].
#[derive(Debug, thiserror::Error)]
pub enum SerialError {
    /// The saved receive buffer is larger than the FIFO.
    #[error("serial state holds {len} input bytes, more than the FIFO takes")]
    FifoOverflow {
        /// Bytes in the saved receive buffer.
        len: usize,
    },
    /// Re-raising a pending interrupt of the saved state failed.
    #[error("serial state restore: raising the pending interrupt failed: {0}")]
    Interrupt(#[source] std::io::Error),
    /// Any other restore failure of the UART model.
    #[error("serial state restore failed: {0}")]
    Restore(String),
}

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
        let uart = vm_superio::Serial::with_events(IrqTrigger(irq), Self::hooks(&metrics), out);
        Self::wrap(uart, metrics)
    }

    /// A UART restored from `state` (as returned by [`Serial::state`]); pending interrupts
    /// of the state are raised again.
    pub fn from_state(
        state: &SerialState,
        irq: Arc<dyn Interrupt>,
        out: Box<dyn Write + Send>,
    ) -> Result<Self, SerialError> {
        let metrics = Arc::new(SerialMetrics::default());
        let hooks = Self::hooks(&metrics);
        let uart = vm_superio::Serial::from_state(state, IrqTrigger(irq), hooks, out).map_err(
            |e| match e {
                vm_superio::serial::Error::FullFifo => SerialError::FifoOverflow {
                    len: state.in_buffer.len(),
                },
                vm_superio::serial::Error::Trigger(e) => SerialError::Interrupt(e),
                vm_superio::serial::Error::IOError(e) => SerialError::Restore(e.to_string()),
            },
        )?;
        Ok(Self::wrap(uart, metrics))
    }

    fn hooks(metrics: &Arc<SerialMetrics>) -> SerialHooks {
        SerialHooks {
            metrics: Arc::clone(metrics),
            drained: Mutex::new(None),
        }
    }

    fn wrap(uart: Uart, metrics: Arc<SerialMetrics>) -> Self {
        Self {
            uart,
            metrics,
            error_logged: AtomicBool::new(false),
        }
    }

    /// The register state and pending input, for snapshots.
    pub fn state(&self) -> SerialState {
        self.uart.state()
    }

    /// Signals `notify` whenever the guest empties the receive FIFO, so an input feeder
    /// that got a short count from [`Serial::enqueue_input`] knows when to retry.
    pub fn set_input_drained_notifier(&mut self, notify: Arc<dyn Interrupt>) {
        let hooks = self.uart.events();
        *hooks.drained.lock().unwrap_or_else(|e| e.into_inner()) = Some(notify);
    }

    /// The counters of this UART, readable without the device lock.
    pub fn metrics(&self) -> Arc<SerialMetrics> {
        Arc::clone(&self.metrics)
    }

    /// Queues host input for the guest and raises the receive interrupt. Returns how many
    /// bytes were taken: the FIFO is bounded, and the caller retries the rest later (see
    /// [`Serial::set_input_drained_notifier`]); a short count is counted as missed input.
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
        if taken < bytes.len() {
            self.metrics.missed_input.fetch_add(1, Ordering::Relaxed);
        }
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
