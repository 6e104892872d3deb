use super::*;

#[test]
fn offload_flags_follow_the_guest_features() {
    assert_eq!(offload_flags(0), 0);
    assert_eq!(offload_flags(F_GUEST_TSO4), 0, "TSO needs checksum offload");
    assert_eq!(offload_flags(F_GUEST_CSUM), TUN_F_CSUM);
    assert_eq!(
        offload_flags(F_GUEST_CSUM | F_GUEST_TSO4 | F_GUEST_TSO6 | F_GUEST_ECN),
        TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6 | TUN_F_TSO_ECN
    );
    assert_eq!(offload_flags(F_GUEST_CSUM | F_GUEST_ECN), TUN_F_CSUM);
}

#[test]
fn bad_names_are_refused() {
    for n in ["", "0123456789abcdef", "a\0b"] {
        assert!(matches!(Tap::open(n), Err(TapError::Name(_))), "{n:?}");
    }
}

#[test]
fn a_non_tap_fd_is_refused() {
    let f = File::open("/dev/null").unwrap();
    let fd = std::os::fd::IntoRawFd::into_raw_fd(f);
    // SAFETY: `fd` was just released by its File and is owned by nobody else.
    let r = unsafe { Tap::from_fd(fd) };
    assert!(matches!(r, Err(TapError::Inherited { .. })), "{r:?}");
}
