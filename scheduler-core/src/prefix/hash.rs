//! Block hashing of the prompt: the chain that names "this prefix" the same way GIE/llm-d do.
//!
//! Two requests share a block hash exactly when the model, the cache salt and every byte up to the end of
//! that block agree, so a hash stands for a whole prefix, not just one block.

use alloc::vec::Vec;
use xxhash_rust::xxh64::Xxh64;

/// GIE's estimate of characters per token; turns token block sizes into byte block sizes.
pub const BYTES_PER_TOKEN: usize = 4;
/// vLLM's default KV block size.
pub const DEFAULT_BLOCK_SIZE_TOKENS: usize = 16;
/// At most this many blocks are hashed (256 × 64 bytes = 16 KiB of prompt).
pub const DEFAULT_MAX_PREFIX_BLOCKS: usize = 256;

/// Seed of every xxHash64 in the chain (GIE uses the unseeded variant).
const SEED: u64 = 0;

/// Hashes the whole blocks of `input` into `out` (cleared first), at most `max_blocks` of them.
///
/// `h0 = xxh64(model ‖ cache_salt)`, `h_i = xxh64(block_i ‖ le_u64(h_{i−1}))`; `h0` itself is not part of
/// the output. A trailing partial block is ignored and an input shorter than one block yields nothing
/// (the same prompt with a few more characters must keep its hashes). `block_bytes == 0` yields nothing.
pub fn hash_blocks(
    model: &str,
    cache_salt: Option<&str>,
    input: &[u8],
    block_bytes: usize,
    max_blocks: usize,
    out: &mut Vec<u64>,
) {
    hash_blocks_with(model, cache_salt, input, block_bytes, max_blocks, out, |_| {});
}

/// [`hash_blocks`], also handing each hash to `each` as soon as it is known, first block first. The
/// chain is latency-bound (each link waits for the previous one), so work done in `each`, such as the
/// prefix index walk, mostly runs in the gaps.
#[inline(always)]
pub fn hash_blocks_with(
    model: &str,
    cache_salt: Option<&str>,
    input: &[u8],
    block_bytes: usize,
    max_blocks: usize,
    out: &mut Vec<u64>,
    mut each: impl FnMut(u64),
) {
    out.clear();
    if block_bytes == 0 || max_blocks == 0 || input.len() < block_bytes {
        return;
    }
    let blocks = (input.len() / block_bytes).min(max_blocks);
    out.resize(blocks, 0);
    let mut hasher = Xxh64::new(SEED);
    hasher.update(model.as_bytes());
    if let Some(salt) = cache_salt {
        hasher.update(salt.as_bytes());
    }
    let mut prev = hasher.digest();
    // A literal block size lets the compiler drop every length test (vLLM's default block).
    if block_bytes == 64 {
        for (h, block) in out.iter_mut().zip(input.as_chunks::<64>().0) {
            prev = link(block, prev);
            *h = prev;
            each(prev);
        }
    } else {
        for (h, block) in out.iter_mut().zip(input.chunks_exact(block_bytes)) {
            prev = link(block, prev);
            *h = prev;
            each(prev);
        }
    }
}

// xxHash64's primes (XXH64 specification).
const P1: u64 = 0x9E37_79B1_85EB_CA87;
const P2: u64 = 0xC2B2_AE3D_27D4_EB4F;
const P3: u64 = 0x1656_67B1_9E37_79F9;
const P4: u64 = 0x85EB_CA77_C2B2_AE63;
const P5: u64 = 0x27D4_EB2F_1656_67C5;

