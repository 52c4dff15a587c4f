//! Every integration test of this crate, one module per behaviour, linked
//! into one test binary: one release link per crate instead of one per file.

mod auth;
mod bad_body;
mod bus;
mod chat_fanout;
mod chat_rate_cluster;
mod common;
mod connection_limit;
mod content_type;
mod cors;
mod delete;
mod drain;
mod h2c;
mod hlsjs;
mod ice_restart;
mod layer;
mod media_errors;
mod methods;
mod observability;
mod open_node;
mod page;
mod patch_trickle;
mod rate_limit;
mod registry;
mod shutdown;
mod whep_post;
mod whip_post;
