//! WAVE's media node: the Sans-IO engine over str0m, the UDP workers that
//! drive it, and `run`, which composes a whole node.

pub mod engine;
pub mod node;
pub mod process;
pub mod worker;
