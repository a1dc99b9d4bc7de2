//! Property tests of the core: the exactness law, count conservation, optimality, and that no
//! input (adversarial floats, random bytes, random options) makes the core panic.

use proptest::prelude::*;
use qfcal_core::cost::loss;
use qfcal_core::spec::FIT_TOLERANCE_STORED;
use qfcal_core::{search, Dist, Histogram, Method, QuantSpec, SearchOptions, SpecOptions};

/// Any f32 bit pattern: NaN payloads, infinities, subnormals, -0.0, extremes.
fn any_f32() -> impl Strategy<Value = f32> {
    prop_oneof![
        4 => any::<u32>().prop_map(f32::from_bits),
        4 => -1e3f32..1e3f32,
        1 => Just(0.0f32),
        1 => Just(-0.0f32),
        1 => prop::sample::select(vec![f32::MIN_POSITIVE, -f32::MIN_POSITIVE, f32::from_bits(1), f32::MAX, f32::MIN, f32::NAN, f32::INFINITY, f32::NEG_INFINITY]),
    ]
}

fn hist_of(v: &[f32], bins: usize) -> Histogram {
    let mut h = Histogram::new(bins).unwrap();
    h.update(v, 1);
    h
}

/// Builds a histogram from `parts` merged along a random binary tree given by `shape`.
fn merge_tree(mut parts: Vec<Histogram>, shape: &[usize]) -> Histogram {
    let mut i = 0;
    while parts.len() > 1 {
        let a = shape[i % shape.len()] % parts.len();
        let x = parts.swap_remove(a);
        let b = shape[(i + 1) % shape.len()] % parts.len();
        parts[b].merge(&x).unwrap();
        i += 2;
    }
    parts.pop().unwrap()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 96, ..ProptestConfig::default() })]

    #[test]
    fn exact_under_any_batching_order_and_merge_tree(
        v in prop::collection::vec(any_f32(), 0..600),
        cuts in prop::collection::vec(any::<usize>(), 0..8),
        shape in prop::collection::vec(any::<usize>(), 1..16),
        bins in prop::sample::select(vec![16usize, 64, 4096]),
    ) {
        let whole = hist_of(&v, bins);
        let mut idx: Vec<usize> = cuts.iter().map(|c| if v.is_empty() { 0 } else { c % (v.len() + 1) }).collect();
        idx.push(0);
        idx.push(v.len());
        idx.sort_unstable();
        let parts: Vec<Histogram> = idx.windows(2).map(|w| hist_of(&v[w[0]..w[1]], bins)).collect();
        // sequential updates in reverse order
        let mut seq = Histogram::new(bins).unwrap();
        for w in idx.windows(2).rev() {
            seq.update(&v[w[0]..w[1]], 1);
        }
        prop_assert_eq!(&whole, &seq);
        prop_assert_eq!(&whole, &merge_tree(parts, &shape));
        // a permutation of the values
        let mut rev = v.clone();
        rev.reverse();
        prop_assert_eq!(&whole, &hist_of(&rev, bins));
        prop_assert_eq!(whole.to_bytes(), seq.to_bytes());
        prop_assert_eq!(Histogram::from_bytes(&whole.to_bytes()).unwrap(), whole);
    }

    #[test]
    fn counts_are_conserved_and_bounded(v in prop::collection::vec(any_f32(), 0..2000), bins in 16usize..300) {
        let h = hist_of(&v, bins);
        let nan = v.iter().filter(|x| x.is_nan()).count() as u64;
        let pinf = v.iter().filter(|&&x| x == f32::INFINITY).count() as u64;
        let ninf = v.iter().filter(|&&x| x == f32::NEG_INFINITY).count() as u64;
        let zeros = v.iter().filter(|&&x| x == 0.0).count() as u64;
        prop_assert_eq!((h.nan(), h.pos_inf(), h.neg_inf(), h.zeros()), (nan, pinf, ninf, zeros));
        prop_assert_eq!(h.total(), v.len() as u64);
        let (g0, c) = h.occupied();
        prop_assert_eq!(c.iter().sum::<u64>(), h.nonzero());
        prop_assert!(c.len() <= bins);
        // every nonzero finite value lies in its bin
        if let Some(w) = h.bin_width() {
            for &x in v.iter().filter(|x| x.is_finite() && **x != 0.0) {
                let g = (x as f64 / w).floor() as i64;
                prop_assert!(g >= g0 && g < g0 + c.len() as i64);
                prop_assert!(c[(g - g0) as usize] > 0);
            }
            // the span covers at least half the bins when it holds two distinct values
            let distinct = v.iter().filter(|x| x.is_finite() && **x != 0.0).any(|&x| Some(x as f64) != h.min().filter(|_| h.zeros() == 0).or(Some(x as f64)));
            let mn = v.iter().filter(|x| x.is_finite() && **x != 0.0).fold(f32::INFINITY, |a, &b| a.min(b));
            let mx = v.iter().filter(|x| x.is_finite() && **x != 0.0).fold(f32::NEG_INFINITY, |a, &b| a.max(b));
            if mn < mx {
                prop_assert!(c.len() >= bins / 2, "span {} bins of {}", c.len(), bins);
            }
            let _ = distinct;
        }
    }

    #[test]
    fn threads_do_not_change_the_result(seed in any::<u64>(), n in 0usize..700_000) {
        let mut s = seed;
        let v: Vec<f32> = (0..n).map(|_| { s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407); ((s >> 40) as f32 - 8e6) * 1e-3 }).collect();
        let mut a = Histogram::new(4096).unwrap();
        a.update(&v, 1);
        let mut b = Histogram::new(4096).unwrap();
        b.update(&v, 3);
        prop_assert_eq!(&a, &b);
        // workers seeded with a warm histogram's window, on data beyond and within it
        let cut = n / 3;
        let mut c = Histogram::new(4096).unwrap();
        c.update(&v[..cut], 1);
        c.update(&v[cut..], 2);
        prop_assert_eq!(&a, &c);
        let mut sorted = v.clone();
        sorted.sort_by(|x, y| x.total_cmp(y));
        let mut d = Histogram::new(4096).unwrap();
        d.update(&sorted[..cut], 2);
        d.update(&sorted[cut..], 2);
        prop_assert_eq!(&a, &d);
    }

    #[test]
    fn bytes_never_panic(data in prop::collection::vec(any::<u8>(), 0..300), flip in any::<usize>()) {
        let _ = Histogram::from_bytes(&data);
        let mut h = Histogram::new(32).unwrap();
        h.update(&[1.0f32, -2.0, 3.5], 1);
        let mut b = h.to_bytes();
        let i = flip % b.len();
        b[i] ^= 0x40;
        prop_assert!(Histogram::from_bytes(&b).is_err());
    }
}

