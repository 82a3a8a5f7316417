//! `cargo +nightly fuzz run path_normalize`: see halyard_filters_fuzz::path_normalize.
#![no_main]
#![forbid(unsafe_code)]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    halyard_filters_fuzz::path_normalize(data);
});
