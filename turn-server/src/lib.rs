//! WAVE's TURN server (RFC 8656, STUN per RFC 8489).
//!
//! [`core::Server`] is a Sans-IO state machine on the `stun-types` /
//! `turn-types` codec; [`driver`] runs it on tokio with batched UDP from
//! `quinn-udp`, TCP and TLS listeners and an optional `/metrics` port.
//!
//! Embedding (the `sfu` node): build a [`Config`] (for instance
//! [`Config::loopback`], then set fields) and call [`run`] with a shutdown
//! future, or [`bind`] first to learn the bound ports. Hand clients fresh
//! credentials with [`rest_credentials`].

pub mod auth;
pub mod config;
pub mod core;
pub mod driver;
pub mod filter;
#[doc(hidden)]
pub mod fuzzing;
pub mod metrics;
pub mod rate;

pub use auth::{RestCredentials, rest_credentials};
pub use config::Config;
pub use driver::{Bound, Error, LocalAddrs, bind, run};
