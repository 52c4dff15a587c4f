//! Every integration test of this crate, one module per behaviour, linked
//! into one test binary: one release link per crate instead of one per file.

mod cluster_redirect;
mod common;
mod fanout_against_node;
mod header_counted_viewers;
mod hls_against_node;
mod idle_shard_sleeps;
mod meeting_and_churn_against_node;
mod rtmp_room_viewers;
mod spread_viewers;
mod tester_socket_drops;
