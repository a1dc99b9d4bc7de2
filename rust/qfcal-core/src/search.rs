//! `search`: pick a scale and zero point for a histogram with any of the methods.

use crate::cost::{loss, sqnr_db, Loss};
use crate::dist::Dist;
use crate::error::{invalid, Result};
use crate::methods;
use crate::spec::{Encoding, QuantSpec, SpecOptions};
use std::fmt;
use std::str::FromStr;

/// A range-search method.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Method {
    /// Global minimum of the cost over every scale and zero point (qfcal).
    Optimal,
    /// The caffe2 / PyTorch `HistogramObserver` quantile walk.
    Greedy,
    /// AIMET's TF-Enhanced 17 x 21 grid, clipping weighted 3x.
    TfEnhanced,
    /// TensorRT's KL-divergence threshold (128 levels for 8 bits).
    Entropy,
    /// Percentile range (`percentile` option).
    Percentile,
    /// The observed minimum and maximum.
    MinMax,
}

impl Method {
    pub const ALL: [Method; 6] = [
        Method::Optimal,
        Method::Greedy,
        Method::TfEnhanced,
        Method::Entropy,
        Method::Percentile,
        Method::MinMax,
    ];

    pub fn name(&self) -> &'static str {
        match self {
            Method::Optimal => "optimal",
            Method::Greedy => "greedy",
            Method::TfEnhanced => "tf_enhanced",
            Method::Entropy => "entropy",
            Method::Percentile => "percentile",
            Method::MinMax => "minmax",
        }
    }
}

impl fmt::Display for Method {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Method {
    type Err = crate::error::Error;
    fn from_str(s: &str) -> Result<Method> {
        Method::ALL
            .iter()
            .copied()
            .find(|m| m.name() == s)
            .ok_or_else(|| {
                let names: Vec<&str> = Method::ALL.iter().map(|m| m.name()).collect();
                invalid(format!(
                    "method must be one of {}, got {s:?}",
                    names.join(", ")
                ))
            })
    }
}

/// Everything `search` takes besides the histogram.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SearchOptions {
    pub spec: SpecOptions,
    /// Weight of the clipping loss against the rounding loss (> 0).
    pub gamma: f64,
    pub method: Method,
    /// For `Method::Percentile`: the percentile kept, in (0, 100].
    pub percentile: f64,
}

impl Default for SearchOptions {
    fn default() -> Self {
        SearchOptions {
            spec: SpecOptions::default(),
            gamma: 1.0,
            method: Method::Optimal,
            percentile: 99.99,
        }
    }
}

/// The result of a search: the encoding and what it costs.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SearchResult {
    pub encoding: Encoding,
    /// The loss, averaged over all values; `loss.weighted(gamma)` is the objective.
    pub loss: Loss,
    pub gamma: f64,
    pub sqnr_db: f64,
    pub method: Method,
}

impl SearchResult {
    /// The objective value `rounding + gamma * clipping`.
    pub fn objective(&self) -> f64 {
        self.loss.weighted(self.gamma)
    }
}

impl SearchOptions {
    /// Checks every option as [`search`] does before it reads the histogram, with the same
    /// errors (each names the option and the value), and returns the grid the options describe.
    /// [`search`] runs this very check, so the two cannot disagree.
    pub fn check(&self) -> Result<QuantSpec> {
        let spec = QuantSpec::new(&self.spec)?;
        if !(self.gamma > 0.0 && self.gamma.is_finite()) {
            return Err(invalid(format!(
                "gamma must be a positive finite number, got {}",
                self.gamma
            )));
        }
        if !(self.percentile > 0.0 && self.percentile <= 100.0) {
            return Err(invalid(format!(
                "percentile must be in (0, 100], got {}",
                self.percentile
            )));
        }
        Ok(spec)
    }
}

/// Scores an encoding of `dist` as every method's result is scored.
pub fn evaluate(dist: &Dist, enc: Encoding, gamma: f64, method: Method) -> SearchResult {
    let l = loss(dist, &enc);
    SearchResult {
        encoding: enc,
        loss: l,
        gamma,
        sqnr_db: sqnr_db(dist, &l),
        method,
    }
}

/// Smallest and largest magnitude (`max |x|`) a search accepts: scales and ranges must stay
/// normal, finite float32 values at every bit width.
pub const MIN_MAGNITUDE_LOG2: i32 = -110;
pub const MAX_MAGNITUDE_LOG2: i32 = 100;

/// Finds the encoding of `dist` with the chosen method.
pub fn search(dist: &Dist, o: &SearchOptions) -> Result<SearchResult> {
    let spec = o.check()?;
    dist.require_values()?;
    if dist.n_bins() == 0 {
        // Only zeros: every encoding is exact.
        return Ok(evaluate(
            dist,
            methods::minmax(dist, &spec),
            o.gamma,
            o.method,
        ));
    }
    let m = dist.max_abs();
    if !(m >= 2f64.powi(MIN_MAGNITUDE_LOG2) && m <= 2f64.powi(MAX_MAGNITUDE_LOG2)) {
        return Err(invalid(format!(
            "cannot search a range for values up to |x| = {m:e}: qfcal handles magnitudes from \
             2^{MIN_MAGNITUDE_LOG2} to 2^{MAX_MAGNITUDE_LOG2}, where scales and ranges are normal \
             float32 numbers"
        )));
    }
    // Every method runs on the values divided by a power of two that brings max|x| into [1, 2):
    // the same numbers for data scaled by any power of two, so results are exactly
    // scale-equivariant (and the scan works at a fixed magnitude).
    let e = crate::histogram::exponent(m);
    let norm = dist.scaled_pow2(-e);
    let enc = match o.method {
        Method::Optimal => methods::optimal::optimal(&norm, &spec, o.gamma),
        Method::Greedy => methods::greedy::greedy(&norm, &spec),
        Method::TfEnhanced => methods::tf_enhanced::tf_enhanced(&norm, &spec),
        Method::Entropy => methods::entropy::entropy(&norm, &spec),
        Method::Percentile => methods::percentile(&norm, &spec, o.percentile),
        Method::MinMax => methods::minmax(&norm, &spec),
    };
    let enc = Encoding {
        scale: enc.scale * 2f64.powi(e),
        ..enc
    };
    Ok(evaluate(dist, enc, o.gamma, o.method))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn search_fails_on_options_exactly_as_check_does() {
        let dist = Dist::uniform(-1.0, 0.25, &[1, 2, 3, 4], 0).unwrap();
        let bad = [
            SearchOptions {
                gamma: -1.0,
                ..Default::default()
            },
            SearchOptions {
                percentile: 0.0,
                ..Default::default()
            },
            SearchOptions {
                spec: SpecOptions {
                    bits: 17,
                    ..Default::default()
                },
                ..Default::default()
            },
        ];
        for o in bad {
            let e = o.check().unwrap_err();
            assert_eq!(search(&dist, &o).unwrap_err(), e);
        }
        assert!(SearchOptions::default().check().is_ok());
    }
}
