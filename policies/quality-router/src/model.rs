//! The embedded model: hashed word unigrams and bigrams of a text, scored by
//! a linear model trained offline (`train/train.py`, which defines the same
//! features in Python; `model/feature-check.json` holds texts and scores the
//! two must agree on).
//!
//! File layout (`model/quality-router.bin`, little-endian): `SYQR`, the
//! version (12 ASCII hex digits), the bucket bits (u32), the bias (f32), 101
//! thresholds (f32: the score above which k % of training prompts fall, k =
//! 0..100), then one f32 weight per bucket.

/// The model, read in place from the embedded bytes.
pub(crate) struct Model {
    bytes: &'static [u8],
    /// The model's version, from its file.
    pub version: &'static str,
    buckets: u32,
    bias: f32,
}

const HEADER: usize = 4 + 12 + 4 + 4;
const THRESHOLDS: usize = 101;

impl Model {
    /// Checks and reads the header of a model file.
    pub fn parse(bytes: &'static [u8]) -> Result<Self, String> {
        if bytes.len() < HEADER + THRESHOLDS * 4 || &bytes[..4] != b"SYQR" {
            return Err("the embedded model is not a quality-router model".into());
        }
        let version = std::str::from_utf8(&bytes[4..16]).map_err(|_| "the model's version is not text")?;
        let bits = u32::from_le_bytes(bytes[16..20].try_into().map_err(|_| "short header")?);
        let buckets = 1u32.checked_shl(bits).ok_or("the model's bucket bits are out of range")?;
        if bytes.len() != HEADER + THRESHOLDS * 4 + buckets as usize * 4 {
            return Err(format!(
                "the model has {} bytes, not the {} its header says",
                bytes.len(),
                HEADER + THRESHOLDS * 4 + buckets as usize * 4
            ));
        }
        Ok(Self { bytes, version, buckets, bias: f32_at(bytes, 20) })
    }

    /// The score above which `percent` % of training prompts fall.
    pub fn threshold_for_share(&self, percent: u32) -> f32 {
        f32_at(self.bytes, HEADER + percent.min(100) as usize * 4)
    }

    /// The predicted benefit of the strong model over the cheap one on `text`.
    pub fn score(&self, text: &str) -> f32 {
        let buckets = features(text, self.buckets);
        if buckets.is_empty() {
            return self.bias;
        }
        let weights = HEADER + THRESHOLDS * 4;
        let sum: f32 = buckets.iter().map(|&b| f32_at(self.bytes, weights + b as usize * 4)).sum();
        self.bias + sum / (buckets.len() as f32).sqrt()
    }
}

fn f32_at(bytes: &[u8], at: usize) -> f32 {
    f32::from_le_bytes([bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]])
}

/// The distinct buckets of `text`'s unigrams and bigrams: tokens are runs
/// of ASCII letters (lowercased) and digits and of non-ASCII bytes; each
/// gram is hashed with 32-bit FNV-1a, a bigram as `a b`.
pub(crate) fn features(text: &str, buckets: u32) -> Vec<u32> {
    let mask = buckets - 1;
    let mut out = Vec::with_capacity(text.len() / 3);
    let mut previous: Option<u32> = None;
    let mut token = Hasher::new();
    let mut bigram = Hasher::new();
    let mut in_token = false;
    for &c in text.as_bytes().iter().chain(std::iter::once(&b' ')) {
        let c = c.to_ascii_lowercase();
        if c.is_ascii_lowercase() || c.is_ascii_digit() || c >= 128 {
            token.push(c);
            bigram.push(c);
            in_token = true;
        } else if in_token {
            out.push(token.0 & mask);
            if previous.is_some() {
                out.push(bigram.0 & mask);
            }
            // The next bigram starts with this token and a space.
            previous = Some(token.0);
            bigram = token.clone();
            bigram.push(b' ');
            token = Hasher::new();
            in_token = false;
        }
    }
    out.sort_unstable();
    out.dedup();
    out
}

/// 32-bit FNV-1a, fed byte by byte.
#[derive(Clone)]
struct Hasher(u32);

impl Hasher {
    fn new() -> Self {
        Self(0x811c_9dc5)
    }

    fn push(&mut self, byte: u8) {
        self.0 = (self.0 ^ u32::from(byte)).wrapping_mul(0x0100_0193);
    }
}
