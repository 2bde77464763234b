//! Fuzzing the decoders of everything a peer can send: random bytes, and valid encodings with
//! bytes flipped, cut or added. Decoding must return a value or an error, never panic, and a
//! decoded vector must be finite and whole. The case count follows `PROPTEST_CASES` (256 by
//! default); at scale, in release: `PROPTEST_CASES=1000000 cargo test --release --test fuzz`.

use distkeras_plus_core::protocol::{self as p};
use distkeras_plus_core::Codec;
use proptest::prelude::*;

fn codecs() -> impl Strategy<Value = Codec> {
    prop_oneof![
        Just(Codec::None),
        Just(Codec::Fp16),
        Just(Codec::Bf16),
        Just(Codec::Int8 { stochastic: false }),
        (0.001f32..=1.0).prop_map(|ratio| Codec::TopK { ratio }),
    ]
}

/// What to do to a valid encoding.
#[derive(Debug, Clone)]
enum Damage {
    Flip(usize, u8),
    Cut(usize),
    Add(Vec<u8>),
}

fn damage() -> impl Strategy<Value = Vec<Damage>> {
    proptest::collection::vec(
        prop_oneof![
            (any::<usize>(), 1u8..=255).prop_map(|(i, x)| Damage::Flip(i, x)),
            any::<usize>().prop_map(Damage::Cut),
            proptest::collection::vec(any::<u8>(), 1..16).prop_map(Damage::Add),
        ],
        1..4,
    )
}

fn apply(bytes: &mut Vec<u8>, damage: &[Damage]) {
    for d in damage {
        match d {
            Damage::Flip(i, x) if !bytes.is_empty() => {
                let i = i % bytes.len();
                bytes[i] ^= x;
            }
            Damage::Cut(i) => bytes.truncate(i % (bytes.len() + 1)),
            Damage::Add(extra) => bytes.extend_from_slice(extra),
            Damage::Flip(..) => {}
        }
    }
}

fn check_decode(codec: Codec, bytes: &[u8], n: usize) -> Result<(), TestCaseError> {
    let mut out = vec![0.0f32; n];
    if codec.decode(bytes, &mut out).is_ok() {
        prop_assert!(
            out.iter().all(|v| v.is_finite()),
            "{codec:?} decoded a non-finite value"
        );
        prop_assert!(bytes.len() <= codec.max_encoded_len(n));
    }
    Ok(())
}

proptest! {
    #[test]
    fn frame_decoders_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
        let mut h = [0u8; p::HEADER_LEN];
        let n = bytes.len().min(p::HEADER_LEN);
        h[..n].copy_from_slice(&bytes[..n]);
        let _ = p::decode_header(&h, p::SMALL_FRAME);
        let _ = p::Hello::decode(&bytes);
        let _ = p::Welcome::decode(&bytes);
        let _ = p::decode_error(&bytes);
        let _ = p::decode_stats(&bytes);
        let mut c = [0u8; p::COMMIT_HEAD_LEN];
        let n = bytes.len().min(p::COMMIT_HEAD_LEN);
        c[..n].copy_from_slice(&bytes[..n]);
        let _ = p::decode_commit_head(&c);
        let mut r = [0u8; p::COMMITTED_HEAD_LEN];
        let n = bytes.len().min(p::COMMITTED_HEAD_LEN);
        r[..n].copy_from_slice(&bytes[..n]);
        let _ = p::decode_committed(&r);
        let mut k = [0u8; 8];
        let n = bytes.len().min(8);
        k[..n].copy_from_slice(&bytes[..n]);
        let _ = p::decode_codecs(&k);
    }

    #[test]
    fn codec_decoders_never_panic_on_random_bytes(
        codec in codecs(),
        n in 1usize..700,
        bytes in proptest::collection::vec(any::<u8>(), 0..3000),
    ) {
        check_decode(codec, &bytes, n)?;
    }

    #[test]
    fn codec_decoders_never_panic_on_damaged_encodings(
        codec in codecs(),
        values in proptest::collection::vec(-1e30f32..1e30, 1..700),
        seed in any::<u64>(),
        damage in damage(),
    ) {
        let mut bytes = Vec::new();
        codec.encode(&values, seed, &mut bytes);
        apply(&mut bytes, &damage);
        check_decode(codec, &bytes, values.len())?;
    }
}
