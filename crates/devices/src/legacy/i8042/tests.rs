use super::*;
use crate::testutil::{CountingInterrupt, EventRecorder};

struct Rig {
    dev: I8042,
    kbd: Arc<CountingInterrupt>,
    aux: Arc<CountingInterrupt>,
    events: Arc<EventRecorder>,
}

fn rig() -> Rig {
    let kbd = Arc::new(CountingInterrupt::default());
    let aux = Arc::new(CountingInterrupt::default());
    let events = Arc::new(EventRecorder::default());
    let dev = I8042::new(kbd.clone(), events.clone()).with_aux_irq(aux.clone());
    Rig {
        dev,
        kbd,
        aux,
        events,
    }
}

impl Rig {
    fn status(&mut self) -> u8 {
        let mut b = [0];
        self.dev.read(OFF_STATUS, &mut b);
        b[0]
    }
    fn data(&mut self) -> u8 {
        let mut b = [0];
        self.dev.read(OFF_DATA, &mut b);
        b[0]
    }
    fn cmd(&mut self, c: u8) {
        self.dev.write(OFF_STATUS, &[c]);
    }
    fn put(&mut self, v: u8) {
        self.dev.write(OFF_DATA, &[v]);
    }
    /// Reads one reply the way Linux's i8042_wait_read does: OBF must be set.
    fn reply(&mut self) -> (u8, u8) {
        let st = self.status();
        assert_ne!(st & STS_OBF, 0, "no reply pending");
        (self.data(), st)
    }
    fn ctr(&mut self) -> u8 {
        self.cmd(CMD_READ_CTR);
        self.reply().0
    }
}

#[test]
fn linux_probe_sequence() {
    let mut r = rig();
    // Flush: nothing pending.
    assert_eq!(r.status() & STS_OBF, 0);
    // Controller self-test.
    r.cmd(CMD_SELF_TEST);
    assert_eq!(r.reply().0, SELF_TEST_OK);
    assert_eq!(r.status() & STS_OBF, 0, "OBF clears once the byte is read");
    assert_ne!(r.status() & STS_SYS, 0);
    // Read the command byte twice, then write it back changed.
    let ctr = r.ctr();
    assert_eq!(r.ctr(), ctr);
    let new = (ctr | CTR_KBDDIS) & !CTR_KBDINT;
    r.cmd(CMD_WRITE_CTR);
    r.put(new);
    assert_eq!(r.ctr(), new);
    // AUX loopback: the byte comes back on the AUX channel.
    r.cmd(CMD_AUX_LOOP);
    r.put(0x5a);
    let (v, st) = r.reply();
    assert_eq!(v, 0x5a);
    assert_ne!(st & STS_AUXDATA, 0);
    // AUX port toggle is reflected in the command byte.
    r.cmd(CMD_AUX_DISABLE);
    assert_ne!(r.ctr() & CTR_AUXDIS, 0);
    r.cmd(CMD_AUX_ENABLE);
    assert_eq!(r.ctr() & CTR_AUXDIS, 0);
    // Interface tests.
    r.cmd(CMD_AUX_TEST);
    assert_eq!(r.reply().0, INTERFACE_OK);
    r.cmd(CMD_KBD_TEST);
    assert_eq!(r.reply().0, INTERFACE_OK);
    // Keyboard port enable.
    r.cmd(CMD_KBD_ENABLE);
    assert_eq!(r.ctr() & CTR_KBDDIS, 0);
    r.cmd(CMD_KBD_DISABLE);
    assert_ne!(r.ctr() & CTR_KBDDIS, 0);
    assert!(r.events.events().is_empty());
}

#[test]
fn aux_irq_test_and_absent_mouse() {
    let mut r = rig();
    r.cmd(CMD_WRITE_CTR);
    r.put(CTR_AUXINT | CTR_SYS);
    // Linux's AUX IRQ test: loop 0xa5 and wait for the AUX interrupt.
    r.cmd(CMD_AUX_LOOP);
    r.put(0xa5);
    assert_eq!(r.aux.count(), 1);
    assert_eq!(r.kbd.count(), 0);
    assert_eq!(
        r.reply(),
        (0xa5, STS_OBF | STS_AUXDATA | STS_SYS | STS_UNLOCKED)
    );
    // A command to the (absent) mouse answers "no device" with the time-out bit.
    r.cmd(CMD_AUX_SEND);
    r.put(0xf2);
    let (v, st) = r.reply();
    assert_eq!(v, NO_DEVICE);
    assert_eq!(st & (STS_AUXDATA | STS_TIMEOUT), STS_AUXDATA | STS_TIMEOUT);
    assert_eq!(r.aux.count(), 2);
}

#[test]
fn keyboard_replies_raise_irq1_per_byte() {
    let mut r = rig();
    r.put(0xf2); // GET ID
    assert_eq!(r.kbd.count(), 1, "only the head byte is signalled");
    assert_eq!(r.reply(), (keyboard::ACK, STS_OBF | STS_SYS | STS_UNLOCKED));
    assert_eq!(r.kbd.count(), 2);
    assert_eq!(r.data(), 0xab);
    assert_eq!(r.data(), 0x83);
    assert_eq!(r.kbd.count(), 3);
    assert_eq!(r.status() & STS_OBF, 0);
    // Empty buffer re-reads the last byte and raises nothing.
    assert_eq!(r.data(), 0x83);
    assert_eq!(r.kbd.count(), 3);
}

