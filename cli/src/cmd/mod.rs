//! One module per subcommand.

pub mod bench;
pub mod chat;
pub mod common;
pub mod data;
pub mod demo;
pub mod eval;
pub mod generate;
pub mod launch;
pub mod serve;
pub mod train;
pub mod worker;
