//! Standard base64 (RFC 4648 §4: `A-Z a-z 0-9 + /`, `=` padding).

const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

/// Byte → its 6-bit value, or `INVALID`.
const INVALID: u8 = 0xFF;
const DECODE: [u8; 256] = {
    let mut table = [INVALID; 256];
    let mut i = 0;
    while i < 64 {
        table[ALPHABET[i] as usize] = i as u8;
        i += 1;
    }
    table
};

/// Encodes `input` as padded standard base64.
pub fn base64_encode(input: &[u8]) -> String {
    let mut out = String::with_capacity(input.len().div_ceil(3) * 4);
    for chunk in input.chunks(3) {
        let byte = |i: usize| u32::from(chunk.get(i).copied().unwrap_or(0));
        let n = byte(0) << 16 | byte(1) << 8 | byte(2);
        for i in 0..4 {
            if i <= chunk.len() {
                let sextet = (n >> (18 - 6 * i)) & 0x3F;
                out.push(char::from(ALPHABET[sextet as usize]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// Decodes standard base64; None for anything that is not a canonical encoding: a character
/// outside the alphabet (whitespace included), `=` other than as final padding, a length that
/// cannot be (`4n+1`), or non-zero bits after the last byte. Padding may be left out, as
/// Envoy's reader of this header allows; if present it must be complete.
pub fn base64_decode(input: &[u8]) -> Option<Vec<u8>> {
    // Padding is stripped only from a whole number of quads.
    let body = match input.len() % 4 {
        0 => input
            .strip_suffix(b"==")
            .or_else(|| input.strip_suffix(b"="))
            .unwrap_or(input),
        _ => input,
    };
    if body.len() % 4 == 1 {
        return None;
    }
    let mut out = Vec::with_capacity(body.len() / 4 * 3 + 2);
    let mut quads = body.chunks_exact(4);
    for quad in quads.by_ref() {
        let mut n = 0u32;
        for &c in quad {
            n = n << 6 | sextet(c)?;
        }
        out.extend_from_slice(&[(n >> 16) as u8, (n >> 8) as u8, n as u8]);
    }
    let rest = quads.remainder();
    if !rest.is_empty() {
        let mut n = 0u32;
        for &c in rest {
            n = n << 6 | sextet(c)?;
        }
        // 2 characters carry 1 byte (4 spare bits), 3 carry 2 bytes (2 spare bits).
        let (bytes, spare) = if rest.len() == 2 { (1, 4) } else { (2, 2) };
        if n & ((1 << spare) - 1) != 0 {
            return None;
        }
        let n = n >> spare;
        if bytes == 2 {
            out.push((n >> 8) as u8);
        }
        out.push(n as u8);
    }
    Some(out)
}

fn sextet(c: u8) -> Option<u32> {
    match DECODE[usize::from(c)] {
        INVALID => None,
        v => Some(u32::from(v)),
    }
}
