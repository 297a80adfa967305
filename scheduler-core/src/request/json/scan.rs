//! The inner loop of reading a JSON string: find the next byte that ends a run of plain string content
//! (`"`, `\` or a control byte below 0x20), noting on the way whether any byte was non-ASCII, so that only
//! strings with non-ASCII bytes are checked as UTF-8 afterwards. One read of every byte.
//!
//! With Wasm SIMD (the filter's build: `.cargo/config.toml` enables `simd128` for `wasm32-wasip1`) or SSE2
//! (every x86-64: the shim, the simulator) 64 bytes are tested per step as four 16-byte vectors, then what
//! is left 16 at a time; elsewhere 8, with 64-bit word arithmetic. The tail is read byte by byte.

/// What a scan found from its starting index.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Run {
    /// Index of the first `"`, `\` or byte below 0x20 at or after the start; `None` when the input ends
    /// first.
    pub stop: Option<usize>,
    /// Whether a byte ≥ 0x80 lies between the start and `stop` (or the end of the input).
    pub non_ascii: bool,
}

/// Whether `b` ends a run of plain string content.
fn is_special(b: u8) -> bool {
    b == b'"' || b == b'\\' || b < 0x20
}

/// Scans `input` from index `from` (past the end: an empty run).
pub(super) fn scan(input: &[u8], from: usize) -> Run {
    let (at, non_ascii) = match wide(input, from) {
        Ok(found) => return found,
        Err(resume) => resume,
    };
    tail(input, at, non_ascii)
}

/// Byte by byte from `at`, carrying what the wide loop saw.
fn tail(input: &[u8], at: usize, mut non_ascii: bool) -> Run {
    let rest = input.get(at..).unwrap_or_default();
    for (i, &b) in rest.iter().enumerate() {
        if is_special(b) {
            return Run { stop: Some(at.saturating_add(i)), non_ascii };
        }
        non_ascii |= b >= 0x80;
    }
    Run { stop: None, non_ascii }
}

/// The run from `at` that ends at the first set bit of `specials` (bit i: byte `at + i` is special; not
/// zero), non-ASCII if `seen_non_ascii` or a set bit of `highs` (bytes ≥ 0x80) lies before that one.
#[cfg(any(all(target_arch = "wasm32", target_feature = "simd128"), target_arch = "x86_64"))]
#[inline]
fn ends_at_first(at: usize, specials: u64, highs: u64, seen_non_ascii: bool) -> Run {
    let first = specials.trailing_zeros();
    let before = 1u64.checked_shl(first).map_or(u64::MAX, |bit| bit.wrapping_sub(1));
    Run { stop: Some(at.saturating_add(first as usize)), non_ascii: seen_non_ascii || highs & before != 0 }
}

/// 64 bytes per step, then 16. `Ok` when a special byte was found; `Err((index, non_ascii))` where fewer
/// than 16 bytes remain.
#[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
fn wide(input: &[u8], mut at: usize) -> Result<Run, (usize, bool)> {
    use core::arch::wasm32::{
        u8x16_bitmask, u8x16_eq, u8x16_lt, u8x16_splat, v128, v128_any_true, v128_load, v128_or,
    };
    let quote = u8x16_splat(b'"');
    let backslash = u8x16_splat(b'\\');
    let control = u8x16_splat(0x20);
    let mut seen = u8x16_splat(0);
    let special =
        |v: v128| v128_or(v128_or(u8x16_eq(v, quote), u8x16_eq(v, backslash)), u8x16_lt(v, control));
    // 64 bytes per step (long prompts): one branch for four vectors; the step that sees something special
    // finds where from the four vectors' masks.
    let mask = |v: [v128; 4]| v.iter().rev().fold(0u64, |m, &x| (m << 16) | u64::from(u8x16_bitmask(x)));
    while let Some(block) = at.checked_add(64).and_then(|end| input.get(at..end)) {
        let p = block.as_ptr().cast::<v128>();
        // SAFETY: `block` is 64 readable bytes, four unaligned 16-byte loads within it.
        let (a, b, c, d) =
            unsafe { (v128_load(p), v128_load(p.add(1)), v128_load(p.add(2)), v128_load(p.add(3))) };
        let found = [special(a), special(b), special(c), special(d)];
        if v128_any_true(v128_or(v128_or(found[0], found[1]), v128_or(found[2], found[3]))) {
            return Ok(ends_at_first(at, mask(found), mask([a, b, c, d]), u8x16_bitmask(seen) != 0));
        }
        seen = v128_or(seen, v128_or(v128_or(a, b), v128_or(c, d)));
        at = at.saturating_add(64);
    }
    while let Some(chunk) = at.checked_add(16).and_then(|end| input.get(at..end)) {
        // SAFETY: `chunk` is 16 readable bytes; `v128_load` has no alignment requirement.
        let v = unsafe { v128_load(chunk.as_ptr().cast::<v128>()) };
        let found = special(v);
        if v128_any_true(found) {
            let (specials, highs) = (u64::from(u8x16_bitmask(found)), u64::from(u8x16_bitmask(v)));
            return Ok(ends_at_first(at, specials, highs, u8x16_bitmask(seen) != 0));
        }
        seen = v128_or(seen, v);
        at = at.saturating_add(16);
    }
    Err((at, u8x16_bitmask(seen) != 0))
}

