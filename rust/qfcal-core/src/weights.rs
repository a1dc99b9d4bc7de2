//! `channel_scales`: the scale of each channel of a weight tensor, from its exact values.
//!
//! Weights are known exactly and a channel holds few of them (9 in a 3x3 depthwise filter, a
//! few hundred in a pointwise one), so no histogram stands in for them: the cost of a scale is
//! the exact sum of squared errors of quantize-then-dequantize over the values themselves,
//! computed as the runtimes compute it (the value divided by the float32 scale in float32,
//! rounded half to even, clamped to the grid).
//!
//! The grid is symmetric (the zero point fixed, 0 on signed grids), as every runtime wants
//! weight channels, so the scale is the only unknown. Scales are scored up to the largest at
//! which the grid's symmetric part reaches at most half a step past the channel's largest
//! magnitude ([`fit_scale`]; beyond it a level serves no value). The cost is rough (a few
//! values snap to or off grid points), so the search scans [`SCAN`] geometric steps per octave
//! from that limit down (until the clipping alone costs more than the best seen, or a sixteenth
//! of the fitting scale), scans between the neighbours of the best
//! [`REFINED`] local minima [`FINE`] times finer and refines the best point of each by
//! golden-section search, and keeps the least cost seen.
//! The fitting scale (min/max's, the extremes on the grid's ends) is scored first, and ties keep it;
//! the frameworks' own `max|w| / 127` is scored too, so the result is never worse than either.

use crate::error::{invalid, Result};
use crate::histogram::parallel::{map_on_threads, parts_for};
use crate::spec::QuantSpec;

/// Geometric scan steps per octave of the scale, from the limit down to `1/SPAN` of the fitting
/// scale at most: the scan stops where the clipping alone costs more than the best seen, since
/// every smaller scale clips more.
pub const SCAN: f64 = 256.0;
const SPAN: f64 = 16.0;
/// Local minima of the scan refined.
const REFINED: usize = 4;
/// Steps of the finer scan between a refined minimum's neighbours.
const FINE: usize = 32;
/// Golden-section steps per refined minimum (the bracket shrinks to 1e-5 of its width).
const GOLDEN_STEPS: usize = 24;

/// One channel's scale and what it costs.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ChannelScale {
    /// The chosen scale (a float32 value); 0 for a channel of zeros.
    pub scale: f64,
    /// Its mean squared error over the channel's values.
    pub mse: f64,
    /// Min/max's scale: the extremes on the grid's ends (the nearest float32).
    pub fit_scale: f64,
    /// Its mean squared error.
    pub fit_mse: f64,
    /// Mean square of the values (for the SQNR).
    pub power: f64,
}

/// Integer offsets of the grid's ends from its (fixed) zero point: `(lo, hi)`, `lo <= 0 <= hi`.
fn offsets(spec: &QuantSpec) -> (f32, f32) {
    let z = spec.symmetric_zero_point();
    ((spec.qmin - z) as f32, (spec.qmax - z) as f32)
}

/// Sum of squared errors of `values` quantized with float32 scale `s` on offsets `(lo, hi)`.
fn sse(values: &[f32], s: f32, lo: f32, hi: f32) -> f64 {
    sse_parts(values, s, lo, hi).0
}

/// The sum of squared errors and its part from values beyond the grid's ends (clipped).
fn sse_parts(values: &[f32], s: f32, lo: f32, hi: f32) -> (f64, f64) {
    let sd = s as f64;
    let (lo_x, hi_x) = (lo as f64 * sd, hi as f64 * sd);
    values.iter().fold((0.0, 0.0), |(all, clip), &x| {
        let q = (x / s).round_ties_even().clamp(lo, hi);
        let e = x as f64 - q as f64 * sd;
        let beyond = (x as f64 - hi_x).max(lo_x - x as f64).max(0.0);
        (all + e * e, clip + beyond * beyond)
    })
}

