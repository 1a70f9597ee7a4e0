//! blip3-eval: metrics scored exactly like the reference tools, benchmark suites and reports.
#![warn(missing_docs)]

pub mod metrics;
