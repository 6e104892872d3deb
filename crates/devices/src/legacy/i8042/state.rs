//! Plain, serialisable state of the i8042 (snapshots), and its validated restore.

use super::keyboard::Keyboard;
use super::{DataTarget, OutByte, I8042, OUT_CAPACITY, STS_AUXDATA, STS_TIMEOUT};

/// The plain state of an [`I8042`], without its interrupts and event sink.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct I8042State {
    /// The controller command byte.
    pub command_byte: u8,
    /// The output port (bit 0 reset line, bit 1 A20).
    pub output_port: u8,
    /// Controller command waiting for its data byte (0x60, 0xd1, 0xd2, 0xd3 or 0xd4).
    pub pending_command: Option<u8>,
    /// The last write went to the command port.
    pub last_was_command: bool,
    /// Bytes waiting to be read, oldest first, each with its status bits (0x20 AUX data,
    /// 0x40 time-out).
    pub output: Vec<(u8, u8)>,
    /// The last byte read from the data port (read again while the buffer is empty).
    pub last_data: u8,
    /// Keyboard command waiting for its parameter byte (0xed, 0xf0 or 0xf3).
    pub keyboard_pending: Option<u8>,
    /// Keyboard scanning enabled.
    pub keyboard_scanning: bool,
    /// Keyboard scan code set (1..=3).
    pub keyboard_scancode_set: u8,
}

/// Why an [`I8042State`] was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum I8042StateError {
    /// More bytes than the output buffer holds.
    #[error("i8042 state holds {len} output bytes, the buffer holds at most {max}")]
    OutputOverflow {
        /// Bytes in the state.
        len: usize,
        /// Capacity of the buffer.
        max: usize,
    },
    /// An output byte has status bits other than AUX data and time-out.
    #[error("i8042 state: output byte {index} has invalid status bits {bits:#04x}")]
    OutputStatus {
        /// Position in the output list.
        index: usize,
        /// The status bits given.
        bits: u8,
    },
    /// The pending controller command takes no data byte.
    #[error("i8042 state: pending command {0:#04x} takes no data byte")]
    PendingCommand(u8),
    /// The keyboard state is not one the keyboard can be in.
    #[error("i8042 state: invalid keyboard state (pending {pending:?}, scan code set {set})")]
    Keyboard {
        /// The pending keyboard command.
        pending: Option<u8>,
        /// The scan code set.
        set: u8,
    },
}

fn target_command(target: DataTarget) -> Option<u8> {
    match target {
        DataTarget::Keyboard => None,
        DataTarget::Ctr => Some(super::CMD_WRITE_CTR),
        DataTarget::OutputPort => Some(super::CMD_WRITE_OUTPUT_PORT),
        DataTarget::KbdLoop => Some(super::CMD_KBD_LOOP),
        DataTarget::AuxLoop => Some(super::CMD_AUX_LOOP),
        DataTarget::AuxSend => Some(super::CMD_AUX_SEND),
    }
}

fn command_target(cmd: Option<u8>) -> Result<DataTarget, I8042StateError> {
    Ok(match cmd {
        None => DataTarget::Keyboard,
        Some(super::CMD_WRITE_CTR) => DataTarget::Ctr,
        Some(super::CMD_WRITE_OUTPUT_PORT) => DataTarget::OutputPort,
        Some(super::CMD_KBD_LOOP) => DataTarget::KbdLoop,
        Some(super::CMD_AUX_LOOP) => DataTarget::AuxLoop,
        Some(super::CMD_AUX_SEND) => DataTarget::AuxSend,
        Some(other) => return Err(I8042StateError::PendingCommand(other)),
    })
}

impl I8042 {
    /// The plain state, for snapshots.
    pub fn state(&self) -> I8042State {
        let output = self
            .out
            .iter()
            .map(|b| {
                let aux = if b.aux { STS_AUXDATA } else { 0 };
                let timeout = if b.timeout { STS_TIMEOUT } else { 0 };
                (b.value, aux | timeout)
            })
            .collect();
        I8042State {
            command_byte: self.ctr,
            output_port: self.output_port,
            pending_command: target_command(self.target),
            last_was_command: self.last_was_command,
            output,
            last_data: self.last_data,
            keyboard_pending: self.keyboard.awaiting_param(),
            keyboard_scanning: self.keyboard.scanning(),
            keyboard_scancode_set: self.keyboard.scancode_set(),
        }
    }

    /// Restores `state` after checking it; on success the interrupt of a pending output
    /// byte is raised again (if enabled in the command byte). On error nothing changes.
    pub fn set_state(&mut self, state: &I8042State) -> Result<(), I8042StateError> {
        if state.output.len() > OUT_CAPACITY {
            return Err(I8042StateError::OutputOverflow {
                len: state.output.len(),
                max: OUT_CAPACITY,
            });
        }
        let mut out = std::collections::VecDeque::with_capacity(OUT_CAPACITY);
        for (index, &(value, bits)) in state.output.iter().enumerate() {
            if bits & !(STS_AUXDATA | STS_TIMEOUT) != 0 {
                return Err(I8042StateError::OutputStatus { index, bits });
            }
            out.push_back(OutByte {
                value,
                aux: bits & STS_AUXDATA != 0,
                timeout: bits & STS_TIMEOUT != 0,
            });
        }
        let target = command_target(state.pending_command)?;
        let keyboard = Keyboard::from_parts(
            state.keyboard_pending,
            state.keyboard_scanning,
            state.keyboard_scancode_set,
        )
        .ok_or(I8042StateError::Keyboard {
            pending: state.keyboard_pending,
            set: state.keyboard_scancode_set,
        })?;
        self.ctr = state.command_byte;
        self.output_port = state.output_port;
        self.target = target;
        self.last_was_command = state.last_was_command;
        self.out = out;
        self.last_data = state.last_data;
        self.keyboard = keyboard;
        self.head_signalled = false;
        self.signal_head();
        Ok(())
    }
}
