//! The integer grid a quantizer maps to (`qmin..=qmax`) and the encodings on it.

use crate::error::{invalid, Result};

/// Most levels a grid may have (16 bits).
pub const MAX_LEVELS: i64 = 1 << 16;

/// How many float32 steps on each side of a scale [`QuantSpec::tf_scale`] tries for one that
/// TensorFlow reproduces (the farthest seen on 16-bit grids is about 16,000).
pub const TF_SEARCH_STEPS: u32 = 1 << 15;

/// How far past half a step a window the searches score may reach beyond the data, in steps:
/// none (the limit of a window's fit is itself a candidate, taken just inside).
pub const FIT_TOLERANCE: f64 = 0.0;
/// The same for the encoding a search returns, whose scale was then stored as a float32 value
/// TensorFlow reproduces (a few float32 steps from the one scored).
pub const FIT_TOLERANCE_STORED: f64 = 1e-3;

/// The integer range and zero-point rule of a quantizer.
///
/// Real values are represented as `(q - zero_point) * scale` for integer `q` in `qmin..=qmax`.
/// The level count is `qmax - qmin + 1`, exactly (narrow ranges have one level fewer).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QuantSpec {
    pub qmin: i64,
    pub qmax: i64,
    /// Symmetric: the zero point is fixed at `symmetric_zero_point()`.
    pub symmetric: bool,
}

/// The options a user gives, before they are turned into a [`QuantSpec`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SpecOptions {
    pub bits: u32,
    pub signed: bool,
    pub symmetric: bool,
    pub narrow_range: bool,
    pub qmin: Option<i64>,
    pub qmax: Option<i64>,
}

impl Default for SpecOptions {
    fn default() -> Self {
        SpecOptions {
            bits: 8,
            signed: true,
            symmetric: false,
            narrow_range: false,
            qmin: None,
            qmax: None,
        }
    }
}

impl QuantSpec {
    /// Builds and validates a spec. Explicit `qmin`/`qmax` override `bits`, `signed` and
    /// `narrow_range`; the one not given is taken from those.
    pub fn new(o: &SpecOptions) -> Result<QuantSpec> {
        if !(2..=16).contains(&o.bits) {
            return Err(invalid(format!("bits must be in 2..=16, got {}", o.bits)));
        }
        let levels = 1i64 << o.bits;
        let (mut lo, hi) = if o.signed {
            (-(levels / 2), levels / 2 - 1)
        } else {
            (0, levels - 1)
        };
        if o.narrow_range {
            lo += 1;
        }
        let qmin = o.qmin.unwrap_or(lo);
        let qmax = o.qmax.unwrap_or(hi);
        if qmin >= qmax {
            return Err(invalid(format!(
                "qmin must be less than qmax, got qmin={qmin}, qmax={qmax}"
            )));
        }
        if qmax - qmin + 1 > MAX_LEVELS {
            return Err(invalid(format!(
                "qmax - qmin + 1 must be at most {MAX_LEVELS} levels, got qmin={qmin}, qmax={qmax}"
            )));
        }
        if qmin.abs() > MAX_LEVELS || qmax.abs() > MAX_LEVELS {
            return Err(invalid(format!(
                "qmin and qmax must lie in -{MAX_LEVELS}..={MAX_LEVELS}, got qmin={qmin}, qmax={qmax}"
            )));
        }
        Ok(QuantSpec {
            qmin,
            qmax,
            symmetric: o.symmetric,
        })
    }

    /// Number of integer levels, `qmax - qmin + 1`.
    pub fn levels(&self) -> i64 {
        self.qmax - self.qmin + 1
    }

    /// The zero point of a symmetric grid: 0 for signed ranges, the middle for unsigned ones.
    pub fn symmetric_zero_point(&self) -> i64 {
        (self.qmin + self.qmax + 1).div_euclid(2)
    }

    /// The allowed values of `L = qmin - zero_point`, the grid index of the lowest level.
    /// The window of grid indices is `L..=L + levels - 1` and always contains 0.
    pub fn lowest_index_range(&self) -> (i64, i64) {
        if self.symmetric {
            let l = self.qmin - self.symmetric_zero_point();
            (l, l)
        } else {
            (self.qmin - self.qmax, 0)
        }
    }

