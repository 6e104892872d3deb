//! virtio-balloon queue handling (inflate, deflate, stats, free page reporting) on guest memory
//! the fuzzer writes.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    devices::virtio::fuzz::balloon_queue(data);
});
