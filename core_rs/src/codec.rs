//! Wire encodings of weight vectors: `none` (float32), `fp16`, `bf16`, `int8` (per-block scale,
//! optionally stochastic rounding) and `topk:RATIO` (the largest-magnitude fraction, as index gaps
//! and float32 values). Lossy codecs are used with error feedback (`Feedback`): what a commit
//! did not carry is kept and added to the next one.
//!
//! Decoding validates everything it reads (lengths, counts, indices, scales, values) and either
//! fills the whole output or fails: a malformed payload never reaches the centre.
//!
//! The vocabulary is defined here and nowhere else: the families (`Codec::FAMILIES`), what each
//! may be used for (`Codec::can_pull`, `Codec::can_carry_weights`) and the syntax of a codec's
//! name (`CODEC_SYNTAX`). The server's checks and Python's `CODECS`, `PULL_CODECS` and
//! `ELASTIC_CODECS` are computed from them.

use half::f16;
use half::slice::HalfFloatSliceExt;
use multiversion::multiversion;

use crate::error::{Error, Result};
use crate::protocol::codec_id;
use crate::rules::finite_max_abs;

/// Values per int8 block; each block carries one float32 scale.
pub const INT8_BLOCK: usize = 256;

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Codec {
    None,
    Fp16,
    Bf16,
    Int8 { stochastic: bool },
    TopK { ratio: f32 },
}

/// How a codec is named, for errors and help.
pub const CODEC_SYNTAX: &str =
    "none, fp16, bf16, int8, int8:stochastic, topk:RATIO (0 < RATIO <= 1)";

/// The family names of `codecs`, in order.
fn kinds(codecs: impl Iterator<Item = Codec>) -> Vec<&'static str> {
    codecs.map(|c| c.kind()).collect()
}

/// Every codec family, as a server's list of accepted codecs names them.
pub fn families() -> Vec<&'static str> {
    kinds(Codec::FAMILIES.into_iter())
}

/// The families that may serve pulls.
pub fn pull_families() -> Vec<&'static str> {
    kinds(Codec::FAMILIES.into_iter().filter(Codec::can_pull))
}

/// The families that may carry elastic commits (weights).
pub fn weight_families() -> Vec<&'static str> {
    kinds(Codec::FAMILIES.into_iter().filter(Codec::can_carry_weights))
}

/// `a, b or c`, for messages that list what is allowed.
pub fn one_of(names: &[&str]) -> String {
    match names {
        [] => String::new(),
        [only] => (*only).to_string(),
        [init @ .., last] => format!("{} or {last}", init.join(", ")),
    }
}

/// Checks a family name (as a server's list of accepted codecs holds them).
pub fn check_family(kind: &str) -> Result<()> {
    let known = families();
    if !known.contains(&kind) {
        return Err(Error::invalid(format!(
            "unknown codec {kind:?}; codec families: {}",
            known.join(", ")
        )));
    }
    Ok(())
}

impl Codec {
    /// One codec of each family, in the order families are listed.
    pub const FAMILIES: [Codec; 5] = [
        Codec::None,
        Codec::Fp16,
        Codec::Bf16,
        Codec::Int8 { stochastic: false },
        Codec::TopK { ratio: 1.0 },
    ];

    /// `none`, `fp16`, `bf16`, `int8`, `int8:stochastic`, `topk:0.01`.
    pub fn parse(text: &str) -> Result<Codec> {
        let text = text.trim().to_ascii_lowercase();
        let (name, arg) = match text.split_once(':') {
            Some((n, a)) => (n, Some(a)),
            None => (text.as_str(), None),
        };
        let bad = || Error::invalid(format!("unknown codec {text:?}; codecs: {CODEC_SYNTAX}"));
        match (name, arg) {
            ("none", None) => Ok(Codec::None),
            ("fp16", None) => Ok(Codec::Fp16),
            ("bf16", None) => Ok(Codec::Bf16),
            ("int8", None) => Ok(Codec::Int8 { stochastic: false }),
            ("int8", Some("stochastic")) => Ok(Codec::Int8 { stochastic: true }),
            ("topk", Some(r)) => {
                let ratio: f32 = r.parse().map_err(|_| bad())?;
                Codec::topk(ratio)
            }
            _ => Err(bad()),
        }
    }

