//! `cargo +nightly fuzz run claim_match`: see halyard_filters_fuzz::claim_match.
#![no_main]
#![forbid(unsafe_code)]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    halyard_filters_fuzz::claim_match(data);
});
