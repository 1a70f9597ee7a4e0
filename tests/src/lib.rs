//! blip3-tests: cross-crate integration tests, in `tests/tests/`: a released-layout model
//! directory through processor → model → text (`released_layout.rs`) and the crate layering
//! check from `cargo metadata` (`layering.rs`). The fixtures the crates' tests share are the
//! `blip3-fixtures` crate in `tests/fixtures/`.
#![warn(missing_docs)]

pub use blip3_fixtures::fixture;
