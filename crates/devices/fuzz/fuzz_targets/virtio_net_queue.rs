//! virtio-net tx and rx queue handling on guest memory the fuzzer writes.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    devices::virtio::fuzz::net_queue(data);
});
