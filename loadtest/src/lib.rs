//! WAVE's load tester: simulated WHIP publishers and WHEP viewers speaking
//! the real protocols to a real server, many str0m peers per thread, and the
//! numbers viewers feel and the server pays.

pub mod bench;
pub mod cascade;
pub mod cli;
pub mod error;
pub mod floor;
pub mod hls;
pub mod hls_bench;
pub mod hls_playlist;
pub mod hls_report;
pub mod http;
pub mod janus;
pub mod media;
pub mod node_process;
pub mod peer;
pub mod report;
pub mod rtp;
pub mod run;
pub mod server;
pub mod shard;
pub mod stats;
pub mod wake;

pub use error::Error;