    /// The encoding whose lowest level has grid index `lowest_index` (see
    /// [`QuantSpec::lowest_index_range`]).
    pub fn encoding(&self, scale: f64, lowest_index: i64) -> Encoding {
        Encoding {
            scale,
            zero_point: self.qmin - lowest_index,
            qmin: self.qmin,
            qmax: self.qmax,
        }
    }

    /// The smallest-scale encoding whose range covers `[a, b]` (with `a <= 0 <= b` after
    /// widening to include zero). The scale is rounded up to a float32 value, so it is stored
    /// exactly by TFLite, ONNX and PyTorch.
    pub fn covering(&self, a: f64, b: f64) -> Encoding {
        let a = a.min(0.0);
        let b = b.max(0.0);
        let (l0, l1) = self.lowest_index_range();
        let h = self.levels() - 1;
        // Per window: the scale covering what it can reach, and the magnitude it must leave out
        // (a side it has no level on, as on a two-level grid); least left out, then least scale.
        let mut best = (f64::INFINITY, f64::INFINITY, l0);
        for l in l0..=l1 {
            let (mut scale, mut out) = (0.0f64, 0.0f64);
            if a < 0.0 {
                if l < 0 {
                    scale = scale.max(a / l as f64);
                } else {
                    out = out.max(-a);
                }
            }
            if b > 0.0 {
                if l + h > 0 {
                    scale = scale.max(b / (l + h) as f64);
                } else {
                    out = out.max(b);
                }
            }
            if (out, scale) < (best.0, best.1) {
                best = (out, scale, l);
            }
        }
        let (_, mut scale, mut l) = best;
        if scale.is_nan() || scale <= 0.0 || !scale.is_finite() {
            // Only zeros (or nothing) to cover: any scale is exact; pick 1 and the window's middle.
            scale = 1.0;
            l = if self.symmetric { l0 } else { (l0 + l1) / 2 };
        }
        // Rounding the scale up keeps the window covering [a, b].
        self.encoding(self.tf_scale(scale, l, true), l)
    }

    /// The encoding of the range `[a, b]` (widened to include zero) as min/max quantizers
    /// place it: on an asymmetric grid TensorFlow's and ONNX Runtime's rule, the scale
    /// `(b - a) / steps` and the zero point rounded to an integer, so that each end lies within
    /// half a step of `a` and `b` (the window shifts by less than half a step, where covering
    /// both ends exactly can need a whole step more on one side); on a symmetric grid the
    /// covering encoding ([`QuantSpec::covering`]), whose larger side ends at `max(|a|, |b|)`.
    /// The scale is a float32 value TensorFlow reproduces.
    pub fn fitting(&self, a: f64, b: f64) -> Encoding {
        let (a, b) = (a.min(0.0), b.max(0.0));
        if self.symmetric || b <= a || b.is_nan() || a.is_nan() {
            return self.covering(a, b);
        }
        let (l0, l1) = self.lowest_index_range();
        let h = self.levels() - 1;
        let scale = (b - a) / h as f64;
        let l = ((a / scale).round() as i64).clamp(l0, l1);
        self.encoding(self.tf_scale(scale, l, false), l)
    }

    /// The lowest indices `L` (see [`QuantSpec::lowest_index_range`]) whose window at scale
    /// `delta` reaches at most half a step beyond the data `[lo, hi]` (widened to include zero;
    /// on a symmetric grid: whose smaller side reaches at most half a step beyond `max|x|`),
    /// as an inclusive range, empty when no window fits (`delta` too large).
    pub fn fitting_windows(&self, delta: f64, lo: f64, hi: f64) -> (i64, i64) {
        self.fitting_windows_within(delta, lo, hi, FIT_TOLERANCE)
    }

