//! What the engine knows about a prompt: its length and the chained hashes of its full KV blocks.
//!
//! Prefix caching only needs "do these two prompts agree up to the end of block j", so a prompt is reduced
//! to one hash per full block; three cheap ways to build it (text, token ids, synthetic segments) are here.

/// Bytes per token of the tokenizer stand-in (the same rule of thumb the gateway uses).
pub const BYTES_PER_TOKEN: usize = 4;

/// A run of synthetic tokens: tokens `0..len` of group `group`.
///
/// Two prompts that start with the same segments share every full block inside that common prefix, which
/// is how a benchmark describes "system prompt 6000 tokens of group 17, then a 1200-token question" without
/// materialising 7200 token ids.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Segment {
    pub group: u64,
    pub len: u32,
}

/// A prompt as the KV cache sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Prompt {
    block_hashes: Vec<u64>,
    len: u32,
}

// Separate starting points keep the three construction methods from ever colliding with each other.
const TOKENS_ROOT: u64 = 0x6d6f_6465_6c2d_7369;
const SEGMENTS_ROOT: u64 = 0x7365_676d_656e_7473;
const TEXT_ROOT: u64 = 0x7465_7874_2d62_7974;

/// SplitMix64's finaliser over a rotated combination: cheap, and good enough that distinct prefixes
/// practically never share a 64-bit hash.
#[inline]
pub(crate) fn mix(h: u64, x: u64) -> u64 {
    let mut z = (h.rotate_left(23) ^ x).wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// 0 marks "no hash" inside the block pool, so real hashes avoid it.
#[inline]
pub(crate) fn nonzero(h: u64) -> u64 {
    if h == 0 {
        1
    } else {
        h
    }
}

impl Prompt {
    /// A prompt whose block hashes the caller computed; hashes beyond `len / block_size` are ignored by
    /// the engine, zero hashes are replaced so they still compare equal to each other.
    pub fn from_hashes(block_hashes: Vec<u64>, len: u32) -> Prompt {
        Prompt { block_hashes: block_hashes.into_iter().map(nonzero).collect(), len }
    }

    /// Hashes token ids block by block; prompts with equal leading tokens share the leading hashes.
    pub fn from_tokens(tokens: &[u32], block_size: u32) -> Prompt {
        let bs = block_size.max(1) as usize;
        let mut hashes = Vec::with_capacity(tokens.len() / bs);
        let mut prev = TOKENS_ROOT;
        for block in tokens.chunks_exact(bs) {
            let content = block.iter().fold(0u64, |c, &t| mix(c, u64::from(t)));
            prev = nonzero(mix(prev, content));
            hashes.push(prev);
        }
        Prompt { block_hashes: hashes, len: saturating_u32(tokens.len()) }
    }

    /// Hashes synthetic segments in O(blocks), whatever their lengths.
    pub fn from_segments(segments: &[Segment], block_size: u32) -> Prompt {
        let bs = u64::from(block_size.max(1));
        let total: u64 = segments.iter().map(|s| u64::from(s.len)).sum();
        let mut hashes = Vec::with_capacity(usize::try_from(total / bs).unwrap_or(0));
        let mut prev = SEGMENTS_ROOT;
        // Content hash of the block being filled and how many tokens it holds so far.
        let mut content = 0u64;
        let mut filled = 0u64;
        for seg in segments {
            let mut offset = 0u64;
            let len = u64::from(seg.len);
            while offset < len {
                let take = (bs - filled).min(len - offset);
                // A run is named by (group, where it starts in the group, how long it is): the same tokens
                // in the same block position always give the same content hash.
                content = mix(content, mix(seg.group, (offset << 24) ^ take));
                filled += take;
                offset += take;
                if filled == bs {
                    prev = nonzero(mix(prev, content));
                    hashes.push(prev);
                    content = 0;
                    filled = 0;
                }
            }
        }
        Prompt { block_hashes: hashes, len: u32::try_from(total).unwrap_or(u32::MAX) }
    }

    /// The tokenizer stand-in: every [`BYTES_PER_TOKEN`] bytes of text are one token, so texts sharing a
    /// byte prefix share the blocks inside it (what a real tokenizer gives for a shared system prompt).
    pub fn from_text(text: &str, block_size: u32) -> Prompt {
        let bytes = text.as_bytes();
        let block_bytes = block_size.max(1) as usize * BYTES_PER_TOKEN;
        let mut hashes = Vec::with_capacity(bytes.len() / block_bytes);
        let mut prev = TEXT_ROOT;
        for block in bytes.chunks_exact(block_bytes) {
            let content = block.chunks(8).fold(0u64, |c, word| {
                let mut buf = [0u8; 8];
                for (dst, src) in buf.iter_mut().zip(word) {
                    *dst = *src;
                }
                mix(c, u64::from_le_bytes(buf))
            });
            prev = nonzero(mix(prev, content));
            hashes.push(prev);
        }
        Prompt { block_hashes: hashes, len: text_tokens(text) }
    }

    /// Prompt length in tokens.
    pub fn len(&self) -> u32 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Chained hashes of the full blocks, oldest first.
    pub fn block_hashes(&self) -> &[u64] {
        &self.block_hashes
    }

    pub(crate) fn into_parts(self) -> (Vec<u64>, u32) {
        (self.block_hashes, self.len)
    }
}

/// Token count of `text` under the stand-in tokenizer (a partial last token still counts).
pub fn text_tokens(text: &str) -> u32 {
    saturating_u32(text.len().div_ceil(BYTES_PER_TOKEN))
}

fn saturating_u32(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shared_text_prefix_shares_exactly_the_full_blocks_inside_it() {
        let system = "You are a terse assistant. ".repeat(20); // 540 bytes = 135 tokens = 8 full blocks
        let a = Prompt::from_text(&format!("{system}What is the capital of France?"), 16);
        let b = Prompt::from_text(&format!("{system}Name three prime numbers above 100."), 16);
        assert_eq!(a.len(), (540 + 30_u32).div_ceil(4));
        let common = a.block_hashes().iter().zip(b.block_hashes()).take_while(|(x, y)| x == y).count();
        // 540 bytes cover 8 full 64-byte blocks; block 9 mixes system text with the differing question.
        assert_eq!(common, 8);
    }

    #[test]
    fn segments_share_blocks_of_a_common_system_prompt_only() {
        let q1 = [Segment { group: 7, len: 6000 }, Segment { group: 100, len: 1200 }];
        let q2 = [Segment { group: 7, len: 6000 }, Segment { group: 101, len: 1200 }];
        let (a, b) = (Prompt::from_segments(&q1, 16), Prompt::from_segments(&q2, 16));
        assert_eq!(a.len(), 7200);
        assert_eq!(a.block_hashes().len(), 450);
        let common = a.block_hashes().iter().zip(b.block_hashes()).take_while(|(x, y)| x == y).count();
        assert_eq!(common, 375); // 6000 / 16
                                 // A 1000-token system prompt ends mid-block: block 62 already holds question tokens.
        let c = Prompt::from_segments(&[Segment { group: 7, len: 1000 }, Segment { group: 1, len: 50 }], 16);
        let d = Prompt::from_segments(&[Segment { group: 7, len: 1000 }, Segment { group: 2, len: 50 }], 16);
        let common = c.block_hashes().iter().zip(d.block_hashes()).take_while(|(x, y)| x == y).count();
        assert_eq!(common, 62);
    }

    #[test]
    fn token_prompts_hash_per_block_and_ignore_the_tail() {
        let tokens: Vec<u32> = (0..40).collect();
        let p = Prompt::from_tokens(&tokens, 16);
        assert_eq!((p.len(), p.block_hashes().len()), (40, 2));
        let q = Prompt::from_tokens(&tokens[..33], 16);
        assert_eq!(p.block_hashes(), q.block_hashes());
        let mut other = tokens.clone();
        other[0] = 999;
        // Changing the first token changes every later hash: a hash names a whole prefix.
        let r = Prompt::from_tokens(&other, 16);
        assert!(r.block_hashes().iter().zip(p.block_hashes()).all(|(x, y)| x != y));
    }

    #[test]
    fn text_token_count_rounds_up() {
        assert_eq!(text_tokens(""), 0);
        assert_eq!(text_tokens("abcd"), 1);
        assert_eq!(text_tokens("abcde"), 2);
    }
}
