//! Every integration test of this crate, one module per behaviour, linked
//! into one test binary: one release link per crate instead of one per file.

mod chat_authority;
mod chat_cluster;
mod chat_presence;
mod chat_rate_cluster;
mod chat_single_node;
mod cluster_nats;
mod cluster_relay;
mod common;
mod drain;
mod dtls_failures;
mod engine_codecs;
mod engine_feedback_extensions;
mod engine_ingest_source;
mod engine_keyframe_requests;
mod engine_log_spans;
mod engine_media_arrives;
mod engine_nack_recovers_loss;
mod engine_publisher_reconnect;
mod engine_relay_mirror;
mod engine_simulcast_switch;
mod engine_viewer_leaves;
mod hls_grants;
mod hls_ll_delivery;
mod hls_node_rooms;
mod http_auth;
mod http_whip_whep;
mod ingest_rtmp;
mod ingest_rtmp_bad_input;
mod interop_aiortc;
mod interop_ffmpeg;
mod interop_gstreamer;
mod media_bad_input;
mod shutdown;
mod turn_embedded_credentials;
mod turn_external_credentials;
