//! One module per subcommand.

pub mod bench;
pub mod common;
pub mod data;
pub mod demo;
pub mod eval;
pub mod generate;
pub mod train;
