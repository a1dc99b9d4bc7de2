//! A bounded fuzz of the core, run by `cargo test --release` (and so by CI): adversarial f32 and
//! f64 values (NaN payloads, ±inf, subnormals, ±0, f32/f64 extremes, huge and tiny magnitudes,
//! clusters a few ulps wide) thrown at `Histogram::update` (serial, threaded and through a
//! `Feeder`), `merge`, `to_bytes`/`from_bytes` (also after mutations with a valid checksum) and
//! `search`, with random bins in 16..=2^20. No input may panic, and the invariants must hold:
//! every value counted once (u64), any batching and merge tree giving the same histogram,
//! `from_bytes(to_bytes(h)) == h`, and any search that succeeds giving a finite encoding with
//! `min <= 0 <= max`.
//!
//! Budget: the case counts below keep the whole file to about 15 s of one core in release
//! (`cargo test --release --test fuzz`); `PROPTEST_CASES=N` overrides every count for a longer
//! local run.

use proptest::prelude::*;
use proptest::sample::select;
use qfcal_core::histogram::{MAX_BINS, MIN_BINS};
use qfcal_core::{search, Error, Histogram, Method, SearchOptions, SpecOptions};

/// `cases` unless `PROPTEST_CASES` is set.
fn budget(cases: u32) -> ProptestConfig {
    let mut config = ProptestConfig::default();
    if std::env::var_os("PROPTEST_CASES").is_none() {
        config.cases = cases;
    }
    config.max_shrink_iters = 2_000;
    config
}

const F64_SPECIALS: [u64; 16] = [
    0x0000_0000_0000_0000, // 0
    0x8000_0000_0000_0000, // -0
    0x7ff0_0000_0000_0000, // inf
    0xfff0_0000_0000_0000, // -inf
    0x7ff8_0000_0000_0000, // quiet NaN
    0xfff8_0000_0000_0001, // negative NaN with a payload
    0x7ff0_0000_0000_0001, // signalling NaN
    0x7fff_ffff_ffff_ffff, // NaN, every payload bit
    0x0000_0000_0000_0001, // smallest subnormal
    0x8000_0000_0000_0001, // its negative
    0x000f_ffff_ffff_ffff, // largest subnormal
    0x0010_0000_0000_0000, // smallest normal
    0x7fef_ffff_ffff_ffff, // f64::MAX
    0xffef_ffff_ffff_ffff, // f64::MIN
    0x47ef_ffff_e000_0000, // f32::MAX
    0x36a0_0000_0000_0000, // f32's smallest subnormal
];

const F32_SPECIALS: [u32; 14] = [
    0x0000_0000, // 0
    0x8000_0000, // -0
    0x7f80_0000, // inf
    0xff80_0000, // -inf
    0x7fc0_0000, // quiet NaN
    0xffc0_0001, // negative NaN with a payload
    0x7f80_0001, // signalling NaN
    0x7fff_ffff, // NaN, every payload bit
    0x0000_0001, // smallest subnormal
    0x8000_0001, // its negative
    0x007f_ffff, // largest subnormal
    0x0080_0000, // smallest normal
    0x7f7f_ffff, // f32::MAX
    0xff7f_ffff, // f32::MIN
];

/// `±m · 2^e` for any exponent: huge and tiny magnitudes, normal and subnormal.
fn any_magnitude_f64() -> impl Strategy<Value = f64> {
    (any::<bool>(), -1074i32..=1023, 1.0f64..2.0).prop_map(|(neg, e, m)| {
        let x = m * 2f64.powi(e.max(-1022)) * if e < -1022 { 2f64.powi(e + 1022) } else { 1.0 };
        if neg {
            -x
        } else {
            x
        }
    })
}

/// Values a few ulps apart around a random value (one-bin and few-bin windows).
fn ulp_cluster_f64() -> impl Strategy<Value = f64> {
    (
        select(vec![1.0f64, -3.5, 1e-300, 6.0e20, 2.2e-308, 1.7e308]),
        0u64..6,
    )
        .prop_map(|(x, k)| f64::from_bits(x.to_bits() + k))
}

fn adversarial_f64() -> impl Strategy<Value = f64> {
    prop_oneof![
        3 => any::<u64>().prop_map(f64::from_bits),
        3 => select(F64_SPECIALS.to_vec()).prop_map(f64::from_bits),
        3 => any_magnitude_f64(),
        2 => ulp_cluster_f64(),
        3 => -1e3f64..1e3,
    ]
}

