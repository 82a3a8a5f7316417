//! `cargo +nightly fuzz run csr`: see halyard_certs_fuzz::csr.
#![no_main]
#![forbid(unsafe_code)]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    halyard_certs_fuzz::csr(data);
});
