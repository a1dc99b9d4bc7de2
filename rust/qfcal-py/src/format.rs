//! The text of `repr()`: numbers as Python's `%g` prints them, and one summary line per class
//! (never the arrays).

use qfcal_core::{Histogram, SearchResult};

/// Six significant digits, like Python's `%g`.
pub(crate) fn six_digits(x: f64) -> String {
    let a = x.abs();
    if x == 0.0 || !x.is_finite() || (1e-4..1e6).contains(&a) {
        let digits = if a == 0.0 || !x.is_finite() {
            0
        } else {
            (5 - a.log10().floor() as i32).max(0) as usize
        };
        let s = format!("{x:.digits$}");
        if s.contains('.') {
            s.trim_end_matches('0').trim_end_matches('.').to_string()
        } else {
            s
        }
    } else {
        format!("{x:.5e}")
    }
}

/// `Histogram(bins=..., total=..., min=..., max=..., bin_width=2**k, zeros=...)`, with the
/// NaN and infinity counts when there are any.
pub(crate) fn histogram_repr(h: &Histogram) -> String {
    let optional = |v: Option<f64>| v.map_or("None".to_string(), six_digits);
    let width = h
        .exponent()
        .map_or("None".to_string(), |k| format!("2**{k}"));
    let mut s = format!(
        "Histogram(bins={}, total={}, min={}, max={}, bin_width={}, zeros={}",
        h.bins(),
        h.total(),
        optional(h.min()),
        optional(h.max()),
        width,
        h.zeros()
    );
    if h.nan() + h.pos_inf() + h.neg_inf() > 0 {
        s += &format!(
            ", nan={}, pos_inf={}, neg_inf={}",
            h.nan(),
            h.pos_inf(),
            h.neg_inf()
        );
    }
    s + ")"
}

/// The `repr()` of a histogram whose lock a panic poisoned.
pub(crate) fn broken_histogram_repr(bins: usize) -> String {
    format!("Histogram(bins={bins}, <left incomplete by an internal error>)")
}

/// `SearchResult(method=..., scale=..., zero_point=..., min=..., max=..., loss=..., sqnr_db=...)`.
pub(crate) fn search_result_repr(r: &SearchResult) -> String {
    let e = &r.encoding;
    format!(
        "SearchResult(method={:?}, scale={}, zero_point={}, min={}, max={}, loss={}, sqnr_db={:.2})",
        r.method.name(),
        six_digits(e.scale),
        e.zero_point,
        six_digits(e.min()),
        six_digits(e.max()),
        six_digits(r.objective()),
        r.sqnr_db
    )
}
