//! The vsock worker: reads the guest's packets from the tx queue into the [`Muxer`], and fills
//! rx buffers with what the muxer has for the guest, when the guest notifies a queue or a host
//! socket is ready. The event queue is never used (no transport reset events are sent).

use std::sync::atomic::Ordering;
use std::sync::Arc;

use virtio_queue::{Queue, QueueOwnedT, QueueT};
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::epoll::EventSet;

use super::muxer::Muxer;
use super::packet::{chain_len, checked_chain, read_tx, write_rx, HDR_LEN, MAX_PAYLOAD};
use super::VsockStats;
use crate::legacy::GuestLog;
use crate::virtio::{InterruptKind, QueueHandler, VirtioInterrupt};

/// Queue indices.
pub const RX: usize = 0;
/// The transmit queue.
pub const TX: usize = 1;

/// The state the worker thread owns (driven directly by the unit tests).
pub(crate) struct VsockWorker {
    /// Guest memory.
    pub(crate) mem: GuestMemoryMmap,
    /// Packets to the guest.
    pub(crate) rx: Queue,
    /// Packets from the guest.
    pub(crate) tx: Queue,
    /// The event queue, kept so the driver's buffers stay with the device.
    pub(crate) _event: Queue,
    /// The guest's cid.
    pub(crate) cid: u64,
    /// The connections.
    pub(crate) muxer: Muxer,
    /// Interrupts to the guest.
    pub(crate) interrupt: Arc<dyn VirtioInterrupt>,
    /// Counters.
    pub(crate) stats: Arc<VsockStats>,
    /// Warn-once log of bad chains.
    pub(crate) log: GuestLog,
    /// The tx queue stopped because the muxer's reset queue was full.
    pub(crate) tx_stalled: bool,
    /// Payload buffer, reused.
    pub(crate) buf: Vec<u8>,
}

impl VsockWorker {
    fn refuse(&self, what: &str, head: u16, e: &dyn std::fmt::Display) {
        self.stats.refused.fetch_add(1, Ordering::Relaxed);
        self.log.warn(format_args!(
            "virtio-vsock: {what} chain {head} refused: {e}"
        ));
    }

    /// Hands every available tx packet to the muxer (until its reset queue is full).
    pub fn process_tx(&mut self) {
        self.tx_stalled = false;
        let mut used = false;
        loop {
            let _ = self.tx.disable_notification(&self.mem);
            let mut progress = false;
            while !self.muxer.backlog_full() {
                let Some(chain) = self.tx.pop_descriptor_chain(&self.mem) else {
                    break;
                };
                progress = true;
                let head = chain.head_index();
                match read_tx(&self.mem, chain, self.cid, &mut self.buf) {
                    Ok(hdr) => self.muxer.on_guest_packet(&hdr, &self.buf),
                    Err(e) => self.refuse("tx", head, &e),
                }
                if let Err(e) = self.tx.add_used(&self.mem, head, 0) {
                    self.log
                        .warn(format_args!("virtio-vsock: cannot return tx {head}: {e:?}"));
                }
                used = true;
            }
            if self.muxer.backlog_full() {
                // Resumed when the guest takes the resets (after rx progress).
                self.tx_stalled = true;
                break;
            }
            let more = matches!(self.tx.enable_notification(&self.mem), Ok(true));
            if !progress || !more {
                break;
            }
        }
        if used && !matches!(self.tx.needs_notification(&self.mem), Ok(false)) {
            let _ = self.interrupt.trigger(InterruptKind::Queue(TX as u16));
        }
    }

    /// Fills rx buffers with the muxer's packets until either runs out, and resumes a stalled
    /// tx queue once the resets it waited for are taken.
    pub fn process_rx(&mut self) {
        loop {
            self.fill_rx();
            if !self.tx_stalled || self.muxer.backlog_full() {
                break;
            }
            self.process_tx();
        }
    }

    fn fill_rx(&mut self) {
        let mut used = false;
        while self.muxer.has_rx() {
            let mut chain = self.rx.pop_descriptor_chain(&self.mem);
            // Out of buffers: re-arm the notification and look once more (once only: a bogus
            // avail index must not spin).
            if chain.is_none() && matches!(self.rx.enable_notification(&self.mem), Ok(true)) {
                chain = self.rx.pop_descriptor_chain(&self.mem);
            }
            let Some(chain) = chain else {
                break;
            };
            let head = chain.head_index();
            let descs = match checked_chain(&self.mem, chain, true) {
                Ok(d) if chain_len(&d) >= HDR_LEN => d,
                Ok(d) => {
                    let e = format!("{} bytes, shorter than a header", chain_len(&d));
                    self.refuse("rx", head, &e);
                    self.give_back(head, 0);
                    used = true;
                    continue;
                }
                Err(e) => {
                    self.refuse("rx", head, &e);
                    self.give_back(head, 0);
                    used = true;
                    continue;
                }
            };
            let room = (chain_len(&descs) - HDR_LEN).min(MAX_PAYLOAD as usize);
            let Some(mut hdr) = self.muxer.next_rx(room, &mut self.buf) else {
                // Nothing after all (a socket had no data): the buffer stays the guest's.
                self.rx.go_to_previous_position();
                break;
            };
            hdr.len = self.buf.len() as u32;
            let n = write_rx(&self.mem, &descs, &hdr, &self.buf).unwrap_or_else(|e| {
                self.refuse("rx", head, &e);
                0
            });
            self.give_back(head, n);
            used = true;
        }
        if used && !matches!(self.rx.needs_notification(&self.mem), Ok(false)) {
            let _ = self.interrupt.trigger(InterruptKind::Queue(RX as u16));
        }
    }

    fn give_back(&mut self, head: u16, len: u32) {
        if let Err(e) = self.rx.add_used(&self.mem, head, len) {
            self.log
                .warn(format_args!("virtio-vsock: cannot return rx {head}: {e:?}"));
        }
    }
}

impl QueueHandler for VsockWorker {
    fn handle_queue(&mut self, queue: usize) {
        self.muxer.resume_listener();
        match queue {
            RX => self.process_rx(),
            TX => {
                self.process_tx();
                self.process_rx();
            }
            _ => {}
        }
    }

    fn handle_fd(&mut self, token: u32, events: EventSet) {
        self.muxer.handle_fd(token, events);
        self.process_rx();
    }
}