/// 16 bytes per step with SSE2 (part of x86-64). Bytes below 0x20 are those that `max(byte, 0x1f)` leaves
/// at 0x1f (SSE2 compares only signed bytes).
#[cfg(target_arch = "x86_64")]
fn wide(input: &[u8], at: usize) -> Result<Run, (usize, bool)> {
    // SAFETY: SSE2 is part of the x86-64 baseline, so every x86-64 CPU has it.
    unsafe { sse2(input, at) }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "sse2")]
fn sse2(input: &[u8], mut at: usize) -> Result<Run, (usize, bool)> {
    use core::arch::x86_64::{
        __m128i, _mm_cmpeq_epi8, _mm_loadu_si128, _mm_max_epu8, _mm_movemask_epi8, _mm_or_si128,
        _mm_set1_epi8, _mm_setzero_si128,
    };
    #[allow(clippy::cast_possible_wrap)]
    let splat = |b: u8| _mm_set1_epi8(b as i8);
    let (quote, backslash, control) = (splat(b'"'), splat(b'\\'), splat(0x1f));
    let mut seen = _mm_setzero_si128();
    let special = |v: __m128i| {
        let low = _mm_cmpeq_epi8(_mm_max_epu8(v, control), control);
        _mm_or_si128(_mm_or_si128(_mm_cmpeq_epi8(v, quote), _mm_cmpeq_epi8(v, backslash)), low)
    };
    // As in the Wasm loop: 64 bytes per step; the step that holds something special finds it from the masks.
    #[allow(clippy::cast_sign_loss)]
    let bits = |v: __m128i| u64::from(_mm_movemask_epi8(v) as u16);
    let mask = |v: [__m128i; 4]| v.iter().rev().fold(0u64, |m, &x| (m << 16) | bits(x));
    while let Some(block) = at.checked_add(64).and_then(|end| input.get(at..end)) {
        let p = block.as_ptr().cast::<__m128i>();
        // SAFETY: `block` is 64 readable bytes, four unaligned 16-byte loads within it.
        let (a, b, c, d) = unsafe {
            (
                _mm_loadu_si128(p),
                _mm_loadu_si128(p.add(1)),
                _mm_loadu_si128(p.add(2)),
                _mm_loadu_si128(p.add(3)),
            )
        };
        let found = [special(a), special(b), special(c), special(d)];
        let any = _mm_or_si128(_mm_or_si128(found[0], found[1]), _mm_or_si128(found[2], found[3]));
        if _mm_movemask_epi8(any) != 0 {
            return Ok(ends_at_first(at, mask(found), mask([a, b, c, d]), bits(seen) != 0));
        }
        seen = _mm_or_si128(seen, _mm_or_si128(_mm_or_si128(a, b), _mm_or_si128(c, d)));
        at = at.saturating_add(64);
    }
    while let Some(chunk) = at.checked_add(16).and_then(|end| input.get(at..end)) {
        // SAFETY: `chunk` is 16 readable bytes; `_mm_loadu_si128` has no alignment requirement.
        let v = unsafe { _mm_loadu_si128(chunk.as_ptr().cast::<__m128i>()) };
        let specials = bits(special(v));
        if specials != 0 {
            return Ok(ends_at_first(at, specials, bits(v), bits(seen) != 0));
        }
        seen = _mm_or_si128(seen, v);
        at = at.saturating_add(16);
    }
    Err((at, bits(seen) != 0))
}

#[cfg(not(any(all(target_arch = "wasm32", target_feature = "simd128"), target_arch = "x86_64")))]
fn wide(input: &[u8], at: usize) -> Result<Run, (usize, bool)> {
    words(input, at)
}

