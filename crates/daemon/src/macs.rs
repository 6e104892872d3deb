//! MAC addresses of VM definitions: the daemon picks one for each card defined without one and
//! stores it with the definition.

use api::daemon::VmSpec;
use api::ApiError;

/// Gives every card without a MAC a random, locally administered one (stored with the
/// definition, so the guest sees the same MAC at every start), distinct from the VM's others.
pub(crate) fn assign_macs(spec: &mut VmSpec) -> Result<(), ApiError> {
    let mut taken: Vec<[u8; 6]> = spec
        .nets
        .iter()
        .filter_map(|n| n.mac.as_deref().and_then(|m| api::net::parse_mac(m).ok()))
        .collect();
    for n in spec.nets.iter_mut().filter(|n| n.mac.is_none()) {
        let mac = loop {
            let mut r = [0u8; 6];
            // SAFETY: getrandom writes at most r.len() bytes into the buffer it is given.
            let got = unsafe { libc::getrandom(r.as_mut_ptr().cast(), r.len(), 0) };
            if got != r.len() as isize {
                return Err(ApiError::internal(format!(
                    "getrandom for a MAC: {}",
                    std::io::Error::last_os_error()
                )));
            }
            let mac = api::net::local_mac(r);
            if !taken.contains(&mac) {
                break mac;
            }
        };
        taken.push(mac);
        n.mac = Some(api::net::format_mac(mac));
    }
    Ok(())
}
