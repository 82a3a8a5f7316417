//! `cargo +nightly fuzz run spiffe`: see halyard_certs_fuzz::spiffe.
#![no_main]
#![forbid(unsafe_code)]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    halyard_certs_fuzz::spiffe(data);
});