/// One link of the chain, `xxh64(block ‖ le_u64(prev))` with seed 0, computed in place.
///
/// Same function as `xxhash_rust::xxh64::xxh64` over the concatenation (the tests compare them for
/// every length up to 300), written out so that no link copies its block or restarts a hasher: the
/// 32-byte stripes of the block do not depend on `prev`, so the CPU overlaps them with the previous
/// link, and only the last stripe or lane and the avalanche wait for `prev`.
#[inline(always)]
fn link(block: &[u8], prev: u64) -> u64 {
    let total = (block.len() as u64).wrapping_add(8);
    let (stripes, rest) = block.as_chunks::<32>();
    // What follows the whole stripes: under 32 block bytes, then `prev` (at most 39 bytes).
    let mut tail_buf = [0u8; 40];
    let tail_len = rest.len() + 8;
    if let Some((head, suffix)) =
        tail_buf.get_mut(..tail_len).and_then(|t| t.split_at_mut_checked(rest.len()))
    {
        head.copy_from_slice(rest);
        suffix.copy_from_slice(&prev.to_le_bytes());
    }
    let mut tail = tail_buf.get(..tail_len).unwrap_or_default();
    let mut acc = if total >= 32 {
        let mut v = [P1.wrapping_add(P2), P2, 0, P1.wrapping_neg()];
        for stripe in stripes {
            accumulate(&mut v, stripe);
        }
        if let Some((stripe, after)) = tail.split_first_chunk::<32>() {
            accumulate(&mut v, stripe);
            tail = after;
        }
        let [v1, v2, v3, v4] = v;
        let mut acc = v1
            .rotate_left(1)
            .wrapping_add(v2.rotate_left(7))
            .wrapping_add(v3.rotate_left(12))
            .wrapping_add(v4.rotate_left(18));
        for lane in v {
            acc = (acc ^ round(0, lane)).wrapping_mul(P1).wrapping_add(P4);
        }
        acc
    } else {
        P5
    };
    acc = acc.wrapping_add(total);
    let (words, rest) = tail.as_chunks::<8>();
    for w in words {
        acc ^= round(0, u64::from_le_bytes(*w));
        acc = acc.rotate_left(27).wrapping_mul(P1).wrapping_add(P4);
    }
    let (halves, bytes) = rest.as_chunks::<4>();
    for h in halves {
        acc ^= u64::from(u32::from_le_bytes(*h)).wrapping_mul(P1);
        acc = acc.rotate_left(23).wrapping_mul(P2).wrapping_add(P3);
    }
    for &b in bytes {
        acc ^= u64::from(b).wrapping_mul(P5);
        acc = acc.rotate_left(11).wrapping_mul(P1);
    }
    acc ^= acc >> 33;
    acc = acc.wrapping_mul(P2);
    acc ^= acc >> 29;
    acc = acc.wrapping_mul(P3);
    acc ^ (acc >> 32)
}

#[inline(always)]
fn round(acc: u64, lane: u64) -> u64 {
    acc.wrapping_add(lane.wrapping_mul(P2)).rotate_left(31).wrapping_mul(P1)
}

/// Feeds one 32-byte stripe to the four accumulators.
#[inline(always)]
fn accumulate(v: &mut [u64; 4], stripe: &[u8; 32]) {
    for (acc, lane) in v.iter_mut().zip(stripe.as_chunks::<8>().0) {
        *acc = round(*acc, u64::from_le_bytes(*lane));
    }
}

