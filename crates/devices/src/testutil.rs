//! Test doubles for the interrupt and event traits.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use crate::events::{GuestEvent, GuestEventSink};
use crate::interrupt::{Interrupt, IrqLine};

/// An edge interrupt that counts its triggers.
#[derive(Default)]
pub struct CountingInterrupt(AtomicU64);

impl CountingInterrupt {
    /// How many times `trigger` was called.
    pub fn count(&self) -> u64 {
        self.0.load(Ordering::SeqCst)
    }
}

impl Interrupt for CountingInterrupt {
    fn trigger(&self) -> std::io::Result<()> {
        self.0.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }
}

/// A level line that records every level it was set to.
#[derive(Default)]
pub struct RecordingLine(Mutex<Vec<bool>>);

impl RecordingLine {
    /// The last level set, `None` if never set.
    pub fn level(&self) -> Option<bool> {
        self.0.lock().unwrap().last().copied()
    }
    /// Number of `set_level` calls.
    pub fn calls(&self) -> usize {
        self.0.lock().unwrap().len()
    }
}

impl IrqLine for RecordingLine {
    fn set_level(&self, high: bool) -> std::io::Result<()> {
        self.0.lock().unwrap().push(high);
        Ok(())
    }
}

/// A sink that records the events it was told about.
#[derive(Default)]
pub struct EventRecorder(Mutex<Vec<GuestEvent>>);

impl EventRecorder {
    /// Events seen so far, oldest first.
    pub fn events(&self) -> Vec<GuestEvent> {
        self.0.lock().unwrap().clone()
    }
}

impl GuestEventSink for EventRecorder {
    fn notify(&self, event: GuestEvent) {
        self.0.lock().unwrap().push(event);
    }
}