    pub fn topk(ratio: f32) -> Result<Codec> {
        if !(ratio > 0.0 && ratio <= 1.0) {
            return Err(Error::invalid(format!(
                "topk ratio must be in (0, 1], got {ratio}"
            )));
        }
        Ok(Codec::TopK { ratio })
    }

    pub fn name(&self) -> String {
        match self {
            Codec::None => "none".into(),
            Codec::Fp16 => "fp16".into(),
            Codec::Bf16 => "bf16".into(),
            Codec::Int8 { stochastic: false } => "int8".into(),
            Codec::Int8 { stochastic: true } => "int8:stochastic".into(),
            Codec::TopK { ratio } => format!("topk:{ratio}"),
        }
    }

    /// The codec's family, as a server's list of accepted codecs names them.
    pub fn kind(&self) -> &'static str {
        match self {
            Codec::None => "none",
            Codec::Fp16 => "fp16",
            Codec::Bf16 => "bf16",
            Codec::Int8 { .. } => "int8",
            Codec::TopK { .. } => "topk",
        }
    }

    pub fn lossy(&self) -> bool {
        *self != Codec::None
    }

    /// Whether the server may send pulls with it. It sends the centre itself, without error
    /// feedback, so only codecs that round each value (the float formats) qualify.
    pub fn can_pull(&self) -> bool {
        matches!(self, Codec::None | Codec::Fp16 | Codec::Bf16)
    }

    /// Whether it may carry weights, as elastic commits do: it must keep every value to a
    /// relative precision, which `topk` (drops values) and `int8` (one scale a block) do not.
    pub fn can_carry_weights(&self) -> bool {
        matches!(self, Codec::None | Codec::Fp16 | Codec::Bf16)
    }

    /// (id, parameter) as sent in the handshake.
    pub fn to_wire(&self) -> (u8, f32) {
        match *self {
            Codec::None => (codec_id::NONE, 0.0),
            Codec::Fp16 => (codec_id::FP16, 0.0),
            Codec::Bf16 => (codec_id::BF16, 0.0),
            Codec::Int8 { stochastic } => (codec_id::INT8, if stochastic { 1.0 } else { 0.0 }),
            Codec::TopK { ratio } => (codec_id::TOPK, ratio),
        }
    }

    pub fn from_wire(id: u8, param: f32) -> Result<Codec> {
        match id {
            codec_id::NONE => Ok(Codec::None),
            codec_id::FP16 => Ok(Codec::Fp16),
            codec_id::BF16 => Ok(Codec::Bf16),
            codec_id::INT8 => Ok(Codec::Int8 {
                stochastic: param != 0.0,
            }),
            codec_id::TOPK => Codec::topk(param),
            _ => Err(Error::protocol(format!("unknown codec id {id}"))),
        }
    }

    fn topk_count(ratio: f32, n: usize) -> usize {
        // f32 ratios are not exact (0.1f32 > 0.1): shave the excess so 10% of 30 is 3, not 4.
        ((ratio as f64 * n as f64 * (1.0 - 1e-7)).ceil() as usize).clamp(1, n)
    }

    /// The largest payload this codec can produce for `n` values.
    pub fn max_encoded_len(&self, n: usize) -> usize {
        match *self {
            Codec::None => 4 * n,
            Codec::Fp16 | Codec::Bf16 => 2 * n,
            Codec::Int8 { .. } => 4 * n.div_ceil(INT8_BLOCK) + n,
            Codec::TopK { ratio } => {
                let k = Self::topk_count(ratio, n);
                4 + 5 * k + 4 * k // count, index gaps (at most 5 bytes each), values
            }
        }
    }

    /// Encodes `values` into `out` (cleared first). `seed` drives stochastic rounding.
    pub fn encode(&self, values: &[f32], seed: u64, out: &mut Vec<u8>) {
        out.clear();
        match *self {
            Codec::None => out.extend_from_slice(bytemuck::cast_slice(values)),
            Codec::Fp16 => {
                let mut halves = vec![f16::ZERO; values.len()];
                halves.convert_from_f32_slice(values);
                out.extend_from_slice(bytemuck::cast_slice(&halves));
            }
            Codec::Bf16 => {
                out.resize(2 * values.len(), 0);
                to_bf16(values, bytemuck::cast_slice_mut(out));
            }
            Codec::Int8 { stochastic } => encode_int8(values, stochastic, seed, out),
            Codec::TopK { ratio } => {
                encode_topk(values, Self::topk_count(ratio, values.len()), out)
            }
        }
    }

    /// Decodes `bytes` into all of `out`, or fails without a usable result; returns the largest
    /// `|value|`, which the check for NaN and infinity finds anyway.
    pub fn decode(&self, bytes: &[u8], out: &mut [f32]) -> Result<f32> {
        let n = out.len();
        let exact = |len: usize| {
            if bytes.len() == len {
                Ok(())
            } else {
                Err(Error::rejected(format!(
                    "{} payload of {} bytes does not fit {n} values (expected {len})",
                    self.name(),
                    bytes.len()
                )))
            }
        };
        match *self {
            Codec::None => {
                exact(4 * n)?;
                bytemuck::cast_slice_mut::<f32, u8>(out).copy_from_slice(bytes);
            }
            Codec::Fp16 => {
                exact(2 * n)?;
                let halves: Vec<f16> = bytes
                    .chunks_exact(2)
                    .map(|b| f16::from_le_bytes([b[0], b[1]]))
                    .collect();
                halves.convert_to_f32_slice(out);
            }
            Codec::Bf16 => {
                exact(2 * n)?;
                from_bf16(bytes, out);
            }
            Codec::Int8 { .. } => {
                let blocks = n.div_ceil(INT8_BLOCK);
                exact(4 * blocks + n)?;
                decode_int8(bytes, blocks, out)?;
            }
            Codec::TopK { ratio } => decode_topk(bytes, Self::topk_count(ratio, n), out)?,
        }
        finite_max_abs(out)
            .ok_or_else(|| Error::rejected("compressed payload decodes to NaN or infinity"))
    }
}