/// Convenience form of [`hash_blocks`] that allocates the result.
pub fn block_hashes(
    model: &str,
    cache_salt: Option<&str>,
    input: &[u8],
    block_bytes: usize,
    max_blocks: usize,
) -> Vec<u64> {
    let mut out = Vec::new();
    hash_blocks(model, cache_salt, input, block_bytes, max_blocks, &mut out);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::vec;
    use xxhash_rust::xxh64::xxh64;

    #[test]
    fn a_link_is_xxh64_of_the_block_then_the_previous_hash() {
        let bytes: Vec<u8> = (0..300u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 11) as u8).collect();
        for prev in [0, 1, 0x0123_4567_89AB_CDEF, u64::MAX] {
            for len in 0..=bytes.len() {
                let mut msg = bytes[..len].to_vec();
                msg.extend_from_slice(&u64::to_le_bytes(prev));
                assert_eq!(link(&bytes[..len], prev), xxh64(&msg, 0), "len {len}, prev {prev:#x}");
            }
        }
    }

    const PROMPT: &[u8] = b"You are a helpful assistant. Answer briefly and cite your sources. \
        The user asks about the weather in Lisbon in spring and what to pack for a week.";

    #[test]
    fn xxh64_is_the_unseeded_standard_variant() {
        // Published test vector of XXH64("", 0): pins the algorithm and the seed.
        assert_eq!(xxh64(b"", 0), 0xEF46_DB37_51D8_E999);
    }

    #[test]
    fn worked_example_of_the_chain() {
        let block = 8;
        let input = b"abcdefghABCDEFGHxyz"; // two whole blocks and 3 spare bytes
        let h0 = xxh64(b"llamamy-salt", 0);
        let mut b1 = b"abcdefgh".to_vec();
        b1.extend_from_slice(&h0.to_le_bytes());
        let h1 = xxh64(&b1, 0);
        let mut b2 = b"ABCDEFGH".to_vec();
        b2.extend_from_slice(&h1.to_le_bytes());
        let h2 = xxh64(&b2, 0);
        assert_eq!(block_hashes("llama", Some("my-salt"), input, block, 256), vec![h1, h2]);
        // No salt is the same as hashing the model alone.
        let h0 = xxh64(b"llama", 0);
        let mut b1 = b"abcdefgh".to_vec();
        b1.extend_from_slice(&h0.to_le_bytes());
        assert_eq!(block_hashes("llama", None, input, block, 1), vec![xxh64(&b1, 0)]);
    }

    /// The chain as the definition reads, one streaming hasher per link.
    fn streamed_chain(model: &str, salt: Option<&str>, input: &[u8], block: usize, max: usize) -> Vec<u64> {
        let mut h = Xxh64::new(0);
        h.update(model.as_bytes());
        h.update(salt.unwrap_or("").as_bytes());
        let mut prev = h.digest();
        let mut out = Vec::new();
        for b in input.chunks_exact(block).take(max) {
            let mut h = Xxh64::new(0);
            h.update(b);
            h.update(&prev.to_le_bytes());
            prev = h.digest();
            out.push(prev);
        }
        out
    }

    #[test]
    fn every_block_size_gives_the_streamed_chain() {
        // Non-repeating bytes so a block copied to the wrong place would change the hashes.
        let input: Vec<u8> = (0..20_000u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8).collect();
        // 64: the literal fast path; others cover every shape of the tail after the whole stripes.
        for block in [1, 8, 63, 64, 65, 128, 255, 256, 257, 1000, 4096] {
            let want = streamed_chain("llama", Some("salt"), &input, block, 300);
            assert_eq!(block_hashes("llama", Some("salt"), &input, block, 300), want, "block {block}");
            assert_eq!(want.len(), (input.len() / block).min(300), "block {block}");
        }
        // Pinned value of the first link of the default geometry, independent of both implementations.
        let h0 = xxh64(b"llamasalt", 0);
        let mut b1 = input[..64].to_vec();
        b1.extend_from_slice(&h0.to_le_bytes());
        assert_eq!(block_hashes("llama", Some("salt"), &input, 64, 1), [xxh64(&b1, 0)]);
    }

    #[test]
    fn same_model_salt_and_prefix_give_the_same_hashes() {
        let a = block_hashes("m", Some("s"), PROMPT, 16, 256);
        let b = block_hashes("m", Some("s"), PROMPT, 16, 256);
        assert_eq!(a.len(), PROMPT.len() / 16);
        assert_eq!(a, b);
        // A prompt that only differs after block 3 shares the first 3 hashes and nothing after.
        let mut other = PROMPT.to_vec();
        other[3 * 16 + 1] ^= 1;
        let c = block_hashes("m", Some("s"), &other, 16, 256);
        assert_eq!(c[..3], a[..3]);
        assert!(c[3..].iter().zip(&a[3..]).all(|(x, y)| x != y));
    }

    #[test]
    fn different_salt_or_model_shares_nothing() {
        let a = block_hashes("m", Some("tenant-a"), PROMPT, 16, 256);
        let b = block_hashes("m", Some("tenant-b"), PROMPT, 16, 256);
        let c = block_hashes("other-model", Some("tenant-a"), PROMPT, 16, 256);
        assert!(a.iter().all(|h| !b.contains(h) && !c.contains(h)));
    }

    #[test]
    fn short_input_has_no_hashes_and_partial_blocks_are_ignored() {
        assert!(block_hashes("m", None, &PROMPT[..63], 64, 256).is_empty());
        assert_eq!(block_hashes("m", None, &PROMPT[..64], 64, 256).len(), 1);
        assert_eq!(block_hashes("m", None, &PROMPT[..127], 64, 256).len(), 1);
        assert_eq!(
            block_hashes("m", None, &PROMPT[..127], 64, 256),
            block_hashes("m", None, &PROMPT[..64], 64, 256)
        );
        assert!(block_hashes("m", None, PROMPT, 0, 256).is_empty());
        assert!(block_hashes("m", None, PROMPT, 16, 0).is_empty());
    }

    #[test]
    fn at_most_max_blocks_are_hashed() {
        let long = vec![b'x'; 64 * 300 + 5];
        let all = block_hashes("m", None, &long, 64, 1000);
        assert_eq!(all.len(), 300);
        let capped = block_hashes("m", None, &long, 64, 256);
        assert_eq!(capped.len(), 256);
        assert_eq!(capped[..], all[..256]);
    }

    #[test]
    fn output_buffer_is_reused() {
        let mut out = vec![1, 2, 3];
        hash_blocks("m", None, b"short", 64, 256, &mut out);
        assert!(out.is_empty());
    }
}
