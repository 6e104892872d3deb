//! KVM tests with hand-made guest programs on the host's own /dev/kvm (a PVM on our machines:
//! CPL0 code is emulated, so the programs stay tiny). Each test builds and runs one VM.

mod guest;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use devices::BusDevice;
use guest::{config, Asm, Captured};
use vmm::{ExitReason, Vm};

/// Runs a VM to its end, with a watchdog so a broken test fails instead of hanging.
fn run(vm: &mut Vm) -> ExitReason {
    vm.start().expect("start vCPUs");
    let exit = vm.exit_signal().clone();
    let watchdog = std::thread::spawn(move || {
        let start = Instant::now();
        while exit.get().is_none() && start.elapsed() < Duration::from_secs(30) {
            std::thread::sleep(Duration::from_millis(20));
        }
        exit.set(ExitReason::Internal("test watchdog: 30 s passed".into()));
    });
    let reason = vm.wait();
    watchdog.join().unwrap();
    reason
}

fn build(code: Asm, cpus: usize) -> (Vm, Captured) {
    let out = Captured::default();
    let vm = Vm::new(&config(code, cpus), Box::new(out.clone())).expect("build VM");
    (vm, out)
}

#[test]
fn serial_output_then_acpi_poweroff() {
    let code = Asm::default()
        .serial_byte(b'o')
        .serial_byte(b'k')
        .serial_byte(b'\n')
        .acpi_poweroff();
    let (mut vm, out) = build(code, 1);
    assert_eq!(run(&mut vm), ExitReason::PowerOff);
    assert_eq!(out.text(), "ok\n");
    assert!(vm.metrics().io_out.load(Ordering::Relaxed) >= 4);
}

/// One access: 'r' or 'w', the offset in the device, the bytes.
type Access = (char, u64, Vec<u8>);

/// Records every access with its offset, and answers reads with a fixed byte.
struct Probe {
    answer: u8,
    log: Arc<Mutex<Vec<Access>>>,
}

impl BusDevice for Probe {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        data.fill(self.answer);
        self.log.lock().unwrap().push(('r', offset, data.to_vec()));
    }
    fn write(&mut self, offset: u64, data: &[u8]) {
        self.log.lock().unwrap().push(('w', offset, data.to_vec()));
    }
}

#[test]
fn pio_and_mmio_reach_the_right_device_at_the_right_offset() {
    const PORT: u16 = 0x2000;
    const MMIO: u32 = 0xd000_0000;
    let code = Asm::default()
        .mov_dx(PORT + 1)
        .mov_al(0x42)
        .out_al() // write 0x42 at port offset 1
        .mov_dx(PORT + 2)
        .in_al() // read port offset 2 -> 0x99
        .store_al(MMIO + 0x10) // write it to MMIO offset 0x10
        .load_al(MMIO + 0x20) // read MMIO offset 0x20 -> 0x77
        .mov_dx(PORT + 3)
        .out_al() // echo it to port offset 3
        .mov_dx(0x3000)
        .in_al() // a port with no device reads 0xff
        .mov_dx(PORT + 4)
        .out_al()
        .acpi_poweroff();
    let (mut vm, _) = build(code, 1);
    let pio = Arc::new(Mutex::new(Vec::new()));
    let mmio = Arc::new(Mutex::new(Vec::new()));
    let pio_dev = Probe {
        answer: 0x99,
        log: pio.clone(),
    };
    let mmio_dev = Probe {
        answer: 0x77,
        log: mmio.clone(),
    };
    vm.io_bus()
        .insert(Arc::new(Mutex::new(pio_dev)), u64::from(PORT), 8)
        .unwrap();
    vm.mmio_bus()
        .insert(Arc::new(Mutex::new(mmio_dev)), u64::from(MMIO), 0x1000)
        .unwrap();
    assert_eq!(run(&mut vm), ExitReason::PowerOff);
    assert_eq!(
        *pio.lock().unwrap(),
        vec![
            ('w', 1, vec![0x42]),
            ('r', 2, vec![0x99]),
            ('w', 3, vec![0x77]),
            ('w', 4, vec![0xff]),
        ]
    );
    assert_eq!(
        *mmio.lock().unwrap(),
        vec![('w', 0x10, vec![0x99]), ('r', 0x20, vec![0x77])]
    );
}

#[test]
fn i8042_reset_ends_with_reboot() {
    let code = Asm::default().mov_dx(0x64).mov_al(0xfe).out_al().spin();
    let (mut vm, _) = build(code, 1);
    let reason = run(&mut vm);
    assert_eq!(reason, ExitReason::Reboot);
    assert_eq!(reason.exit_code(), 3);
}