/// The scale at which the channel's extremes fall on the grid's ends (min/max's, as the nearest
/// float32, 0 for all zeros), and the largest at which the grid's symmetric part (`±min(-lo, hi)` levels) reaches
/// at most half a step past the channel's largest magnitude. The grid's extra level of an
/// even-sized grid (int8's -128) may lie beyond that: it is where the type puts it, and the
/// frameworks' own symmetric weight scale (`max|w| / 127`) lies within the limit.
pub fn fit_scale(values: &[f32], spec: &QuantSpec) -> (f64, f64) {
    let (lo, hi) = offsets(spec);
    let (mn, mx) = values
        .iter()
        .fold((0.0f32, 0.0f32), |(a, b), &x| (a.min(x), b.max(x)));
    let mut s = 0.0f64;
    if mx > 0.0 && hi > 0.0 {
        s = s.max(mx as f64 / hi as f64);
    }
    if mn < 0.0 && lo < 0.0 {
        s = s.max(mn as f64 / lo as f64);
    }
    let m = (mx as f64).max(-(mn as f64));
    let e = (-(lo as f64)).min(hi as f64).max(1.0);
    let limit = m / (e - 0.5);
    // the fitting scale as the nearest float32 (as the frameworks store max|w| / 127: the ends
    // then round onto the grid's ends); the limit rounded down
    // (a channel of values too small for a normal float32 scale gets the least normal one:
    // its values then round to 0, and its error is theirs)
    let s32 = if s > 0.0 {
        (s as f32).max(f32::MIN_POSITIVE)
    } else {
        0.0
    };
    let mut l32 = limit as f32;
    if (l32 as f64) > limit {
        l32 = f32::from_bits(l32.to_bits() - 1);
    }
    (s32 as f64, (l32 as f64).max(s32 as f64))
}

/// The frameworks' symmetric weight scale, `max|w| / min(-lo, hi)`, as the nearest float32.
fn symmetric_scale(values: &[f32], spec: &QuantSpec) -> f64 {
    let (lo, hi) = offsets(spec);
    let m = values.iter().fold(0.0f64, |a, &x| a.max((x as f64).abs()));
    (m / (-(lo as f64)).min(hi as f64).max(1.0)) as f32 as f64
}

/// The least-cost scale of one channel (see the module documentation). `values` must be finite.
/// Without `widen`, scales stop at the fitting scale (for flows that derive the scale from the
/// weights themselves, where clipping can only narrow it).
pub fn channel_scale(values: &[f32], spec: &QuantSpec, widen: bool) -> ChannelScale {
    let n = values.len().max(1) as f64;
    let power = values.iter().map(|&x| (x as f64) * (x as f64)).sum::<f64>() / n;
    let (s0, limit) = fit_scale(values, spec);
    let limit = if widen { limit } else { s0 };
    if s0 == 0.0 {
        return ChannelScale {
            scale: 0.0,
            mse: 0.0,
            fit_scale: 0.0,
            fit_mse: 0.0,
            power,
        };
    }
    let (lo, hi) = offsets(spec);
    let cost = |s: f64| -> (f64, f64) {
        let s32 = (s as f32).max(f32::MIN_POSITIVE);
        (s32 as f64, sse(values, s32, lo, hi))
    };
    let fit = cost(s0);
    let mut best = fit;
    let own = cost(symmetric_scale(values, spec).min(limit));
    if own.1 < best.1 {
        best = own;
    }
    let ratio = std::f64::consts::LN_2 / SCAN;
    let steps = ((SPAN * limit / s0).ln() / ratio).ceil() as usize;
    let mut scan: Vec<(f64, f64)> = Vec::with_capacity(steps + 1);
    for k in 0..=steps {
        let s32 = ((limit * (-(k as f64) * ratio).exp()) as f32).max(f32::MIN_POSITIVE);
        let (all, clip) = sse_parts(values, s32, lo, hi);
        scan.push((s32 as f64, all));
        if all < best.1 {
            best = (s32 as f64, all);
        }
        if clip > best.1 {
            break;
        }
    }
    // local minima of the scan, least first
    let mut minima: Vec<usize> = (0..scan.len())
        .filter(|&k| {
            (k == 0 || scan[k].1 <= scan[k - 1].1)
                && (k + 1 == scan.len() || scan[k].1 <= scan[k + 1].1)
        })
        .collect();
    minima.sort_by(|&a, &b| scan[a].1.total_cmp(&scan[b].1));
    for &k in minima.iter().take(REFINED) {
        // a finer scan between the neighbours, then golden-section around its best
        let a = scan[(k + 1).min(scan.len() - 1)].0;
        let b = scan[k.saturating_sub(1)].0.min(limit);
        let step = (b - a) / FINE as f64;
        let fine = (0..=FINE)
            .map(|i| cost(a + i as f64 * step))
            .min_by(|x, y| x.1.total_cmp(&y.1))
            .expect("FINE > 0");
        let c = golden((fine.0 - step).max(a), (fine.0 + step).min(b), &cost);
        for c in [fine, c] {
            if c.1 < best.1 {
                best = c;
            }
        }
    }
    ChannelScale {
        scale: best.0,
        mse: best.1 / n,
        fit_scale: fit.0,
        fit_mse: fit.1 / n,
        power,
    }
}

