//! virtio-vsock packet parsing and connection handling on guest memory the fuzzer writes.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    devices::virtio::fuzz::vsock_queue(data);
});