#[multiversion(targets("x86_64+avx2", "aarch64+neon"))]
fn to_bf16(values: &[f32], out: &mut [u16]) {
    for (v, o) in values.iter().zip(out.iter_mut()) {
        // Round to nearest even on the upper 16 bits (NaN stays NaN: the server rejects it anyway).
        let bits = v.to_bits();
        let rounding = 0x7fff + ((bits >> 16) & 1);
        *o = (bits.wrapping_add(rounding) >> 16) as u16;
    }
}

#[multiversion(targets("x86_64+avx2", "aarch64+neon"))]
fn from_bf16(bytes: &[u8], out: &mut [f32]) {
    for (b, o) in bytes.chunks_exact(2).zip(out.iter_mut()) {
        *o = f32::from_bits(u32::from(u16::from_le_bytes([b[0], b[1]])) << 16);
    }
}

/// A small, fast generator for stochastic rounding (SplitMix64).
struct SplitMix(u64);

impl SplitMix {
    fn next_unit(&mut self) -> f32 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^= z >> 31;
        (z >> 40) as f32 / (1u64 << 24) as f32
    }
}

fn encode_int8(values: &[f32], stochastic: bool, seed: u64, out: &mut Vec<u8>) {
    let blocks = values.len().div_ceil(INT8_BLOCK);
    out.resize(4 * blocks + values.len(), 0);
    let (scales, codes) = out.split_at_mut(4 * blocks);
    for (b, block) in values.chunks(INT8_BLOCK).enumerate() {
        let max = block.iter().fold(0.0f32, |m, v| m.max(v.abs()));
        let scale = max / 127.0;
        scales[4 * b..4 * b + 4].copy_from_slice(&scale.to_le_bytes());
        let inv = if scale > 0.0 { 1.0 / scale } else { 0.0 };
        let dst = &mut codes[b * INT8_BLOCK..b * INT8_BLOCK + block.len()];
        if stochastic {
            let mut rng = SplitMix(seed ^ (b as u64).wrapping_mul(0x2545_f491_4f6c_dd1d));
            for (v, q) in block.iter().zip(dst.iter_mut()) {
                *q = ((v * inv + rng.next_unit()).floor().clamp(-127.0, 127.0) as i8) as u8;
            }
        } else {
            quantize(block, inv, dst);
        }
    }
}