#[test]
fn acpi_reset_register_ends_with_reboot() {
    let code = Asm::default().mov_dx(0x608).mov_al(0x06).out_al().spin();
    let (mut vm, _) = build(code, 1);
    assert_eq!(run(&mut vm), ExitReason::Reboot);
}

#[test]
fn pvpanic_ends_with_panic_and_the_console_reason() {
    let mut code = Asm::default();
    for b in b"Kernel panic - not syncing: test\n" {
        code = code.serial_byte(*b);
    }
    let code = code.mov_dx(0x505).mov_al(1).out_al().spin();
    let (mut vm, out) = build(code, 1);
    let reason = run(&mut vm);
    assert_eq!(
        reason,
        ExitReason::Panic(Some("Kernel panic - not syncing: test".into()))
    );
    assert_eq!(reason.exit_code(), 4);
    assert!(out.text().contains("not syncing"));
}

#[test]
fn triple_fault_is_reported() {
    // No IDT (limit 0): #UD -> #GP -> #DF -> shutdown.
    let code = Asm::default().ud2().spin();
    let (mut vm, _) = build(code, 1);
    let reason = run(&mut vm);
    assert!(
        matches!(reason, ExitReason::TripleFault),
        "expected a triple fault, got {reason:?}"
    );
    assert_eq!(reason.exit_code(), 5);
}

/// Counts writes.
struct Counter(Arc<AtomicU64>);

impl BusDevice for Counter {
    fn read(&mut self, _: u64, data: &mut [u8]) {
        data.fill(0);
    }
    fn write(&mut self, _: u64, _: &[u8]) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }
}

#[test]
fn pause_stops_the_guest_and_resume_continues_it() {
    let code = Asm::default().mov_dx(0x2100);
    let top = code.here();
    let code = code.out_al().jmp_to(top);
    let (mut vm, _) = build(code, 1);
    let count = Arc::new(AtomicU64::new(0));
    vm.io_bus()
        .insert(Arc::new(Mutex::new(Counter(count.clone()))), 0x2100, 1)
        .unwrap();
    vm.start().unwrap();
    let wait_for_progress = |from: u64| {
        let start = Instant::now();
        while count.load(Ordering::Relaxed) <= from + 10 {
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "guest made no progress"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    };
    wait_for_progress(0);
    vm.pause();
    let paused_at = count.load(Ordering::Relaxed);
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(
        count.load(Ordering::Relaxed),
        paused_at,
        "a paused guest ran"
    );
    vm.resume();
    wait_for_progress(paused_at);
    vm.request_stop();
    assert_eq!(vm.wait(), ExitReason::Stopped);
}

#[test]
fn two_vcpus_build_and_the_boot_cpu_runs() {
    let code = Asm::default().serial_byte(b'2').acpi_poweroff();
    let (mut vm, out) = build(code, 2);
    assert_eq!(run(&mut vm), ExitReason::PowerOff);
    assert_eq!(out.text(), "2");
}

#[test]
fn bad_vm_shapes_are_refused_before_running() {
    let zero = Vm::new(&config(Asm::default(), 0), Box::new(Captured::default()));
    assert!(matches!(zero, Err(vmm::Error::Cpus { requested: 0, .. })));
    let many = Vm::new(
        &config(Asm::default(), 100_000),
        Box::new(Captured::default()),
    );
    assert!(matches!(many, Err(vmm::Error::Cpus { .. })));
    let mut small = config(Asm::default(), 1);
    small.memory = 1 << 20;
    assert!(matches!(
        Vm::new(&small, Box::new(Captured::default())),
        Err(vmm::Error::MemoryTooSmall { .. })
    ));
    let mut huge = config(Asm::default(), 1);
    huge.memory = 1 << 50;
    assert!(matches!(
        Vm::new(&huge, Box::new(Captured::default())),
        Err(vmm::Error::MemoryTooLarge { .. })
    ));
}

#[test]
fn a_reset_after_a_console_panic_line_is_a_panic() {
    let mut code = Asm::default();
    for b in b"Kernel panic - not syncing: no pvpanic driver\n" {
        code = code.serial_byte(*b);
    }
    let code = code.mov_dx(0x64).mov_al(0xfe).out_al().spin();
    let (mut vm, _) = build(code, 1);
    assert_eq!(
        run(&mut vm),
        ExitReason::Panic(Some("Kernel panic - not syncing: no pvpanic driver".into()))
    );
}
