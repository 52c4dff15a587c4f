//! Every counter and gauge a media worker keeps, declared once: the
//! engine's [`EngineStats`] (plain integers it bumps on the packet path),
//! the worker's [`WorkerStats`] (the atomics it publishes them to after each
//! loop turn, plus the driver's own) and the `/metrics` lines the node
//! renders from them all come from the one table below.

use std::sync::atomic::{AtomicU64, Ordering};

use wave_metrics::Kind;

/// One metric of the table: its Prometheus name, kind and help, whether it
/// is an LL-HLS metric (rendered only on a node that packages LL-HLS), and
/// one worker's value.
#[derive(Debug, Clone, Copy)]
pub struct Line {
    pub name: &'static str,
    pub kind: Kind,
    pub help: &'static str,
    pub hls: bool,
    pub value: u64,
}

macro_rules! worker_metrics {
    (
        engine { $( $field:ident: $kind:ident $name:literal $help:literal $hls:literal; )* }
        driver { $( $dfield:ident: $dkind:ident $dname:literal $dhelp:literal; )* }
    ) => {
        /// What an engine counts; monotonic unless the table says gauge.
        #[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
        pub struct EngineStats {
            $( #[doc = $help] pub $field: u64, )*
        }

        /// A worker's published copy of its engine's counters, and its
        /// driver's own; read by `/metrics`.
        #[derive(Debug, Default)]
        pub struct WorkerStats {
            $( #[doc = $help] pub $field: AtomicU64, )*
            $( #[doc = $dhelp] pub $dfield: AtomicU64, )*
        }

        impl WorkerStats {
            /// Stores the engine's latest values.
            pub fn publish(&self, s: &EngineStats) {
                $( self.$field.store(s.$field, Ordering::Relaxed); )*
            }

            /// Every metric of the table with this worker's value, in table order.
            pub fn lines(&self) -> Vec<Line> {
                vec![
                    $( Line { name: $name, kind: Kind::$kind, help: $help, hls: $hls, value: self.$field.load(Ordering::Relaxed) }, )*
                    $( Line { name: $dname, kind: Kind::$dkind, help: $dhelp, hls: false, value: self.$dfield.load(Ordering::Relaxed) }, )*
                ]
            }
        }
    };
}

worker_metrics! {
    engine {
        rooms: Gauge "wave_rooms" "Rooms with at least one peer." false;
        publishers: Gauge "wave_publishers" "WHIP sessions." false;
        viewers: Gauge "wave_viewers" "WHEP sessions." false;
        packets_in: Counter "wave_udp_packets_received_total" "UDP datagrams received." false;
        bytes_in: Counter "wave_udp_bytes_received_total" "UDP bytes received." false;
        packets_out: Counter "wave_udp_packets_sent_total" "UDP datagrams sent." false;
        bytes_out: Counter "wave_udp_bytes_sent_total" "UDP bytes sent." false;
        rtp_forwarded: Counter "wave_rtp_forwarded_total" "RTP packets forwarded to viewers." false;
        layer_switches: Counter "wave_layer_switches_total" "Simulcast layer switches." false;
        keyframe_requests: Counter "wave_keyframe_requests_total" "PLIs sent to publishers." false;
        keyframe_cache_starts: Counter "wave_keyframe_cache_starts_total" "Viewers started on a layer from its cached keyframe group instead of a keyframe request." false;
        nacks_received: Counter "wave_nacks_received_total" "NACKs received from viewers." false;
        nacks_sent: Counter "wave_nacks_sent_total" "NACKs sent to publishers." false;
        viewer_codec_mismatch: Counter "wave_viewer_codec_mismatch_total" "Viewers given a publisher whose video codec they did not negotiate (they get its audio only), once per viewer and publisher." false;
        dropped_datagrams: Counter "wave_udp_dropped_total" "Datagrams for no peer or unparseable." false;
        index_entries: Gauge "wave_engine_index_entries" "Entries in the workers' per-session tables (peers, session ids, addresses, ICE ufrags, timers, rooms, mirrors, ingest sources, pending writes): 0 on an idle node." false;
        hls_rooms: Gauge "wave_hls_rooms" "Rooms packaged as LL-HLS." true;
        hls_parts: Counter "wave_hls_parts_total" "LL-HLS parts produced." true;
        hls_segments: Counter "wave_hls_segments_total" "LL-HLS segments produced." true;
        hls_aac_dropped: Counter "wave_hls_aac_dropped_total" "Opus frames dropped because an AAC transcoder thread fell behind." true;
        hls_aac_transcoders: Counter "wave_hls_aac_transcoders_total" "Opus -> AAC transcoders started for LL-HLS rooms (none for a source whose AAC is passed through)." true;
        hls_aac_passthrough: Counter "wave_hls_aac_passthrough_frames_total" "Source AAC access units (RTMP, RTSP) passed through to LL-HLS unchanged." true;
        hls_aac_passthrough_dropped: Counter "wave_hls_aac_passthrough_dropped_total" "Source AAC access units dropped before LL-HLS: an AudioSpecificConfig that does not parse, an empty or oversized frame." true;
    }
    driver {
        send_errors: Counter "wave_udp_send_errors_total" "Datagrams the socket refused.";
        relay_handed: Counter "wave_relay_packets_total" "Media packets a room's home worker handed to workers with more of its viewers.";
        relay_dropped: Counter "wave_relay_dropped_total" "Media packets dropped because a worker's relay queue was full.";
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_line_has_a_unique_name_and_the_published_value() {
        let stats = WorkerStats::default();
        stats.publish(&EngineStats {
            viewers: 3,
            rtp_forwarded: 7,
            ..EngineStats::default()
        });
        stats.send_errors.store(2, Ordering::Relaxed);
        let lines = stats.lines();
        let mut names: Vec<&str> = lines.iter().map(|l| l.name).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), lines.len(), "duplicate metric names");
        let value = |n: &str| lines.iter().find(|l| l.name == n).map(|l| l.value);
        assert_eq!(value("wave_viewers"), Some(3));
        assert_eq!(value("wave_rtp_forwarded_total"), Some(7));
        assert_eq!(value("wave_udp_send_errors_total"), Some(2));
        assert!(lines.iter().all(|l| l.name.starts_with("wave_hls_") == l.hls));
    }
}