/// 8 bytes per step as one little-endian word: a byte's flag is its top bit in the mask. The classic
/// "has a byte below n" formula can set false flags only above a true one, so the lowest flag is exact.
/// Used where no SIMD path is built; always compiled, and tested, so that it cannot rot.
#[cfg_attr(
    any(all(target_arch = "wasm32", target_feature = "simd128"), target_arch = "x86_64"),
    allow(dead_code)
)]
fn words(input: &[u8], mut at: usize) -> Result<Run, (usize, bool)> {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGHS: u64 = 0x8080_8080_8080_8080;
    /// Top bit of every byte of `x` that is below `n` (n ≤ 0x80), exact up to the first one.
    fn below(x: u64, n: u8) -> u64 {
        x.wrapping_sub(ONES.wrapping_mul(u64::from(n))) & !x & HIGHS
    }
    let mut seen = 0u64;
    while let Some(chunk) = at.checked_add(8).and_then(|end| input.get(at..end)) {
        let mut word = [0u8; 8];
        word.copy_from_slice(chunk);
        let x = u64::from_le_bytes(word);
        let special = below(x ^ ONES.wrapping_mul(u64::from(b'"')), 1)
            | below(x ^ ONES.wrapping_mul(u64::from(b'\\')), 1)
            | below(x, 0x20);
        if special != 0 {
            let first = special.trailing_zeros() / 8;
            let before = 1u64.checked_shl(first * 8).map_or(u64::MAX, |bit| bit.wrapping_sub(1));
            let non_ascii = seen & HIGHS != 0 || x & HIGHS & before != 0;
            return Ok(Run { stop: Some(at.saturating_add(first as usize)), non_ascii });
        }
        seen |= x;
        at = at.saturating_add(8);
    }
    Err((at, seen & HIGHS != 0))
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::vec;
    use alloc::vec::Vec;
    use proptest::prelude::*;

    fn reference(input: &[u8], from: usize) -> Run {
        tail(input, from, false)
    }

    /// The word-at-a-time scan, whichever path `scan` takes on this target.
    fn by_words(input: &[u8], from: usize) -> Run {
        match words(input, from) {
            Ok(found) => found,
            Err((at, non_ascii)) => tail(input, at, non_ascii),
        }
    }

    fn byte() -> impl Strategy<Value = u8> {
        // Mostly plain ASCII, with every kind of special and non-ASCII byte showing up often.
        prop_oneof![
            6 => b'a'..=b'z',
            1 => Just(b'"'),
            1 => Just(b'\\'),
            1 => 0u8..0x20,
            1 => 0x80u8..=0xff,
            1 => Just(0x7f),
            1 => Just(b' '),
        ]
    }

    proptest! {
        #[test]
        fn finds_what_a_byte_by_byte_scan_finds(
            input in prop::collection::vec(byte(), 0..80),
            from in 0usize..90,
        ) {
            prop_assert_eq!(scan(&input, from), reference(&input, from));
            prop_assert_eq!(by_words(&input, from), reference(&input, from));
        }

        #[test]
        fn long_plain_runs_with_one_special_byte(
            len in 0usize..100,
            at in 0usize..100,
            special in prop_oneof![Just(b'"'), Just(b'\\'), 0u8..0x20],
            high in proptest::option::of(0usize..100),
            from in 0usize..20,
        ) {
            let mut input = vec![b'x'; len];
            if let Some(h) = high.filter(|h| *h < len) {
                input[h] = 0xc3;
            }
            if at < len {
                input[at] = special;
            }
            prop_assert_eq!(scan(&input, from), reference(&input, from));
            prop_assert_eq!(by_words(&input, from), reference(&input, from));
        }
    }

    #[test]
    fn stops_at_the_first_special_byte_of_each_kind() {
        for special in [b'"', b'\\', 0, 0x1f] {
            for at in 0..40 {
                let mut input = vec![b'a'; 40];
                input[at] = special;
                assert_eq!(scan(&input, 0), Run { stop: Some(at), non_ascii: false }, "{special} at {at}");
            }
        }
        // 0x20 and up, DEL and bytes with the top bit set are plain content.
        let input: Vec<u8> = (0x20u8..=0xff).filter(|b| *b != b'"' && *b != b'\\').collect();
        assert_eq!(scan(&input, 0), Run { stop: None, non_ascii: true });
        assert_eq!(scan(b"abc", 7), Run { stop: None, non_ascii: false });
    }
}
