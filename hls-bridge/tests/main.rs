//! Every integration test of this crate, one module per behaviour, linked
//! into one test binary: one release link per crate instead of one per file.

mod aac_transcode;
mod common;
mod fmp4_boxes;
mod h264_rtp;
mod ladder;
mod ll_hls_checker;
mod ll_hls_http;
mod ll_hls_segmenter;
mod thumbnail;
