//! Block hashing of the prompt: the chain that names "this prefix" the same way GIE/llm-d do.
//!
//! Two requests share a block hash exactly when the model, the cache salt and every byte up to the end of
//! that block agree, so a hash stands for a whole prefix, not just one block.

use alloc::vec::Vec;
use xxhash_rust::xxh64::{xxh64, Xxh64};

/// GIE's estimate of characters per token; turns token block sizes into byte block sizes.
pub const BYTES_PER_TOKEN: usize = 4;
/// vLLM's default KV block size.
pub const DEFAULT_BLOCK_SIZE_TOKENS: usize = 16;
/// At most this many blocks are hashed (256 × 64 bytes = 16 KiB of prompt).
pub const DEFAULT_MAX_PREFIX_BLOCKS: usize = 256;

/// Seed of every xxHash64 in the chain (GIE uses the unseeded variant).
const SEED: u64 = 0;
/// Blocks up to this size (64 tokens) are hashed one-shot from a stack copy of `block ‖ le(prev)`,
/// cheaper than resetting and feeding a streaming hasher; larger blocks stream, still without the heap.
const STACK_BLOCK_BYTES: usize = 256;

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
    out.clear();
    if block_bytes == 0 || max_blocks == 0 || input.len() < block_bytes {
        return;
    }
    let blocks = (input.len() / block_bytes).min(max_blocks);
    out.reserve(blocks);
    let mut hasher = Xxh64::new(SEED);
    hasher.update(model.as_bytes());
    if let Some(salt) = cache_salt {
        hasher.update(salt.as_bytes());
    }
    let mut prev = hasher.digest();
    let chunks = input.chunks_exact(block_bytes).take(blocks);
    match block_bytes {
        // A literal length lets the copies compile to a few vector moves (vLLM's default block).
        64 => chain_one_shot(chunks, 64, prev, out),
        n if n <= STACK_BLOCK_BYTES => chain_one_shot(chunks, n, prev, out),
        _ => {
            for block in chunks {
                hasher.reset(SEED);
                hasher.update(block);
                hasher.update(&prev.to_le_bytes());
                prev = hasher.digest();
                out.push(prev);
            }
        }
    }
}

/// The chain for blocks of `block_bytes <= STACK_BLOCK_BYTES`: each link is one `xxh64(block ‖ le(prev))`
/// over a stack buffer.
#[inline(always)]
fn chain_one_shot<'a>(
    chunks: impl Iterator<Item = &'a [u8]>,
    block_bytes: usize,
    mut prev: u64,
    out: &mut Vec<u64>,
) {
    let mut buf = [0u8; STACK_BLOCK_BYTES + 8];
    let Some(msg) = block_bytes.checked_add(8).and_then(|len| buf.get_mut(..len)) else { return };
    for block in chunks {
        let Some((head, tail)) = msg.split_at_mut_checked(block_bytes) else { return };
        head.copy_from_slice(block);
        tail.copy_from_slice(&prev.to_le_bytes());
        prev = xxh64(msg, SEED);
        out.push(prev);
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
        // 64: the literal fast path; 8..=256: the stack buffer (256 fills it); 257 and 1000: streamed.
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