    /// [`QuantSpec::fitting_windows`] with `tolerance` steps more than half a step of room.
    pub fn fitting_windows_within(
        &self,
        delta: f64,
        lo: f64,
        hi: f64,
        tolerance: f64,
    ) -> (i64, i64) {
        let (lo, hi) = (lo.min(0.0), hi.max(0.0));
        let (l0, l1) = self.lowest_index_range();
        let h = self.levels() - 1;
        let slack = 0.5 + tolerance;
        if self.symmetric {
            let reach = (-l0).min(l0 + h) as f64;
            let fits = reach <= lo.abs().max(hi) / delta + slack;
            return if fits { (l0, l1) } else { (l0, l0 - 1) };
        }
        let first = (lo / delta - slack).ceil();
        let last = (hi / delta + slack).floor() - h as f64;
        let first = first.clamp(l0 as f64, l1 as f64 + 1.0) as i64;
        let last = last.clamp(l0 as f64 - 1.0, l1 as f64) as i64;
        (first.max(l0), last.min(l1))
    }

    /// The largest scale at which the window `l` reaches at most half a step beyond the data
    /// `[lo, hi]` (see [`QuantSpec::fitting_windows`]); infinite when every scale fits.
    pub fn fit_limit(&self, l: i64, lo: f64, hi: f64) -> f64 {
        let (lo, hi) = (lo.min(0.0), hi.max(0.0));
        let h = self.levels() - 1;
        let mut limit = f64::INFINITY;
        if self.symmetric {
            let reach = (-l).min(l + h) as f64 - 0.5;
            if reach > 0.0 {
                limit = lo.abs().max(hi) / reach;
            }
            return limit;
        }
        if (l as f64) + 0.5 < 0.0 {
            limit = limit.min(lo / (l as f64 + 0.5));
        }
        if ((l + h) as f64) - 0.5 > 0.0 {
            limit = limit.min(hi / ((l + h) as f64 - 0.5));
        }
        limit
    }

    /// Whether TensorFlow, given `min` and `max` of the encoding `(scale, l)` as the float32
    /// attributes they become, recomputes exactly this float32 scale (and hence this zero point
    /// and these min/max) on both of its paths: the FakeQuant kernel's,
    /// `(f32(max) - f32(min)) / (qmax - qmin)` in float32, and the TFLite converter's, the same
    /// in double rounded once to float32. The two differ by an ulp for about one scale in ten.
    pub fn tf_stable(&self, scale: f64, l: i64) -> bool {
        let steps = (self.qmax - self.qmin) as f32;
        let s = scale as f32;
        let (min, max) = (
            (l as f64 * scale) as f32,
            ((l + self.qmax - self.qmin) as f64 * scale) as f32,
        );
        let converter = ((max as f64 - min as f64) / steps as f64) as f32;
        s as f64 == scale && (max - min) / steps == s && converter == s
    }

    /// The float32 scale nearest to `x` (at least `x` with `up`) that TensorFlow reproduces for
    /// the window `l` (see [`QuantSpec::tf_stable`]). Usually zero or one float32 step away;
    /// windows with a level next to zero on many-level grids can be farther (129 steps for
    /// the window `l = -1` of a 512-level grid, up to ~16,000 on 16-bit grids: a few 1e-3 of
    /// the scale at most), so up to [`TF_SEARCH_STEPS`] steps on each side are tried before
    /// giving up (then `x` rounded to float32 is returned).
    pub fn tf_scale(&self, x: f64, l: i64, up: bool) -> f64 {
        let f = x as f32;
        let f = if up && (f as f64) < x {
            f32::from_bits(f.to_bits() + 1)
        } else {
            f
        };
        for k in 0..TF_SEARCH_STEPS {
            for sign in [1i64, -1] {
                if sign < 0 && (k == 0 || up) {
                    continue;
                }
                let bits = f.to_bits() as i64 + sign * k as i64;
                let c = f32::from_bits(bits as u32) as f64;
                if c > 0.0 && c.is_finite() && self.tf_stable(c, l) {
                    return c;
                }
            }
        }
        f as f64
    }
}

/// A point on the grid: `scale` (Δ) and `zero_point`, with the integer range it applies to.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Encoding {
    pub scale: f64,
    pub zero_point: i64,
    pub qmin: i64,
    pub qmax: i64,
}