/// A random small density on few bins, sometimes with point masses at either end (as a
/// histogram's exact extremes give).
fn small_dist() -> impl Strategy<Value = Dist> {
    (
        prop::collection::vec(0u32..50, 2..24),
        -5.0f64..2.0,
        0.05f64..2.0,
        0u32..30,
        (0u32..3, 0u32..40, 0u32..40),
    )
        .prop_map(|(c, lo, w, z, (ends, at_lo, at_hi))| {
            let edges: Vec<f64> = (0..=c.len()).map(|i| lo + i as f64 * w).collect();
            let (first, last) = (edges[0], edges[c.len()]);
            let mut counts: Vec<f64> = c.iter().map(|&x| x as f64).collect();
            counts[0] += 1.0;
            let d = Dist::new(counts, edges, z as f64).unwrap();
            let mut atoms = Vec::new();
            if ends >= 1 && at_lo > 0 && first != 0.0 {
                atoms.push((first, at_lo as f64));
            }
            if ends >= 2 && at_hi > 0 && last != 0.0 {
                atoms.push((last, at_hi as f64));
            }
            d.with_atoms(atoms).unwrap()
        })
}

fn options() -> impl Strategy<Value = SpecOptions> {
    (2u32..6, any::<bool>(), any::<bool>(), any::<bool>()).prop_map(
        |(bits, signed, symmetric, narrow_range)| SpecOptions {
            bits,
            signed,
            symmetric,
            narrow_range,
            qmin: None,
            qmax: None,
        },
    )
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn optimal_beats_every_method_and_a_dense_grid(d in small_dist(), spec in options(), gamma in prop::sample::select(vec![0.5, 1.0, 3.0])) {
        let o = |m| SearchOptions { spec, gamma, method: m, percentile: 99.0 };
        let best = search(&d, &o(Method::Optimal)).unwrap();
        for m in Method::ALL {
            let r = search(&d, &o(m)).unwrap();
            prop_assert!(best.objective() <= r.objective() * (1.0 + 1e-9), "{} beat optimal: {} < {}", m, r.objective(), best.objective());
            let e = r.encoding;
            prop_assert!(e.qmin <= e.zero_point && e.zero_point <= e.qmax);
            prop_assert!(e.min() <= 0.0 && e.max() >= 0.0);
            prop_assert_eq!(e.scale as f32 as f64, e.scale);
            let q = QuantSpec::new(&spec).unwrap();
            prop_assert!(q.tf_stable(e.scale, e.lowest_index()), "{} scale {} not reproduced by TensorFlow", m, e.scale);
            // no window reaches more than half a step beyond the data
            let (fa, fb) = q.fitting_windows_within(e.scale, d.min(), d.max(), FIT_TOLERANCE_STORED);
            prop_assert!((fa..=fb).contains(&e.lowest_index()), "{} range [{}, {}] reaches beyond the data [{}, {}] by more than half a step {}", m, e.min(), e.max(), d.min(), d.max(), e.scale);
        }
        // dense brute force over scales and every zero point whose window fits the data
        let q = QuantSpec::new(&spec).unwrap();
        let top = 2.0 * d.max_abs();
        let mut brute = f64::INFINITY;
        for i in 1..=1500 {
            let delta = top * (i as f64 / 1500.0).powi(2);
            let (fa, fb) = q.fitting_windows(delta, d.min(), d.max());
            for l in fa..=fb {
                brute = brute.min(loss(&d, &q.encoding(delta, l)).weighted(gamma));
            }
        }
        prop_assert!(best.objective() <= brute * (1.0 + 1e-6), "optimal {} > brute force {}", best.objective(), brute);
    }

    #[test]
    fn search_never_panics(
        counts in prop::collection::vec(prop_oneof![Just(0.0), 0.0f64..1e9, Just(1e300)], 0..40),
        lo in prop_oneof![-1e30f64..1e30, Just(-1e-300), Just(0.0)],
        w in prop_oneof![1e-300f64..1e-290, 1e-6f64..1e6],
        zeros in 0.0f64..100.0,
        bits in 0u32..20,
        qmin in prop::option::of(-70000i64..70000),
        qmax in prop::option::of(-70000i64..70000),
        gamma in prop_oneof![Just(f64::NAN), Just(0.0), Just(-1.0), 0.01f64..10.0],
        m in prop::sample::select(Method::ALL.to_vec()),
    ) {
        let edges = (0..=counts.len()).map(|i| lo + i as f64 * w).collect();
        if let Ok(d) = Dist::new(counts, edges, zeros) {
            let spec = SpecOptions { bits, qmin, qmax, ..SpecOptions::default() };
            if let Ok(r) = search(&d, &SearchOptions { spec, gamma, method: m, percentile: 99.9 }) {
                prop_assert!(r.encoding.scale > 0.0);
            }
        }
    }
}

