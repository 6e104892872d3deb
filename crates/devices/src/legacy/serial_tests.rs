use super::*;
use crate::testutil::CountingInterrupt;
use std::sync::Mutex;

const DATA: u64 = 0;
const IER: u64 = 1;
const IIR: u64 = 2;
const LSR: u64 = 5;
const IER_RDA: u8 = 0x01;
const IER_THR: u8 = 0x02;
const LSR_DATA_READY: u8 = 0x01;

#[derive(Clone, Default)]
struct SharedBuf(Arc<Mutex<Vec<u8>>>);
impl Write for SharedBuf {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

struct Broken;
impl Write for Broken {
    fn write(&mut self, _buf: &[u8]) -> std::io::Result<usize> {
        Err(std::io::Error::other("disk full"))
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn serial() -> (Serial, Arc<CountingInterrupt>, SharedBuf) {
    let irq = Arc::new(CountingInterrupt::default());
    let out = SharedBuf::default();
    let s = Serial::new(irq.clone(), Box::new(out.clone()));
    (s, irq, out)
}

fn rd(s: &mut Serial, off: u64) -> u8 {
    let mut b = [0u8];
    s.read(off, &mut b);
    b[0]
}

#[test]
fn output_bytes_reach_writer_and_are_counted() {
    let (mut s, irq, out) = serial();
    for &b in b"hi\n" {
        s.write(DATA, &[b]);
    }
    assert_eq!(*out.0.lock().unwrap(), b"hi\n");
    assert_eq!(s.metrics().bytes_out.load(Ordering::Relaxed), 3);
    // THR interrupt is disabled by default: no IRQ yet.
    assert_eq!(irq.count(), 0);
}

#[test]
fn thr_empty_interrupt_fires_when_enabled() {
    let (mut s, irq, _out) = serial();
    s.write(IER, &[IER_THR]);
    let after_enable = irq.count();
    assert!(
        after_enable >= 1,
        "enabling THRE with an empty THR raises the IRQ"
    );
    // Until the guest acknowledges by reading IIR, more output raises nothing new.
    s.write(DATA, b"x");
    assert_eq!(irq.count(), after_enable);
    // IIR says THR empty (id 0x2) with the FIFO bits; reading it acknowledges.
    assert_eq!(rd(&mut s, IIR) & 0x0f, 0x02);
    s.write(DATA, b"y");
    assert_eq!(irq.count(), after_enable + 1);
}

#[test]
fn input_is_bounded_and_read_back_in_order() {
    let (mut s, irq, _out) = serial();
    s.write(IER, &[IER_RDA]);
    let space = s.input_space();
    assert!(space > 0);
    let input: Vec<u8> = (0..space + 10).map(|i| i as u8).collect();
    let taken = s.enqueue_input(&input);
    assert_eq!(taken, space);
    assert_eq!(s.input_space(), 0);
    assert_eq!(
        s.enqueue_input(&input[taken..]),
        0,
        "full FIFO takes nothing"
    );
    assert!(irq.count() >= 1, "RDA interrupt raised");
    let m = s.metrics();
    assert_eq!(
        m.missed_input.load(Ordering::Relaxed),
        2,
        "two short counts"
    );

    assert_ne!(rd(&mut s, LSR) & LSR_DATA_READY, 0);
    for expected in input.iter().take(taken) {
        assert_eq!(rd(&mut s, DATA), *expected);
    }
    assert_eq!(rd(&mut s, LSR) & LSR_DATA_READY, 0);
    assert_eq!(m.bytes_in.load(Ordering::Relaxed), taken as u64);
    assert_eq!(s.input_space(), space);
    // The caller retries the rest.
    assert_eq!(s.enqueue_input(&input[taken..]), 10);
    assert_eq!(s.enqueue_input(&[]), 0);
}

#[test]
fn bad_sizes_and_offsets_are_ignored_and_counted() {
    let (mut s, _irq, out) = serial();
    s.write(DATA, b"ab");
    s.write(8, b"a");
    s.write(u64::MAX, b"a");
    let mut two = [0u8; 2];
    s.read(LSR, &mut two);
    assert_eq!(two, [0xff, 0xff]);
    let mut one = [0u8];
    s.read(9, &mut one);
    assert_eq!(one, [0xff]);
    assert!(out.0.lock().unwrap().is_empty());
    assert_eq!(s.metrics().access.bad_access_count(), 5);
    // Scratch register still works afterwards.
    s.write(7, &[0x5a]);
    assert_eq!(rd(&mut s, 7), 0x5a);
}

#[test]
fn broken_output_counts_lost_bytes_without_panicking() {
    let irq = Arc::new(CountingInterrupt::default());
    let mut s = Serial::new(irq, Box::new(Broken));
    s.write(DATA, b"a");
    s.write(DATA, b"b");
    let m = s.metrics();
    assert_eq!(m.bytes_out_lost.load(Ordering::Relaxed), 2);
    assert_eq!(m.bytes_out.load(Ordering::Relaxed), 0);
}

#[test]
fn drained_notifier_fires_when_guest_empties_fifo() {
    let (mut s, _irq, _out) = serial();
    let drained = Arc::new(CountingInterrupt::default());
    s.set_input_drained_notifier(drained.clone());
    assert_eq!(s.enqueue_input(b"ab"), 2);
    assert_eq!(rd(&mut s, DATA), b'a');
    assert_eq!(drained.count(), 0, "one byte still queued");
    assert_eq!(rd(&mut s, DATA), b'b');
    assert_eq!(drained.count(), 1);
}

#[test]
fn state_round_trip_keeps_registers_and_input() {
    let (mut s, _irq, _out) = serial();
    s.write(7, &[0x42]);
    s.write(IER, &[IER_RDA]);
    s.enqueue_input(b"xyz");
    let state = s.state();
    let irq = Arc::new(CountingInterrupt::default());
    let mut r = Serial::from_state(&state, irq.clone(), Box::new(std::io::sink())).unwrap();
    assert_eq!(irq.count(), 1, "pending RDA interrupt raised again");
    assert_eq!(rd(&mut r, 7), 0x42);
    assert_eq!(rd(&mut r, IER), IER_RDA);
    assert_eq!(rd(&mut r, DATA), b'x');
    assert_eq!(rd(&mut r, DATA), b'y');
    assert_eq!(rd(&mut r, DATA), b'z');
    assert_eq!(r.state().in_buffer, Vec::<u8>::new());
}

#[test]
fn from_state_rejects_oversized_fifo() {
    let (s, _irq, _out) = serial();
    let mut state = s.state();
    state.in_buffer = vec![0; s.input_space() + 1];
    let irq = Arc::new(CountingInterrupt::default());
    let err = Serial::from_state(&state, irq, Box::new(std::io::sink()))
        .err()
        .expect("oversized FIFO must be refused");
    assert!(
        matches!(err, SerialError::FifoOverflow { len } if len == state.in_buffer.len()),
        "{err}"
    );
}
