//! The cost model: expected squared error of quantize-then-dequantize under a [`Dist`].
//!
//! Values inside `[min, max]` of the encoding round to the nearest grid point (rounding loss);
//! values outside clamp to the nearest end (clipping loss). Integrals are exact for a density that
//! is uniform inside each bin; exact zeros cost nothing but count in the average.

use crate::dist::{piece_sq, Dist};
use crate::spec::Encoding;

/// The two parts of the expected squared error, each averaged over all values.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Loss {
    pub rounding: f64,
    pub clipping: f64,
}

impl Loss {
    /// The objective the searches minimize: `rounding + gamma * clipping`.
    pub fn weighted(&self, gamma: f64) -> f64 {
        self.rounding + gamma * self.clipping
    }
    /// Plain mean squared error.
    pub fn mse(&self) -> f64 {
        self.rounding + self.clipping
    }
}

/// Rounding error of the piece `[u, v]` (density `d`) against the grid of multiples of `delta`.
fn rounding_piece(d: f64, u: f64, v: f64, delta: f64) -> f64 {
    if v <= u {
        return 0.0;
    }
    let mu = (u / delta).round();
    let mv = (v / delta).round();
    if mu == mv {
        return piece_sq(d * (v - u), u, v, mu * delta);
    }
    let e1 = ((mu + 0.5) * delta).clamp(u, v);
    let s1 = ((mv - 0.5) * delta).clamp(e1, v);
    let full = (mv - mu - 1.0).max(0.0);
    piece_sq(d * (e1 - u), u, e1, mu * delta)
        + full * d * delta * delta * delta / 12.0
        + piece_sq(d * (v - s1), s1, v, mv * delta)
}

/// Exact loss of `enc` on `dist`.
pub fn loss(dist: &Dist, enc: &Encoding) -> Loss {
    if dist.total() == 0.0 {
        return Loss::default();
    }
    let delta = enc.scale;
    let (t_lo, t_hi) = (enc.min(), enc.max());
    let mut rounding = 0.0;
    let mut clipping = 0.0;
    for (a, b, c) in dist.pieces() {
        if c == 0.0 {
            continue;
        }
        if a == b {
            // a point mass: clipped to the nearest end, or rounded to the nearest grid point
            if a < t_lo {
                clipping += c * (a - t_lo) * (a - t_lo);
            } else if a > t_hi {
                clipping += c * (a - t_hi) * (a - t_hi);
            } else {
                let e = a - (a / delta).round() * delta;
                rounding += c * e * e;
            }
            continue;
        }
        let d = c / (b - a);
        if a < t_lo {
            let v = b.min(t_lo);
            clipping += piece_sq(d * (v - a), a, v, t_lo);
        }
        if b > t_hi {
            let u = a.max(t_hi);
            clipping += piece_sq(d * (b - u), u, b, t_hi);
        }
        let (u, v) = (a.max(t_lo), b.min(t_hi));
        if u < v {
            rounding += rounding_piece(d, u, v, delta);
        }
    }
    Loss {
        rounding: rounding / dist.total(),
        clipping: clipping / dist.total(),
    }
}

/// Signal-to-quantization-noise ratio in dB: `10 log10(E[x²] / mse)`; infinite without error.
pub fn sqnr_db(dist: &Dist, l: &Loss) -> f64 {
    let mse = l.mse();
    if mse <= 0.0 {
        return f64::INFINITY;
    }
    10.0 * (dist.mean_square() / mse).log10()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::{QuantSpec, SpecOptions};

    /// Reference: integrate the error numerically on a fine midpoint rule.
    fn numeric(dist: &Dist, enc: &Encoding, steps: usize) -> (f64, f64) {
        let (mut r, mut c) = (0.0, 0.0);
        for (a, b, cnt) in dist.pieces() {
            let h = (b - a) / steps as f64;
            for s in 0..steps {
                let x = a + (s as f64 + 0.5) * h;
                let q =
                    ((x / enc.scale).round() as i64).clamp(enc.lowest_index(), enc.highest_index());
                let e = x - q as f64 * enc.scale;
                if x < enc.min() || x > enc.max() {
                    c += e * e * cnt / steps as f64;
                } else {
                    r += e * e * cnt / steps as f64;
                }
            }
        }
        (r / dist.total(), c / dist.total())
    }

    #[test]
    fn matches_numeric_integration() {
        let d = Dist::new(
            vec![5.0, 1.0, 7.0, 2.0],
            vec![-1.3, -0.2, 0.1, 0.9, 3.0],
            4.0,
        )
        .unwrap();
        let spec = QuantSpec::new(&SpecOptions {
            bits: 3,
            ..Default::default()
        })
        .unwrap();
        let enc = spec.encoding(0.31, -2);
        let l = loss(&d, &enc);
        let (r, c) = numeric(&d, &enc, 200_000);
        assert!(
            (l.rounding - r).abs() < 1e-8 * r.max(1e-12),
            "{} vs {}",
            l.rounding,
            r
        );
        assert!(
            (l.clipping - c).abs() < 1e-8 * c.max(1e-12),
            "{} vs {}",
            l.clipping,
            c
        );
    }

    #[test]
    fn zeros_cost_nothing_but_count() {
        let d1 = Dist::new(vec![1.0], vec![0.5, 1.5], 0.0).unwrap();
        let d2 = Dist::new(vec![1.0], vec![0.5, 1.5], 3.0).unwrap();
        let spec = QuantSpec::new(&SpecOptions::default()).unwrap();
        let enc = spec.encoding(0.1, -100);
        let (a, b) = (loss(&d1, &enc), loss(&d2, &enc));
        assert!((a.rounding - 4.0 * b.rounding).abs() < 1e-15);
    }
}