fn adversarial_f32() -> impl Strategy<Value = f32> {
    prop_oneof![
        3 => any::<u32>().prop_map(f32::from_bits),
        3 => select(F32_SPECIALS.to_vec()).prop_map(f32::from_bits),
        3 => any_magnitude_f64().prop_map(|x| x as f32),
        2 => (select(vec![1.0f32, -3.5, 1e-38, 3.0e38, 1e-45]), 0u32..6)
            .prop_map(|(x, k)| f32::from_bits(x.to_bits() + k)),
        3 => -1e3f32..1e3,
    ]
}

/// Mostly small and default bin counts; now and then the largest.
fn any_bins() -> impl Strategy<Value = usize> {
    prop_oneof![
        24 => MIN_BINS..=300,
        12 => select(vec![1000usize, 2048, 4096]),
        3 => 4097usize..=65_536,
        1 => Just(MAX_BINS),
    ]
}

fn any_options() -> impl Strategy<Value = SearchOptions> {
    (
        0u32..=18,
        any::<bool>(),
        any::<bool>(),
        any::<bool>(),
        prop::option::weighted(0.2, -70_000i64..70_000),
        prop::option::weighted(0.2, -70_000i64..70_000),
        prop_oneof![
            6 => 0.01f64..10.0,
            1 => select(vec![0.0, -1.0, f64::NAN, f64::INFINITY, 1e-300, 1e300]),
        ],
        select(Method::ALL.to_vec()),
        prop_oneof![4 => 0.001f64..=100.0, 1 => select(vec![0.0, 100.5, f64::NAN])],
    )
        .prop_map(
            |(bits, signed, symmetric, narrow_range, qmin, qmax, gamma, method, percentile)| {
                SearchOptions {
                    spec: SpecOptions {
                        bits,
                        signed,
                        symmetric,
                        narrow_range,
                        qmin,
                        qmax,
                    },
                    gamma,
                    method,
                    percentile,
                }
            },
        )
}

/// What every value of `v` should add to a histogram's counters.
struct Expected {
    total: u64,
    zeros: u64,
    nan: u64,
    pos_inf: u64,
    neg_inf: u64,
    nonzero: u64,
}

fn expected<T: Copy + Into<f64>>(v: &[T]) -> Expected {
    let v: Vec<f64> = v.iter().map(|&x| x.into()).collect();
    let count = |f: &dyn Fn(f64) -> bool| v.iter().filter(|&&x| f(x)).count() as u64;
    Expected {
        total: v.len() as u64,
        zeros: count(&|x| x == 0.0),
        nan: count(&|x| x.is_nan()),
        pos_inf: count(&|x| x == f64::INFINITY),
        neg_inf: count(&|x| x == f64::NEG_INFINITY),
        nonzero: count(&|x| x.is_finite() && x != 0.0),
    }
}

/// The histogram's invariants, whatever it was built from.
fn check_histogram(h: &Histogram, want: &Expected) -> Result<(), TestCaseError> {
    prop_assert_eq!(h.total(), want.total);
    prop_assert_eq!(
        (h.zeros(), h.nan(), h.pos_inf(), h.neg_inf(), h.nonzero()),
        (
            want.zeros,
            want.nan,
            want.pos_inf,
            want.neg_inf,
            want.nonzero
        )
    );
    let (_, counts) = h.occupied();
    prop_assert!(counts.len() <= h.bins());
    prop_assert_eq!(counts.iter().sum::<u64>(), h.nonzero());
    prop_assert_eq!(
        h.edges().len(),
        if counts.is_empty() {
            0
        } else {
            counts.len() + 1
        }
    );
    let (_, binned, _) = h.with_zeros_binned();
    prop_assert!(binned.len() <= h.bins() + 1);
    prop_assert_eq!(binned.iter().sum::<u64>(), h.finite());
    let bytes = h.to_bytes();
    let back = Histogram::from_bytes(&bytes);
    prop_assert!(back.is_ok(), "from_bytes(to_bytes(h)) failed: {:?}", back);
    let back = back.unwrap();
    prop_assert_eq!(&back, h);
    prop_assert_eq!(back.to_bytes(), bytes);
    Ok(())
}

