//! qfcal-core: exact streaming histograms and the quantization-range search, in pure Rust.
//!
//! * [`Histogram`]: bins on a power-of-two grid anchored at zero; the same multiset of values,
//!   batched, ordered and merged in any way, gives a bit-identical histogram.
//! * [`search()`]: the scale and zero point minimizing the expected squared error of
//!   quantize-then-dequantize ([`cost`]), by qfcal's global search or the peers' methods.
//! * [`weights::channel_scales`]: each weight channel's scale, from its exact values.

pub mod cost;
pub mod dist;
pub mod error;
pub mod histogram;
pub mod methods;
pub mod search;
pub mod spec;
pub mod weights;

pub use cost::Loss;
pub use dist::Dist;
pub use error::{Error, Result};
pub use histogram::{Histogram, WeightedHistogram};
pub use search::{search, Method, SearchOptions, SearchResult};
pub use spec::{Encoding, QuantSpec, SpecOptions};
