//! `cargo +nightly fuzz run cert`: see halyard_certs_fuzz::cert.
#![no_main]
#![forbid(unsafe_code)]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    halyard_certs_fuzz::cert(data);
});