/// The least cost golden-section search finds in `[a, b]` (a local minimum of a rough cost:
/// every point it evaluates is a candidate).
fn golden(mut a: f64, mut b: f64, cost: &impl Fn(f64) -> (f64, f64)) -> (f64, f64) {
    let g = (5f64.sqrt() - 1.0) / 2.0;
    let mut c = b - g * (b - a);
    let mut d = a + g * (b - a);
    let (mut fc, mut fd) = (cost(c), cost(d));
    let mut best = if fc.1 <= fd.1 { fc } else { fd };
    for _ in 0..GOLDEN_STEPS {
        if fc.1 <= fd.1 {
            b = d;
            d = c;
            fd = fc;
            c = b - g * (b - a);
            fc = cost(c);
            if fc.1 < best.1 {
                best = fc;
            }
        } else {
            a = c;
            c = d;
            fc = fd;
            d = a + g * (b - a);
            fd = cost(d);
            if fd.1 < best.1 {
                best = fd;
            }
        }
    }
    best
}

/// [`channel_scale`] of each of `channels` equal runs of `values` (channel-major), split over
/// up to `threads` threads (0: every core). Rejects non-finite values and a length that is not
/// a multiple of `channels`; `spec` must be symmetric.
pub fn channel_scales(
    values: &[f32],
    channels: usize,
    spec: &QuantSpec,
    widen: bool,
    threads: usize,
) -> Result<Vec<ChannelScale>> {
    if !spec.symmetric {
        return Err(invalid(
            "weight channels are searched on symmetric grids (the zero point fixed), got an \
             asymmetric one"
                .to_string(),
        ));
    }
    if channels == 0 || !values.len().is_multiple_of(channels) {
        return Err(invalid(format!(
            "{} values do not split into {channels} channels of equal length",
            values.len()
        )));
    }
    if let Some(i) = values.iter().position(|x| !x.is_finite()) {
        return Err(invalid(format!(
            "weights must be finite, value {i} (channel {}) is {}",
            i / (values.len() / channels).max(1),
            values[i]
        )));
    }
    let per = values.len() / channels;
    if per == 0 {
        return Ok(vec![channel_scale(&[], spec, widen); channels]);
    }
    let parts = parts_for(values.len(), threads).min(channels);
    let rows: Vec<&[f32]> = values.chunks(per).collect();
    if parts == 1 {
        return Ok(rows.iter().map(|r| channel_scale(r, spec, widen)).collect());
    }
    let chunk = channels.div_ceil(parts);
    let out = map_on_threads(rows.chunks(chunk), |part| {
        part.iter()
            .map(|r| channel_scale(r, spec, widen))
            .collect::<Vec<_>>()
    })
    .into_iter()
    .flatten()
    .collect();
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::SpecOptions;

    fn spec(bits: u32, narrow: bool) -> QuantSpec {
        QuantSpec::new(&SpecOptions {
            bits,
            signed: true,
            symmetric: true,
            narrow_range: narrow,
            qmin: None,
            qmax: None,
        })
        .unwrap()
    }

    fn lcg(n: usize, seed: u64) -> Vec<f32> {
        let mut s = seed;
        (0..n)
            .map(|_| {
                s = s
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                // sum of uniforms: a bell with tails
                let u: f64 = (0..4)
                    .map(|j| ((s >> (16 + 8 * j)) & 0xff) as f64 / 255.0)
                    .sum();
                (u - 2.0) as f32
            })
            .collect()
    }

    #[test]
    fn never_worse_than_min_max_and_no_wider() {
        for (seed, n) in [(1, 9), (2, 27), (3, 384), (4, 5000)] {
            for (bits, narrow) in [(8, true), (8, false), (4, true), (2, false)] {
                let v = lcg(n, seed);
                let sp = spec(bits, narrow);
                let c = channel_scale(&v, &sp, true);
                let narrow = channel_scale(&v, &sp, false);
                assert!(narrow.scale <= narrow.fit_scale && narrow.mse <= narrow.fit_mse);
                assert!(c.mse <= narrow.mse);
                assert!(c.mse <= c.fit_mse, "{c:?}");
                let (fit, limit) = fit_scale(&v, &sp);
                assert_eq!(fit, c.fit_scale);
                assert!(c.scale <= limit && c.scale > 0.0);
                // the limit: the symmetric part at most half a step past the largest magnitude
                let (lo, hi) = offsets(&sp);
                let m = v.iter().fold(0.0f64, |a, &x| a.max((x as f64).abs()));
                let e = (-lo).min(hi) as f64;
                assert!(e * limit <= m + 0.5 * limit * (1.0 + 1e-6));
                assert!(c.mse <= sse(&v, symmetric_scale(&v, &sp) as f32, lo, hi) / n as f64);
                let (mx, mn) = v
                    .iter()
                    .fold((0.0f32, 0.0f32), |(a, b), &x| (a.max(x), b.min(x)));
                // every value rounds into the grid at the fitting scale
                assert!((hi as f64 + 0.5) * fit >= mx as f64);
                assert!((lo as f64 - 0.5) * fit <= mn as f64);
                assert_eq!(c.scale as f32 as f64, c.scale);
                assert_eq!(c.mse, sse(&v, c.scale as f32, lo, hi) / n as f64);
            }
        }
    }

    #[test]
    fn finds_a_dense_grid_optimum() {
        // a dense brute force over every scale step of 1e-4 of the fitting scale
        let v = lcg(300, 7);
        let sp = spec(4, true);
        let c = channel_scale(&v, &sp, true);
        let narrow = channel_scale(&v, &sp, false);
        assert!(narrow.scale <= narrow.fit_scale && narrow.mse <= narrow.fit_mse);
        assert!(c.mse <= narrow.mse);
        let (lo, hi) = offsets(&sp);
        let brute = (1..=10_000)
            .map(|i| sse(&v, (c.fit_scale * i as f64 / 10_000.0) as f32, lo, hi))
            .fold(f64::INFINITY, f64::min)
            / 300.0;
        assert!(c.mse <= brute * (1.0 + 1e-3), "{} vs {brute}", c.mse);
    }

    #[test]
    fn grid_data_is_exact_and_zeros_are_kept() {
        let v: Vec<f32> = (-127..=127).map(|i| i as f32 * 0.5).collect();
        let c = channel_scale(&v, &spec(8, true), true);
        assert_eq!((c.scale, c.mse), (0.5, 0.0));
        let tiny = channel_scale(&[1e-45, 0.0], &spec(8, true), true);
        assert_eq!(tiny.scale, f32::MIN_POSITIVE as f64);
        assert_eq!(tiny.mse, (1e-45f32 as f64).powi(2) / 2.0);
        let z = channel_scale(&[0.0; 5], &spec(8, true), true);
        assert_eq!((z.scale, z.mse, z.fit_scale), (0.0, 0.0, 0.0));
        // one-sided data: the fitting scale is set by the side that has values
        let p = channel_scale(&[0.0, 1.0, 2.0], &spec(8, false), true);
        assert_eq!(p.fit_scale, (2.0f64 / 127.0) as f32 as f64);
    }

    #[test]
    fn channels_split_and_errors() {
        let v = lcg(4 * 70_000, 3);
        let sp = spec(8, true);
        let one = channel_scales(&v, 4, &sp, true, 1).unwrap();
        let many = channel_scales(&v, 4, &sp, true, 4).unwrap();
        assert_eq!(one, many);
        assert!(channel_scales(&v, 3, &sp, true, 1).is_err());
        assert!(channel_scales(&[1.0, f32::NAN], 1, &sp, true, 1).is_err());
        let mut asym = sp;
        asym.symmetric = false;
        assert!(channel_scales(&v, 4, &asym, true, 1).is_err());
    }
}