/// A search either fails with an error or gives a finite encoding with `min <= 0 <= max`.
fn check_search(h: &Histogram, opts: &SearchOptions) -> Result<(), TestCaseError> {
    let dist = match h.to_dist() {
        Ok(d) => d,
        // only values within a bin of the float64 maximum have no finite upper edge
        Err(e) => {
            prop_assert!(
                h.max()
                    .unwrap_or(0.0)
                    .abs()
                    .max(h.min().unwrap_or(0.0).abs())
                    > 1e307
            );
            prop_assert!(matches!(e, Error::InvalidArgument(_)));
            return Ok(());
        }
    };
    match search(&dist, opts) {
        Ok(r) => {
            let e = r.encoding;
            prop_assert!(e.scale.is_finite() && e.scale > 0.0, "scale {}", e.scale);
            prop_assert!(e.qmin < e.qmax && (e.qmin..=e.qmax).contains(&e.zero_point));
            prop_assert!(e.min().is_finite() && e.max().is_finite());
            prop_assert!(
                e.min() <= 0.0 && 0.0 <= e.max(),
                "[{}, {}]",
                e.min(),
                e.max()
            );
            prop_assert!(r.loss.rounding >= 0.0 && r.loss.clipping >= 0.0);
            prop_assert!(r.objective().is_finite(), "loss {}", r.objective());
            prop_assert!(!r.sqnr_db.is_nan());
        }
        Err(Error::Empty(_)) => prop_assert_eq!(h.finite(), 0),
        Err(Error::InvalidArgument(_)) => {}
        Err(e) => prop_assert!(false, "unexpected error {:?}", e),
    }
    Ok(())
}

/// Splits `v` at `cuts` into consecutive pieces.
fn pieces<T>(v: &[T], cuts: &[usize]) -> Vec<std::ops::Range<usize>> {
    let mut idx: Vec<usize> = cuts.iter().map(|c| c % (v.len() + 1)).collect();
    idx.push(0);
    idx.push(v.len());
    idx.sort_unstable();
    idx.windows(2).map(|w| w[0]..w[1]).collect()
}

/// Builds the same histogram three ways (one update; piece by piece through a feeder, pieces in
/// reverse; one histogram per piece merged left to right) and checks they agree exactly.
fn build_three_ways<T: qfcal_core::histogram::Sample>(
    v: &[T],
    cuts: &[usize],
    bins: usize,
) -> Result<Histogram, TestCaseError> {
    let mut whole = Histogram::new(bins).unwrap();
    whole.update(v, 1);
    let parts = pieces(v, cuts);
    let mut fed = Histogram::new(bins).unwrap();
    {
        let mut feeder = fed.feeder::<T>();
        for r in parts.iter().rev() {
            if r.len() % 2 == 0 {
                feeder.extend_from_slice(&v[r.clone()]);
            } else {
                v[r.clone()].iter().for_each(|&x| feeder.push(x));
            }
        }
    }
    prop_assert_eq!(&fed, &whole);
    let mut merged = Histogram::new(bins).unwrap();
    for r in &parts {
        let mut p = Histogram::new(bins).unwrap();
        p.update(&v[r.clone()], 1);
        merged.merge(&p).unwrap();
    }
    prop_assert_eq!(&merged, &whole);
    Ok(whole)
}

