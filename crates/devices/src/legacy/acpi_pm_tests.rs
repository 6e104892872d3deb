use super::*;
use crate::testutil::{EventRecorder, RecordingLine};

fn dev() -> (AcpiPm, Arc<RecordingLine>, Arc<EventRecorder>) {
    let sci = Arc::new(RecordingLine::default());
    let rec = Arc::new(EventRecorder::default());
    (AcpiPm::new(sci.clone(), rec.clone()), sci, rec)
}

fn r16(pm: &mut AcpiPm, off: u64) -> u16 {
    let mut b = [0u8; 2];
    pm.read(off, &mut b);
    u16::from_le_bytes(b)
}

fn w16(pm: &mut AcpiPm, off: u64, v: u16) {
    pm.write(off, &v.to_le_bytes());
}

#[test]
fn power_button_raises_sci_only_when_enabled() {
    let (mut pm, sci, _) = dev();
    pm.press_power_button();
    assert_eq!(r16(&mut pm, OFF_STS) & PWRBTN, PWRBTN);
    assert_eq!(sci.level(), Some(false), "EN masks the status");
    w16(&mut pm, OFF_EN, PWRBTN);
    assert_eq!(
        sci.level(),
        Some(true),
        "enabling a pending status raises the SCI"
    );
    assert_eq!(r16(&mut pm, OFF_EN), PWRBTN);
    // Masking again lowers it.
    w16(&mut pm, OFF_EN, 0);
    assert_eq!(sci.level(), Some(false));
}

#[test]
fn guest_clears_status_and_sci_drops() {
    let (mut pm, sci, _) = dev();
    w16(&mut pm, OFF_EN, PWRBTN);
    assert_eq!(sci.level(), Some(false));
    pm.press_power_button();
    assert_eq!(sci.level(), Some(true));
    // Writing 0 clears nothing.
    w16(&mut pm, OFF_STS, 0);
    assert_eq!(sci.level(), Some(true));
    assert_eq!(r16(&mut pm, OFF_STS), PWRBTN);
    // Write-1-to-clear, with a byte access to the high byte.
    pm.write(OFF_STS + 1, &[(PWRBTN >> 8) as u8]);
    assert_eq!(r16(&mut pm, OFF_STS), 0);
    assert_eq!(sci.level(), Some(false));
}

#[test]
fn s5_powers_off_and_slp_en_reads_zero() {
    let (mut pm, _, rec) = dev();
    // Other sleep types are ignored.
    w16(&mut pm, OFF_CNT, (3 << SLP_TYP_SHIFT) | SLP_EN);
    assert!(rec.events().is_empty());
    // SLP_TYP without SLP_EN does nothing yet.
    w16(&mut pm, OFF_CNT, SLP_TYP_S5 << SLP_TYP_SHIFT);
    assert!(rec.events().is_empty());
    let cnt = r16(&mut pm, OFF_CNT);
    assert_eq!(cnt & SLP_EN, 0);
    assert_eq!(cnt & SCI_EN, SCI_EN, "SCI_EN always reads 1");
    assert_eq!((cnt & SLP_TYP_MASK) >> SLP_TYP_SHIFT, SLP_TYP_S5);
    // A byte write of the high byte with SLP_EN uses the stored SLP_TYP.
    pm.write(
        OFF_CNT + 1,
        &[((SLP_TYP_S5 << SLP_TYP_SHIFT | SLP_EN) >> 8) as u8],
    );
    assert_eq!(rec.events(), vec![GuestEvent::PowerOff]);
    assert_eq!(r16(&mut pm, OFF_CNT) & SLP_EN, 0);
}

#[test]
fn reset_register_reboots_on_0x06_only() {
    let (mut pm, _, rec) = dev();
    pm.write(OFF_RESET, &[0x01]);
    assert!(rec.events().is_empty());
    pm.write(OFF_RESET, &[RESET_VALUE]);
    assert_eq!(rec.events(), vec![GuestEvent::Reboot]);
    let mut b = [0xaa];
    pm.read(OFF_RESET, &mut b);
    assert_eq!(b, [0]);
}

#[test]
fn dword_access_covers_status_and_enable() {
    let (mut pm, sci, _) = dev();
    pm.press_power_button();
    // One 32-bit write: clear nothing (STS=0), enable the power button.
    pm.write(OFF_STS, &(u32::from(PWRBTN) << 16).to_le_bytes());
    assert_eq!(sci.level(), Some(true));
    let mut d = [0u8; 4];
    pm.read(OFF_STS, &mut d);
    assert_eq!(
        u32::from_le_bytes(d),
        u32::from(PWRBTN) | (u32::from(PWRBTN) << 16)
    );
    // One 32-bit write clears the status.
    pm.write(
        OFF_STS,
        &(u32::from(PWRBTN) | (u32::from(PWRBTN) << 16)).to_le_bytes(),
    );
    assert_eq!(sci.level(), Some(false));
    // Unused bytes 6..8 read as 0.
    pm.read(OFF_CNT, &mut d);
    assert_eq!(u32::from_le_bytes(d), u32::from(SCI_EN));
}

#[test]
fn bad_accesses_are_ignored_and_counted() {
    let (mut pm, sci, rec) = dev();
    let calls = sci.calls();
    pm.write(OFF_RESET, &[RESET_VALUE, 0]); // Runs past the end.
    pm.write(OFF_CNT, &[0; 3]); // Size 3.
    pm.write(u64::MAX, &[RESET_VALUE]);
    pm.write(9, &[RESET_VALUE]);
    let mut b = [0u8; 8];
    pm.read(0, &mut b);
    assert_eq!(b, [0xff; 8]);
    assert!(rec.events().is_empty());
    assert_eq!(sci.calls(), calls, "ignored writes do not touch the SCI");
    assert_eq!(pm.metrics().bad_access_count(), 5);
}

#[test]
fn state_round_trip_drives_sci() {
    let (mut pm, sci, _) = dev();
    let st = AcpiPmState {
        pm1_sts: PWRBTN,
        pm1_en: PWRBTN,
        pm1_cnt: SLP_EN | (1 << SLP_TYP_SHIFT),
    };
    pm.set_state(&st);
    assert_eq!(sci.level(), Some(true));
    assert_eq!(
        pm.state().pm1_cnt,
        1 << SLP_TYP_SHIFT,
        "SLP_EN is not state"
    );
    assert_eq!(pm.state().pm1_sts, PWRBTN);
}