#[test]
fn interrupts_follow_the_command_byte() {
    let mut r = rig();
    r.cmd(CMD_WRITE_CTR);
    r.put(CTR_SYS); // All interrupts off.
    r.put(0xee); // Echo.
    assert_eq!(r.kbd.count(), 0);
    assert_ne!(r.status() & STS_OBF, 0);
    // Enabling the keyboard interrupt with a byte pending raises it once.
    r.cmd(CMD_WRITE_CTR);
    r.put(CTR_SYS | CTR_KBDINT);
    assert_eq!(r.kbd.count(), 1);
    r.cmd(CMD_WRITE_CTR);
    r.put(CTR_SYS | CTR_KBDINT);
    assert_eq!(r.kbd.count(), 1);
    assert_eq!(r.data(), 0xee);
}

#[test]
fn reset_pulse_reboots() {
    let mut r = rig();
    r.cmd(0xff); // Pulse nothing.
    assert!(r.events.events().is_empty());
    r.cmd(0xfe);
    assert_eq!(r.events.events(), vec![GuestEvent::Reboot]);
    // Output port write with the reset line low.
    r.cmd(CMD_READ_OUTPUT_PORT);
    assert_eq!(r.reply().0 & OUTPUT_PORT_RESET, OUTPUT_PORT_RESET);
    r.cmd(CMD_WRITE_OUTPUT_PORT);
    r.put(0x02);
    assert_eq!(
        r.events.events(),
        vec![GuestEvent::Reboot, GuestEvent::Reboot]
    );
}

#[test]
fn status_cmd_bit_tracks_last_port_written() {
    let mut r = rig();
    r.cmd(CMD_KBD_ENABLE);
    assert_ne!(r.status() & STS_CMD, 0);
    r.put(0xf4);
    assert_eq!(r.status() & STS_CMD, 0);
}

#[test]
fn output_buffer_is_bounded() {
    let mut r = rig();
    for _ in 0..(OUT_CAPACITY * 2) {
        r.put(0xee);
    }
    let mut n = 0;
    while r.status() & STS_OBF != 0 {
        assert_eq!(r.data(), 0xee);
        n += 1;
    }
    assert_eq!(n, OUT_CAPACITY);
}

#[test]
fn bad_accesses_are_ignored_and_counted() {
    let mut r = rig();
    r.dev.write(OFF_STATUS, &[0xfe, 0xfe]);
    r.dev.write(1, &[0xfe]);
    r.dev.write(OFF_DATA, &[]);
    let mut b = [0u8; 2];
    r.dev.read(OFF_STATUS, &mut b);
    assert_eq!(b, [0xff, 0xff]);
    let mut one = [0u8];
    r.dev.read(2, &mut one);
    assert_eq!(one, [0xff]);
    r.cmd(0x05); // Unsupported command.
    assert!(r.events.events().is_empty());
    assert_eq!(r.dev.metrics().bad_access_count(), 6);
    // Still works.
    r.cmd(CMD_SELF_TEST);
    assert_eq!(r.reply().0, SELF_TEST_OK);
}

#[test]
fn without_aux_irq_aux_bytes_use_irq1() {
    let kbd = Arc::new(CountingInterrupt::default());
    let mut dev = I8042::new(kbd.clone(), Arc::new(EventRecorder::default()));
    dev.write(OFF_STATUS, &[CMD_AUX_LOOP]);
    dev.write(OFF_DATA, &[0x5a]);
    assert_eq!(kbd.count(), 1);
}

#[test]
fn state_round_trip_mid_conversation() {
    let mut r = rig();
    r.put(0xf2); // GET ID: three reply bytes queued.
    assert_eq!(r.data(), keyboard::ACK);
    r.put(0xed); // Keyboard now waits for the LED byte.
    r.cmd(CMD_AUX_LOOP); // Controller waits for the loop byte.
    let st = r.dev.state();
    assert_eq!(st.pending_command, Some(CMD_AUX_LOOP));
    assert_eq!(st.keyboard_pending, Some(0xed));
    assert_eq!(st.output.len(), 3);

    let mut n = rig();
    n.dev.set_state(&st).unwrap();
    assert_eq!(n.kbd.count(), 1, "pending byte raises its interrupt again");
    assert_eq!(n.dev.state(), st);
    assert_eq!(n.data(), 0xab);
    assert_eq!(n.data(), 0x83);
    assert_eq!(n.data(), keyboard::ACK);
    n.put(0x77); // Completes the AUX loop, not a keyboard byte.
    assert_eq!(
        n.reply(),
        (0x77, STS_OBF | STS_AUXDATA | STS_SYS | STS_UNLOCKED)
    );
    n.put(0x07); // The LED parameter.
    assert_eq!(n.data(), keyboard::ACK);
    assert_eq!(n.dev.state().keyboard_pending, None);
}

#[test]
fn invalid_state_is_refused_and_changes_nothing() {
    let mut r = rig();
    let good = r.dev.state();
    let cases = [
        (
            I8042State {
                output: vec![(0, 0); OUT_CAPACITY + 1],
                ..good.clone()
            },
            I8042StateError::OutputOverflow {
                len: OUT_CAPACITY + 1,
                max: OUT_CAPACITY,
            },
        ),
        (
            I8042State {
                output: vec![(0, 0), (1, 0x01)],
                ..good.clone()
            },
            I8042StateError::OutputStatus { index: 1, bits: 1 },
        ),
        (
            I8042State {
                pending_command: Some(0xaa),
                ..good.clone()
            },
            I8042StateError::PendingCommand(0xaa),
        ),
        (
            I8042State {
                keyboard_scancode_set: 4,
                ..good.clone()
            },
            I8042StateError::Keyboard {
                pending: None,
                set: 4,
            },
        ),
        (
            I8042State {
                keyboard_pending: Some(0xff),
                ..good.clone()
            },
            I8042StateError::Keyboard {
                pending: Some(0xff),
                set: 2,
            },
        ),
    ];
    for (bad, err) in cases {
        assert_eq!(r.dev.set_state(&bad), Err(err));
        assert_eq!(r.dev.state(), good);
    }
}