#[multiversion(targets("x86_64+avx2", "aarch64+neon"))]
fn quantize(block: &[f32], inv: f32, dst: &mut [u8]) {
    for (v, q) in block.iter().zip(dst.iter_mut()) {
        *q = ((v * inv).round().clamp(-127.0, 127.0) as i8) as u8;
    }
}

fn decode_int8(bytes: &[u8], blocks: usize, out: &mut [f32]) -> Result<()> {
    let (scales, codes) = bytes.split_at(4 * blocks);
    for (b, (chunk, scale)) in out
        .chunks_mut(INT8_BLOCK)
        .zip(scales.chunks_exact(4))
        .enumerate()
    {
        let scale = f32::from_le_bytes([scale[0], scale[1], scale[2], scale[3]]);
        if !scale.is_finite() || scale < 0.0 {
            return Err(Error::rejected(format!(
                "int8 block {b} has an invalid scale {scale}"
            )));
        }
        let src = &codes[b * INT8_BLOCK..b * INT8_BLOCK + chunk.len()];
        for (o, q) in chunk.iter_mut().zip(src) {
            *o = f32::from(*q as i8) * scale;
        }
    }
    Ok(())
}

/// Indices of the `k` largest magnitudes, ascending. A sampled threshold narrows the candidates
/// first, so the exact selection runs on a few times `k` values instead of all of them.
fn topk_indices(values: &[f32], k: usize) -> Vec<u32> {
    let n = values.len();
    let mut candidates: Vec<u32> = Vec::new();
    if k * 8 < n {
        let step = (n / 16_384).max(1);
        let mut sample: Vec<f32> = values.iter().step_by(step).map(|v| v.abs()).collect();
        let keep = ((2 * k) as f64 / n as f64 * sample.len() as f64).ceil() as usize;
        if keep < sample.len() {
            let at = sample.len() - keep.max(1);
            sample.select_nth_unstable_by(at, f32::total_cmp);
            let threshold = sample[at];
            candidates = (0..n as u32)
                .filter(|&i| values[i as usize].abs() >= threshold)
                .collect();
        }
    }
    if candidates.len() < k || candidates.len() > 16 * k {
        candidates = (0..n as u32).collect(); // the sample was unlucky: select among all
    }
    if candidates.len() > k {
        candidates.select_nth_unstable_by(k - 1, |&a, &b| {
            values[b as usize]
                .abs()
                .total_cmp(&values[a as usize].abs())
        });
        candidates.truncate(k);
    }
    candidates.sort_unstable();
    candidates
}

fn push_varint(out: &mut Vec<u8>, mut v: u32) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn encode_topk(values: &[f32], k: usize, out: &mut Vec<u8>) {
    let indices = topk_indices(values, k);
    out.extend_from_slice(&(indices.len() as u32).to_le_bytes());
    let mut next = 0u32;
    for &i in &indices {
        push_varint(out, i - next); // gap to the previous index + 1: strictly increasing by construction
        next = i + 1;
    }
    for &i in &indices {
        out.extend_from_slice(&values[i as usize].to_le_bytes());
    }
}