proptest! {
    #![proptest_config(budget(768))]

    #[test]
    fn fuzz_f32_update_merge_bytes_search(
        v in prop::collection::vec(adversarial_f32(), 0..1500),
        cuts in prop::collection::vec(any::<usize>(), 0..6),
        bins in any_bins(),
        opts in any_options(),
    ) {
        let h = build_three_ways(&v, &cuts, bins)?;
        check_histogram(&h, &expected(&v))?;
        check_search(&h, &opts)?;
    }

    #[test]
    fn fuzz_f64_update_merge_bytes_search(
        v in prop::collection::vec(adversarial_f64(), 0..1500),
        cuts in prop::collection::vec(any::<usize>(), 0..6),
        bins in any_bins(),
        opts in any_options(),
    ) {
        let h = build_three_ways(&v, &cuts, bins)?;
        check_histogram(&h, &expected(&v))?;
        check_search(&h, &opts)?;
    }

    #[test]
    fn fuzz_merges_of_mixed_histograms(
        a in prop::collection::vec(adversarial_f32(), 0..400),
        b in prop::collection::vec(adversarial_f64(), 0..400),
        bins in any_bins(),
        other_bins in any_bins(),
    ) {
        let mut ha = Histogram::new(bins).unwrap();
        ha.update(&a, 1);
        let mut hb = Histogram::new(bins).unwrap();
        hb.update(&b, 1);
        // merging is commutative and exact: a + b == b + a == one histogram of both
        let mut ab = ha.clone();
        ab.merge(&hb).unwrap();
        let mut ba = hb.clone();
        ba.merge(&ha).unwrap();
        prop_assert_eq!(&ab, &ba);
        let mut both = Histogram::new(bins).unwrap();
        both.update(&a, 1);
        both.update(&b, 1);
        prop_assert_eq!(&ab, &both);
        let mut ea = expected(&a);
        let eb = expected(&b);
        ea.total += eb.total;
        ea.zeros += eb.zeros;
        ea.nan += eb.nan;
        ea.pos_inf += eb.pos_inf;
        ea.neg_inf += eb.neg_inf;
        ea.nonzero += eb.nonzero;
        check_histogram(&ab, &ea)?;
        // self-merge doubles every count
        let mut twice = ha.clone();
        twice.merge(&ha.clone()).unwrap();
        prop_assert_eq!(twice.total(), 2 * ha.total());
        // different bins: an error, and nothing changes
        if other_bins != bins {
            let before = ab.clone();
            let err = ab.merge(&Histogram::new(other_bins).unwrap());
            prop_assert!(matches!(err, Err(Error::Incompatible(_))));
            prop_assert_eq!(&ab, &before);
        }
    }

    #[test]
    fn fuzz_from_bytes_with_valid_checksums(
        v in prop::collection::vec(adversarial_f64(), 0..60),
        bins in prop_oneof![MIN_BINS..=64, Just(4096usize)],
        edits in prop::collection::vec((any::<usize>(), any::<u8>()), 1..4),
        cut in any::<usize>(),
    ) {
        let mut h = Histogram::new(bins).unwrap();
        h.update(&v, 1);
        let bytes = h.to_bytes();
        let mut body = bytes[..bytes.len() - 8].to_vec();
        for &(i, b) in &edits {
            // past the magic and version: the fields and counts
            let i = 12 + i % (body.len() - 12);
            body[i] = b;
        }
        let mutated = with_checksum(&body);
        if let Ok(back) = Histogram::from_bytes(&mutated) {
            // accepted only if canonical: its own bytes are the input
            prop_assert_eq!(back.to_bytes(), mutated);
        }
        let truncated = &bytes[..cut % bytes.len()];
        prop_assert!(Histogram::from_bytes(truncated).is_err());
        let short = with_checksum(&body[..cut % body.len()]);
        if let Ok(back) = Histogram::from_bytes(&short) {
            prop_assert_eq!(back.to_bytes(), short);
        }
        let mut future = bytes[..bytes.len() - 8].to_vec();
        future[8] = future[8].wrapping_add(1 + (cut % 250) as u8);
        let err = Histogram::from_bytes(&with_checksum(&future)).unwrap_err();
        prop_assert!(err.to_string().contains("format version"), "{}", err);
    }
}

proptest! {
    #![proptest_config(budget(8))]

    /// The threaded update (large arrays) agrees with the serial one on adversarial data.
    #[test]
    fn fuzz_threaded_update(
        seed in any::<u64>(),
        specials in prop::collection::vec((any::<usize>(), adversarial_f32()), 0..64),
        n in 200_000usize..600_000,
        bins in select(vec![16usize, 4096, MAX_BINS]),
    ) {
        let mut s = seed;
        let mut v: Vec<f32> = (0..n)
            .map(|_| {
                s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                ((s >> 40) as f32 - 8e6) * 1e-3
            })
            .collect();
        for &(i, x) in &specials {
            v[i % n] = x;
        }
        let mut serial = Histogram::new(bins).unwrap();
        serial.update(&v, 1);
        let mut threaded = Histogram::new(bins).unwrap();
        threaded.update(&v, 4);
        prop_assert_eq!(&serial, &threaded);
        check_histogram(&threaded, &expected(&v))?;
    }
}

fn with_checksum(body: &[u8]) -> Vec<u8> {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in body {
        h ^= b as u64;
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    let mut out = body.to_vec();
    out.extend_from_slice(&h.to_le_bytes());
    out
}
