//! Tests of the whole crate that reach across layers.

mod interleavings;
mod layers;
mod properties;
mod sizes;