fn decode_topk(bytes: &[u8], k_max: usize, out: &mut [f32]) -> Result<()> {
    let n = out.len();
    let bad = |why: &str| Error::rejected(format!("malformed topk payload: {why}"));
    if bytes.len() < 4 {
        return Err(bad("shorter than its count"));
    }
    let k = u32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]) as usize;
    if k > k_max {
        return Err(bad(&format!(
            "{k} values where the ratio allows at most {k_max}"
        )));
    }
    let mut pos = 4;
    let mut indices = Vec::with_capacity(k);
    let mut next: u64 = 0;
    for _ in 0..k {
        let mut gap: u64 = 0;
        let mut shift = 0;
        loop {
            let byte = *bytes.get(pos).ok_or_else(|| bad("truncated index"))?;
            pos += 1;
            gap |= u64::from(byte & 0x7f) << shift;
            if byte & 0x80 == 0 {
                break;
            }
            shift += 7;
            if shift > 28 {
                return Err(bad("index varint too long"));
            }
        }
        let index = next + gap;
        if index >= n as u64 {
            return Err(bad(&format!("index {index} beyond the {n} values")));
        }
        indices.push(index as usize);
        next = index + 1;
    }
    if bytes.len() != pos + 4 * k {
        return Err(bad("its values do not match its count"));
    }
    out.fill(0.0);
    for (i, v) in indices.iter().zip(bytes[pos..].chunks_exact(4)) {
        out[*i] = f32::from_le_bytes([v[0], v[1], v[2], v[3]]);
    }
    Ok(())
}

/// Error feedback for a lossy codec: each commit sends `delta + residual`, and whatever the
/// encoding lost becomes the new residual. Over many commits, what was sent plus the residual
/// equals what was meant to be sent.
#[derive(Debug, Default)]
pub struct Feedback {
    residual: Vec<f32>,
    target: Vec<f32>,
    decoded: Vec<f32>,
}

impl Feedback {
    pub fn residual(&self) -> &[f32] {
        &self.residual
    }

    /// The residual, leaving zeros in its place (it is about to be sent).
    pub fn take_residual(&mut self) -> Vec<f32> {
        let zeros = vec![0.0; self.residual.len()];
        std::mem::replace(&mut self.residual, zeros)
    }

    /// Puts back a residual whose flush the server refused.
    pub fn restore(&mut self, residual: Vec<f32>) {
        self.residual = residual;
    }

    /// After a commit the server refused: nothing of it was applied, so all of it stays unsent.
    pub fn unsent(&mut self) {
        self.residual.copy_from_slice(&self.target);
    }

