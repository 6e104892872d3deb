//! Fuzz the vhdx parser: open, read, (qcow2: check, write) arbitrary bytes as an image.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    storage::fuzz_api::vhdx(data);
});