#[test]
fn more_bits_never_raise_the_loss() {
    let counts: Vec<f64> = (0..300)
        .map(|i| ((i as f64 - 80.0).abs() + 1.0).recip() * 1e4)
        .collect();
    let edges: Vec<f64> = (0..=300).map(|i| i as f64 * 0.01 - 0.8).collect();
    let d = Dist::new(counts, edges, 500.0).unwrap();
    let mut prev = f64::INFINITY;
    for bits in 2..=12 {
        let o = SearchOptions {
            spec: SpecOptions {
                bits,
                ..SpecOptions::default()
            },
            ..SearchOptions::default()
        };
        let r = search(&d, &o).unwrap();
        assert!(
            r.objective() <= prev,
            "bits {bits}: {} > {prev}",
            r.objective()
        );
        prev = r.objective();
    }
}

#[test]
fn empty_histograms_are_an_error() {
    let h = Histogram::new(64).unwrap();
    let e = search(&h.to_dist().unwrap(), &SearchOptions::default()).unwrap_err();
    assert!(matches!(e, qfcal_core::Error::Empty(_)));
    let mut h = Histogram::new(64).unwrap();
    h.update(&[f32::NAN, f32::INFINITY], 1);
    assert!(search(&h.to_dist().unwrap(), &SearchOptions::default()).is_err());
}

#[test]
fn only_zeros_give_a_zero_loss() {
    let mut h = Histogram::new(64).unwrap();
    h.update(&[0.0f32; 10], 1);
    let r = search(&h.to_dist().unwrap(), &SearchOptions::default()).unwrap();
    assert_eq!(r.objective(), 0.0);
    assert_eq!(r.encoding.scale, 1.0);
}
