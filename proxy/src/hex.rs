//! Lower-case hex of ids written into request headers.

/// The 16 lower-case hex digits of `v`, computed on all digits at once: ids are
/// written into every request's `traceparent` and `x-request-id`, and a digit-by-digit loop
/// showed up in their cost.
pub fn hex16(v: u64) -> [u8; 16] {
    const BYTES: u128 = 0x0101_0101_0101_0101_0101_0101_0101_0101;
    // Spread the nibbles over the bytes of a u128: byte i holds nibble i (little end first).
    let mut x = u128::from(v);
    x = (x | x << 32) & 0x0000_0000_ffff_ffff_0000_0000_ffff_ffff;
    x = (x | x << 16) & 0x0000_ffff_0000_ffff_0000_ffff_0000_ffff;
    x = (x | x << 8) & 0x00ff_00ff_00ff_00ff_00ff_00ff_00ff_00ff;
    x = (x | x << 4) & (BYTES * 0x0f);
    // A nibble of 10 or more gets the distance from '9' + 1 to 'a' added; no byte carries.
    let letters = ((x + BYTES * 6) >> 4) & BYTES;
    (x + BYTES * u128::from(b'0') + letters * u128::from(b'a' - b'0' - 10)).to_be_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex16_matches_format() {
        let mut values = vec![0, 1, 9, 10, 15, 16, 0xa0, u64::MAX, 0x0123_4567_89ab_cdef];
        values.extend((0..10_000).map(|_| fastrand::u64(..)));
        for v in values {
            assert_eq!(hex16(v), format!("{v:016x}").as_bytes(), "{v:#x}");
        }
    }
}