impl Encoding {
    /// Grid index of the lowest level, `qmin - zero_point` (<= 0).
    pub fn lowest_index(&self) -> i64 {
        self.qmin - self.zero_point
    }
    /// Grid index of the highest level, `qmax - zero_point` (>= 0).
    pub fn highest_index(&self) -> i64 {
        self.qmax - self.zero_point
    }
    /// Smallest representable value, `(qmin - zero_point) * scale`.
    pub fn min(&self) -> f64 {
        self.lowest_index() as f64 * self.scale
    }
    /// Largest representable value, `(qmax - zero_point) * scale`.
    pub fn max(&self) -> f64 {
        self.highest_index() as f64 * self.scale
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(bits: u32, signed: bool, symmetric: bool, narrow: bool) -> QuantSpec {
        QuantSpec::new(&SpecOptions {
            bits,
            signed,
            symmetric,
            narrow_range: narrow,
            qmin: None,
            qmax: None,
        })
        .unwrap()
    }

    #[test]
    fn a_reproducible_scale_is_found_far_from_the_asked_one() {
        // 512 levels, one below zero: the nearest scale TensorFlow reproduces is 129 float32
        // steps from this one (found by the Python suite's hypothesis search)
        let s = spec(9, false, false, false);
        let x = 0.164_295_196_533_203_12_f64;
        assert!(!s.tf_stable(x, -1));
        let got = s.tf_scale(x, -1, false);
        assert!(s.tf_stable(got, -1), "{got}");
        assert!((got / x - 1.0).abs() < 2e-5, "{got}");
        let up = s.tf_scale(x, -1, true);
        assert!(s.tf_stable(up, -1) && up >= x, "{up}");
    }

    #[test]
    fn level_counts_follow_qmin_qmax() {
        let s = spec(8, true, false, false);
        assert_eq!((s.qmin, s.qmax, s.levels()), (-128, 127, 256));
        let s = spec(8, true, true, true);
        assert_eq!(
            (s.qmin, s.qmax, s.levels(), s.symmetric_zero_point()),
            (-127, 127, 255, 0)
        );
        let s = spec(8, false, true, false);
        assert_eq!((s.qmin, s.qmax, s.symmetric_zero_point()), (0, 255, 128));
        let s = spec(4, false, false, true);
        assert_eq!((s.qmin, s.qmax), (1, 15));
    }

    #[test]
    fn bad_specs_name_the_argument() {
        let e = QuantSpec::new(&SpecOptions {
            bits: 1,
            ..Default::default()
        })
        .unwrap_err();
        assert_eq!(e.to_string(), "bits must be in 2..=16, got 1");
        let e = QuantSpec::new(&SpecOptions {
            qmin: Some(5),
            qmax: Some(5),
            ..Default::default()
        })
        .unwrap_err();
        assert!(e.to_string().contains("qmin=5, qmax=5"));
    }

    #[test]
    fn covering_covers_and_is_tight() {
        let s = spec(8, true, false, false);
        let e = s.covering(-1.0, 3.0);
        assert!(e.min() <= -1.0 && e.max() >= 3.0);
        assert!(e.scale <= 4.0 / 255.0 * (1.0 + 1e-2));
        let s = spec(8, true, true, true);
        let e = s.covering(-0.5, 2.0);
        assert_eq!(e.zero_point, 0);
        assert!(e.max() >= 2.0 && e.scale as f32 as f64 == e.scale);
    }

    /// TensorFlow's FakeQuant nudging, in float32 as TensorFlow computes it.
    fn tf_nudge(min: f32, max: f32, steps: f32) -> (f32, f32, f32) {
        let scale = (max - min) / steps;
        let zp = (0.0 - min / scale).round();
        ((0.0 - zp) * scale, (steps - zp) * scale, scale)
    }

    #[test]
    fn tensorflow_nudging_leaves_ranges_unchanged() {
        for bits in 2..=16 {
            for (lo, hi) in [
                (-1.234567, 3.3),
                (0.0, 0.7777),
                (-5e-3, 1e-4),
                (-77.7, 12.5),
            ] {
                let s = spec(bits, true, false, false);
                let e = s.covering(lo, hi);
                let (min, max) = (e.min() as f32, e.max() as f32);
                let (nmin, nmax, ns) = tf_nudge(min, max, (s.qmax - s.qmin) as f32);
                assert_eq!(
                    (nmin, nmax, ns as f64),
                    (min, max, e.scale),
                    "bits {bits} {lo} {hi}"
                );
            }
        }
    }
}