    /// Encodes `delta` plus the residual into `out` and updates the residual.
    pub fn encode(
        &mut self,
        codec: &Codec,
        delta: &[f32],
        seed: u64,
        out: &mut Vec<u8>,
    ) -> Result<()> {
        let n = delta.len();
        self.residual.resize(n, 0.0);
        self.target.resize(n, 0.0);
        self.decoded.resize(n, 0.0);
        for ((t, d), r) in self.target.iter_mut().zip(delta).zip(&self.residual) {
            *t = d + r;
        }
        codec.encode(&self.target, seed, out);
        codec.decode(out, &mut self.decoded)?;
        for ((r, t), s) in self
            .residual
            .iter_mut()
            .zip(&self.target)
            .zip(&self.decoded)
        {
            *r = t - s;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn round_trip(codec: Codec, values: &[f32]) -> (Vec<f32>, usize) {
        let mut bytes = Vec::new();
        codec.encode(values, 7, &mut bytes);
        assert!(bytes.len() <= codec.max_encoded_len(values.len()));
        let mut out = vec![f32::NAN; values.len()];
        codec.decode(&bytes, &mut out).unwrap();
        (out, bytes.len())
    }

    #[test]
    fn parse_and_names() {
        for text in [
            "none",
            "fp16",
            "bf16",
            "int8",
            "int8:stochastic",
            "topk:0.01",
        ] {
            assert_eq!(Codec::parse(text).unwrap().name(), text);
        }
        for bad in ["zip", "topk", "topk:0", "topk:2", "topk:x", "int8:fast"] {
            assert!(Codec::parse(bad).is_err(), "{bad}");
        }
        let c = Codec::parse("topk:0.25").unwrap();
        let (id, p) = c.to_wire();
        assert_eq!(Codec::from_wire(id, p).unwrap(), c);
    }

    #[test]
    fn families_and_their_uses() {
        assert_eq!(families(), ["none", "fp16", "bf16", "int8", "topk"]);
        assert_eq!(pull_families(), ["none", "fp16", "bf16"]);
        assert_eq!(weight_families(), ["none", "fp16", "bf16"]);
        // Every codec a name or a wire id can give belongs to a listed family, with its uses.
        for text in [
            "none",
            "fp16",
            "bf16",
            "int8",
            "int8:stochastic",
            "topk:0.5",
        ] {
            let codec = Codec::parse(text).unwrap();
            let family = Codec::FAMILIES
                .iter()
                .find(|f| f.kind() == codec.kind())
                .unwrap();
            assert_eq!(family.can_pull(), codec.can_pull(), "{text}");
            assert_eq!(family.can_carry_weights(), codec.can_carry_weights());
            let (id, param) = codec.to_wire();
            assert_eq!(Codec::from_wire(id, param).unwrap(), codec);
            assert_eq!(family.to_wire().0, id);
        }
        assert!(Codec::from_wire(5, 0.0).is_err());
        for family in families() {
            check_family(family).unwrap();
        }
        let err = check_family("zip").unwrap_err().to_string();
        assert!(
            err.contains("codec families: none, fp16, bf16, int8, topk"),
            "{err}"
        );
        assert_eq!(one_of(&pull_families()), "none, fp16 or bf16");
        assert_eq!(one_of(&["a"]), "a");
    }

    #[test]
    fn topk_keeps_the_largest_exactly() {
        let values: Vec<f32> = (0..10_000)
            .map(|i| ((i * 7919) % 10_007) as f32 - 5000.0)
            .collect();
        let (out, len) = round_trip(Codec::TopK { ratio: 0.01 }, &values);
        let mut mags: Vec<f32> = values.iter().map(|v| v.abs()).collect();
        mags.sort_by(|a, b| b.total_cmp(a));
        let kept: Vec<usize> = (0..values.len()).filter(|&i| out[i] != 0.0).collect();
        assert_eq!(kept.len(), 100);
        for &i in &kept {
            assert_eq!(out[i], values[i]);
            assert!(values[i].abs() >= mags[99]);
        }
        assert!(
            4 * values.len() / len >= 50,
            "ratio {}",
            4 * values.len() / len
        );
    }

    #[test]
    fn hostile_payloads_are_rejected() {
        let n = 600;
        let mut out = vec![0.0; n];
        let topk = Codec::TopK { ratio: 0.1 };
        let mut good = Vec::new();
        topk.encode(&vec![1.0; n], 0, &mut good);
        assert!(topk.decode(&good, &mut out).is_ok());
        let mut too_many = good.clone();
        too_many[..4].copy_from_slice(&1000u32.to_le_bytes());
        assert!(topk
            .decode(&too_many, &mut out)
            .unwrap_err()
            .to_string()
            .contains("at most"));
        let mut beyond = vec![];
        beyond.extend_from_slice(&1u32.to_le_bytes());
        push_varint(&mut beyond, 5000);
        beyond.extend_from_slice(&1.0f32.to_le_bytes());
        assert!(topk
            .decode(&beyond, &mut out)
            .unwrap_err()
            .to_string()
            .contains("beyond"));
        assert!(topk.decode(&good[..good.len() - 1], &mut out).is_err());
        let mut nan_value = good.clone();
        let end = nan_value.len();
        nan_value[end - 4..].copy_from_slice(&f32::NAN.to_le_bytes());
        assert!(topk.decode(&nan_value, &mut out).is_err());

        let int8 = Codec::Int8 { stochastic: false };
        let mut q = Vec::new();
        int8.encode(&vec![1.0; n], 0, &mut q);
        let mut nan_scale = q.clone();
        nan_scale[..4].copy_from_slice(&f32::NAN.to_le_bytes());
        assert!(int8
            .decode(&nan_scale, &mut out)
            .unwrap_err()
            .to_string()
            .contains("scale"));
        assert!(int8.decode(&q[..q.len() - 3], &mut out).is_err());
        assert!(Codec::Fp16.decode(&[0u8; 7], &mut out).is_err());
        let inf = f16::INFINITY.to_le_bytes().repeat(n);
        assert!(Codec::Fp16.decode(&inf, &mut out).is_err());
    }

    #[test]
    fn feedback_keeps_what_was_not_sent() {
        let codec = Codec::TopK { ratio: 0.05 };
        let mut fb = Feedback::default();
        let n = 1000;
        let mut meant = vec![0.0f64; n];
        let mut sent = vec![0.0f64; n];
        let mut bytes = Vec::new();
        let mut decoded = vec![0.0f32; n];
        for step in 0..50u64 {
            let delta: Vec<f32> = (0..n)
                .map(|i| (((i as u64 * 31 + step * 17) % 23) as f32 - 11.0) / 8.0)
                .collect();
            fb.encode(&codec, &delta, step, &mut bytes).unwrap();
            codec.decode(&bytes, &mut decoded).unwrap();
            for i in 0..n {
                meant[i] += f64::from(delta[i]);
                sent[i] += f64::from(decoded[i]);
            }
        }
        for i in 0..n {
            assert!(
                (sent[i] + f64::from(fb.residual()[i]) - meant[i]).abs() < 1e-3,
                "index {i}"
            );
        }
    }

    proptest! {
        #[test]
        fn round_trip_error_bounds(values in proptest::collection::vec(-1.0e4f32..1.0e4, 1..3000)) {
            let (exact, _) = round_trip(Codec::None, &values);
            prop_assert_eq!(&exact, &values);
            let (h, _) = round_trip(Codec::Fp16, &values);
            let (b, _) = round_trip(Codec::Bf16, &values);
            for ((v, h), b) in values.iter().zip(&h).zip(&b) {
                prop_assert!((v - h).abs() <= v.abs() * 2f32.powi(-11) + 6.0e-8, "fp16 {} -> {}", v, h);
                prop_assert!((v - b).abs() <= v.abs() * 2f32.powi(-8), "bf16 {} -> {}", v, b);
            }
            for stochastic in [false, true] {
                let (q, _) = round_trip(Codec::Int8 { stochastic }, &values);
                for (block, qb) in values.chunks(INT8_BLOCK).zip(q.chunks(INT8_BLOCK)) {
                    let scale = block.iter().fold(0.0f32, |m, v| m.max(v.abs())) / 127.0;
                    let bound = if stochastic { scale } else { scale / 2.0 } * 1.001 + 1e-6;
                    for (v, q) in block.iter().zip(qb) {
                        prop_assert!((v - q).abs() <= bound, "int8 {} -> {} (scale {})", v, q, scale);
                    }
                }
            }
            let (t, _) = round_trip(Codec::TopK { ratio: 0.1 }, &values);
            let kept = t.iter().filter(|v| **v != 0.0).count();
            prop_assert!(kept <= values.len().div_ceil(10));
            for (v, t) in values.iter().zip(&t) {
                prop_assert!(*t == 0.0 || t == v);
            }
        }
    }
}
