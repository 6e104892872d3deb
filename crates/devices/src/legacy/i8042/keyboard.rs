//! A minimal PS/2 keyboard behind the i8042: it answers the commands Linux's atkbd driver
//! sends while probing (reset, get ID, LEDs, typematic rate, scan code set, enable) so the
//! probe is quick, and never produces key strokes.

/// Acknowledge.
pub(super) const ACK: u8 = 0xfa;
/// Basic assurance test passed (after reset).
const BAT_OK: u8 = 0xaa;
/// Echo reply.
const ECHO: u8 = 0xee;
/// ID of an MF2 keyboard.
const ID: [u8; 2] = [0xab, 0x83];

const CMD_SET_LEDS: u8 = 0xed;
const CMD_ECHO: u8 = 0xee;
const CMD_SCANCODE_SET: u8 = 0xf0;
const CMD_GET_ID: u8 = 0xf2;
const CMD_SET_RATE: u8 = 0xf3;
const CMD_ENABLE: u8 = 0xf4;
const CMD_DISABLE: u8 = 0xf5;
const CMD_RESET: u8 = 0xff;

/// Keyboard state: which command waits for its parameter, and the settings it keeps.
#[derive(Clone, Debug)]
pub(super) struct Keyboard {
    awaiting_param: Option<u8>,
    scanning: bool,
    scancode_set: u8,
}

impl Default for Keyboard {
    fn default() -> Self {
        Self {
            awaiting_param: None,
            scanning: true,
            scancode_set: 2,
        }
    }
}

impl Keyboard {
    /// A keyboard in the given state, or `None` if it is not one the keyboard can be in.
    pub fn from_parts(
        awaiting_param: Option<u8>,
        scanning: bool,
        scancode_set: u8,
    ) -> Option<Self> {
        let pending_ok = matches!(
            awaiting_param,
            None | Some(CMD_SET_LEDS | CMD_SET_RATE | CMD_SCANCODE_SET)
        );
        (pending_ok && (1..=3).contains(&scancode_set)).then_some(Self {
            awaiting_param,
            scanning,
            scancode_set,
        })
    }

    /// The command waiting for its parameter byte.
    pub fn awaiting_param(&self) -> Option<u8> {
        self.awaiting_param
    }

    /// Whether scanning is enabled.
    pub fn scanning(&self) -> bool {
        self.scanning
    }

    /// The scan code set in use.
    pub fn scancode_set(&self) -> u8 {
        self.scancode_set
    }

    /// Handles a byte the host wrote to the keyboard; returns the keyboard's reply.
    pub fn write(&mut self, byte: u8) -> Vec<u8> {
        if let Some(cmd) = self.awaiting_param.take() {
            return self.param(cmd, byte);
        }
        match byte {
            CMD_SET_LEDS | CMD_SET_RATE | CMD_SCANCODE_SET => {
                self.awaiting_param = Some(byte);
                vec![ACK]
            }
            CMD_ECHO => vec![ECHO],
            CMD_GET_ID => vec![ACK, ID[0], ID[1]],
            CMD_ENABLE => {
                self.scanning = true;
                vec![ACK]
            }
            CMD_DISABLE => {
                self.scanning = false;
                vec![ACK]
            }
            CMD_RESET => {
                *self = Self::default();
                vec![ACK, BAT_OK]
            }
            // Set defaults, resend, set-3 key types: acknowledged, nothing to keep.
            _ => vec![ACK],
        }
    }

    fn param(&mut self, cmd: u8, byte: u8) -> Vec<u8> {
        match (cmd, byte) {
            (CMD_SCANCODE_SET, 0) => vec![ACK, self.scancode_set],
            (CMD_SCANCODE_SET, set @ 1..=3) => {
                self.scancode_set = set;
                vec![ACK]
            }
            // LED state and typematic rate are accepted and forgotten.
            _ => vec![ACK],
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn atkbd_probe_commands() {
        let mut k = Keyboard::default();
        assert_eq!(k.write(CMD_GET_ID), vec![ACK, 0xab, 0x83]);
        assert_eq!(k.write(CMD_SET_LEDS), vec![ACK]);
        assert_eq!(k.write(0x07), vec![ACK], "LED parameter");
        assert_eq!(k.write(CMD_SCANCODE_SET), vec![ACK]);
        assert_eq!(k.write(3), vec![ACK]);
        assert_eq!(k.write(CMD_SCANCODE_SET), vec![ACK]);
        assert_eq!(k.write(0), vec![ACK, 3], "query returns the set chosen");
        assert_eq!(k.write(CMD_DISABLE), vec![ACK]);
        assert!(!k.scanning);
        assert_eq!(k.write(CMD_RESET), vec![ACK, BAT_OK]);
        assert!(k.scanning);
        assert_eq!(k.scancode_set, 2);
        assert_eq!(k.write(CMD_ECHO), vec![ECHO]);
    }

    #[test]
    fn parameter_byte_is_not_taken_as_command() {
        let mut k = Keyboard::default();
        k.write(CMD_SET_RATE);
        // 0xff as a rate parameter must not reset.
        assert_eq!(k.write(CMD_RESET), vec![ACK]);
        assert_eq!(k.write(CMD_RESET), vec![ACK, BAT_OK]);
    }
}
