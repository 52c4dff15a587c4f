//! Every integration test of this crate, one module per behaviour, linked
//! into one test binary: one release link per crate instead of one per file.

mod allocate;
mod auth;
mod bad_input;
mod binding;
mod channels;
mod cli;
mod common;
mod flood;
mod fuzz_regressions;
mod interop_uclient;
mod lifetime;
mod metrics;
mod permissions;
mod quotas;
mod tcp;
mod tls;
