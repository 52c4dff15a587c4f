//! The run's numbers: aggregated from every viewer, printed as a table or
//! JSON, and checked against `--expect` thresholds.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde::Serialize;

use crate::error::Error;
use crate::peer::{PublisherStats, ViewerStats};
use crate::server::ServerCost;
use crate::stats::{Histogram, Summary};

/// Join time split, milliseconds from the POST.
#[derive(Debug, Clone, Default, Serialize)]
pub struct JoinTimes {
    pub answer: Summary,
    pub ice_connected: Summary,
    pub dtls_connected: Summary,
    pub first_packet: Summary,
    pub first_keyframe: Summary,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct LayerReport {
    pub layer: String,
    /// Viewers whose video came mostly from this layer.
    pub viewers: usize,
    pub kbps: Summary,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct Report {
    pub scenario: String,
    pub seed: u64,
    pub duration_secs: f64,
    /// `--publisher none`: the room watched, which something else publishes.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub external_room: Option<String>,
    pub publishers: usize,
    pub publishers_connected: usize,
    pub viewers_planned: usize,
    /// Viewers that got a first keyframe.
    pub viewers_joined: usize,
    pub viewers_failed: usize,
    /// Churn: viewers made to leave before their first keyframe (not failures).
    pub viewers_left_early: usize,
    /// Viewers whose video came mostly from the layer they asked for (of those that asked).
    pub viewers_on_asked_layer: usize,
    pub viewers_asking_layer: usize,
    pub join_ms: JoinTimes,
    /// Joined viewers that counted media from RTP headers after their first
    /// keyframe (`--full-every`); the rest stayed full str0m peers.
    pub viewers_header_counted: usize,
    /// Packet loss over all viewers' packets, percent: after retransmission
    /// for full viewers, before it for header-counted ones (they send no NACK).
    pub loss_pct: f64,
    /// The same over full viewers only (after NACK repair).
    pub loss_full_pct: f64,
    /// The same over header-counted viewers only (no repair).
    pub loss_header_counted_pct: f64,
    /// Packets the viewers should have received and lost (as in `loss_pct`).
    pub packets_expected: u64,
    pub packets_lost: u64,
    /// Datagrams the kernel dropped at the load tester's own shard sockets
    /// (receive queue full) over the run and in the measured window: loss
    /// the tester caused, not the server. `None` without `/proc/net/udp`.
    pub tester_socket_drops: Option<u64>,
    pub tester_socket_drops_window: Option<u64>,
    /// Received video bitrate per viewer, full and header-counted apart,
    /// kbit/s (viewers that received for less than `MIN_RATE_SECS` have none).
    pub full_kbps: Summary,
    pub header_counted_kbps: Summary,
    /// The least time between a header-counted viewer's first and last
    /// media packet, seconds: short when the server stopped sending to one.
    pub header_counted_min_media_secs: f64,
    /// Per-viewer loss, percent.
    pub viewer_loss_pct: Summary,
    pub jitter_ms: Summary,
    pub latency_ms: Summary,
    /// How late the publishers wrote their frames behind the 30 fps video and
    /// 20 ms audio schedule: the media threads' wake-up precision.
    pub send_lateness_ms: Summary,
    pub layers: Vec<LayerReport>,
    pub freezes: u64,
    pub viewer_freezes: Summary,
    pub layer_switches: u64,
    pub server: ServerCost,
    /// HTTP responses by status ("201", "429") and failures ("timeout", "connect").
    pub http: BTreeMap<String, u64>,
    /// Join and peer errors, by message.
    pub errors: BTreeMap<String, u64>,
    pub client_send_errors: u64,
    pub keyframe_requests: u64,
    /// Bitrate of each looped layer as encoded (payload), kbit/s.
    pub publisher_layer_kbps: [u64; 3],
    /// What the load tester itself paid in the measured window.
    pub client: ClientCost,
}

/// The load tester's own CPU over the measured window (all its threads):
/// when it nears the cores it has, it, not the server, is the limit.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ClientCost {
    /// CPU microseconds per RTP packet the viewers received.
    pub cpu_us_per_packet: Option<f64>,
    /// Cores the load tester used.
    pub cpu_cores: Option<f64>,
    /// Times per second the media threads woke from their wait (all shards):
    /// near the datagram and frame rates when busy, near zero when idle.
    pub wakeups_per_sec: Option<f64>,
}

impl ClientCost {
    pub fn compute(cpu_seconds: f64, secs: f64, packets: u64, wakeups: u64) -> ClientCost {
        ClientCost {
            cpu_us_per_packet: (packets > 0).then(|| cpu_seconds * 1e6 / packets as f64),
            cpu_cores: (secs > 0.0).then(|| cpu_seconds / secs),
            wakeups_per_sec: (secs > 0.0).then(|| wakeups as f64 / secs),
        }
    }
}

impl Report {
    #[allow(clippy::too_many_arguments)]
    pub fn build(
        scenario: &str,
        seed: u64,
        duration_secs: f64,
        planned: usize,
        viewers: &[ViewerStats],
        publishers: &[PublisherStats],
        latency: &Histogram,
        server: ServerCost,
        http: BTreeMap<String, u64>,
        client_send_errors: u64,
    ) -> Report {
        let joined: Vec<&ViewerStats> = viewers.iter().filter(|v| v.joined()).collect();
        let left_early = viewers
            .iter()
            .filter(|v| v.left && !v.joined() && v.error.is_none())
            .count();
        let mut errors: BTreeMap<String, u64> = BTreeMap::new();
        for e in viewers
            .iter()
            .filter_map(|v| v.error.clone())
            .chain(publishers.iter().filter_map(|p| p.error.clone()))
        {
            *errors.entry(e).or_default() += 1;
        }
        let pick = |f: fn(&ViewerStats) -> Option<f64>| Summary::of(viewers.iter().filter_map(f));
        let lost_of = |keep: &dyn Fn(&ViewerStats) -> bool| {
            viewers
                .iter()
                .filter(|v| keep(v))
                .fold((0u64, 0u64), |(l, e), v| {
                    (
                        l + v.video_lost + v.audio_lost,
                        e + v.video_expected + v.audio_expected,
                    )
                })
        };
        let (packets_lost, packets_expected) = lost_of(&|_| true);
        let loss_of = |keep: &dyn Fn(&ViewerStats) -> bool| {
            let (lost, expected) = lost_of(keep);
            if expected == 0 {
                0.0
            } else {
                lost as f64 * 100.0 / expected as f64
            }
        };
        let names = ["low", "mid", "high"];
        let layers = (0..3)
            .map(|l| {
                let on: Vec<&&ViewerStats> = joined.iter().filter(|v| v.main_layer() == Some(l)).collect();
                LayerReport {
                    layer: names[l].into(),
                    viewers: on.len(),
                    kbps: Summary::of(on.iter().filter_map(|v| v.kbps())),
                }
            })
            .collect();
        let asking: Vec<&&ViewerStats> = joined.iter().filter(|v| v.layer_asked.is_some()).collect();
        Report {
            external_room: None,
            scenario: scenario.into(),
            seed,
            duration_secs,
            publishers: publishers.len(),
            publishers_connected: publishers.iter().filter(|p| p.connected).count(),
            viewers_planned: planned,
            viewers_joined: joined.len(),
            viewers_failed: planned.saturating_sub(joined.len() + left_early),
            viewers_left_early: left_early,
            viewers_on_asked_layer: asking.iter().filter(|v| v.main_layer() == v.layer_asked).count(),
            viewers_asking_layer: asking.len(),
            join_ms: JoinTimes {
                answer: pick(|v| v.answer_ms),
                ice_connected: pick(|v| v.ice_ms),
                dtls_connected: pick(|v| v.dtls_ms),
                first_packet: pick(|v| v.first_packet_ms),
                first_keyframe: pick(|v| v.first_keyframe_ms),
            },
            viewers_header_counted: joined.iter().filter(|v| v.header_counted).count(),
            loss_pct: loss_of(&|_| true),
            packets_expected,
            packets_lost,
            tester_socket_drops: None,
            tester_socket_drops_window: None,
            loss_full_pct: loss_of(&|v| !v.header_counted),
            loss_header_counted_pct: loss_of(&|v| v.header_counted),
            full_kbps: Summary::of(
                joined
                    .iter()
                    .filter(|v| !v.header_counted)
                    .filter_map(|v| v.kbps()),
            ),
            header_counted_kbps: Summary::of(
                joined
                    .iter()
                    .filter(|v| v.header_counted)
                    .filter_map(|v| v.kbps()),
            ),
            header_counted_min_media_secs: joined
                .iter()
                .filter(|v| v.header_counted)
                .map(|v| v.media_secs)
                .reduce(f64::min)
                .unwrap_or(0.0),
            viewer_loss_pct: Summary::of(joined.iter().map(|v| v.loss() * 100.0)),
            jitter_ms: Summary::of(joined.iter().map(|v| v.jitter_ms)),
            latency_ms: latency.summary_ms(),
            send_lateness_ms: Summary::default(),
            layers,
            freezes: joined.iter().map(|v| v.freezes).sum(),
            viewer_freezes: Summary::of(joined.iter().map(|v| v.freezes as f64)),
            layer_switches: joined.iter().map(|v| v.layer_switches).sum(),
            server,
            http,
            errors,
            client_send_errors,
            keyframe_requests: publishers.iter().map(|p| p.keyframe_requests).sum(),
            publisher_layer_kbps: [0; 3],
            client: ClientCost::default(),
        }
    }

    /// A metric by its `--expect` name, in its base unit (ms, %, µs, KiB, count).
    pub fn metric(&self, name: &str) -> Option<f64> {
        let j = &self.join_ms.first_keyframe;
        let l = &self.latency_ms;
        Some(match name {
            "loss" => self.loss_pct,
            "loss_p95" => self.viewer_loss_pct.p95,
            "loss_max" => self.viewer_loss_pct.max,
            "join_p50" => j.p50,
            "join_p95" => j.p95,
            "join_p99" => j.p99,
            "join_max" => j.max,
            "latency_p50" => l.p50,
            "latency_p95" => l.p95,
            "latency_p99" => l.p99,
            "latency_max" => l.max,
            "jitter_p95" => self.jitter_ms.p95,
            "freezes" => self.freezes as f64,
            "layer_switches" => self.layer_switches as f64,
            "failed" => self.viewers_failed as f64,
            "joined" => {
                let planned = self.viewers_planned.saturating_sub(self.viewers_left_early);
                if planned == 0 {
                    100.0
                } else {
                    self.viewers_joined as f64 * 100.0 / planned as f64
                }
            }
            "cpu_us_per_packet" => self.server.cpu_us_per_packet?,
            "mem_per_viewer" => self.server.mem_per_viewer_kib?,
            "packets_per_sec" => self.server.packets_per_sec?,
            "client_us_per_packet" => self.client.cpu_us_per_packet?,
            _ => return None,
        })
    }

    /// How much of the loss happened at the load tester's own sockets.
    pub fn tester_drops_line(&self) -> String {
        let Some(drops) = self.tester_socket_drops else {
            return "tester socket drops: n/a (no /proc/net/udp): the loss above may include the tester's own".into();
        };
        let window = self
            .tester_socket_drops_window
            .map_or(String::new(), |w| format!(" ({w} in the measured window)"));
        // The share of the loss this is stands in the loss line above.
        format!(
            "tester socket drops: {drops} datagrams over the run{window} \
             (a drop may also be STUN/RTCP, or repaired by NACK)"
        )
    }

    /// The share of the lost packets the tester's sockets dropped, percent
    /// (an upper bound: a dropped datagram may not have been media).
    pub fn tester_share_pct(&self) -> Option<f64> {
        let drops = self.tester_socket_drops?;
        (self.packets_lost > 0)
            .then(|| drops.min(self.packets_lost) as f64 * 100.0 / self.packets_lost as f64)
    }

    /// The human table.
    pub fn table(&self) -> String {
        let mut o = String::new();
        let row = |o: &mut String, name: &str, s: &Summary, unit: &str| {
            let _ = writeln!(
                o,
                "  {name:<22} {:>9.2} {:>9.2} {:>9.2} {:>9.2}  {unit}",
                s.p50, s.p95, s.p99, s.max
            );
        };
        let _ = writeln!(
            o,
            "scenario {} (seed {}), {:.1} s measured: {} publishers ({} connected), viewers {}/{} joined, {} failed",
            self.scenario,
            self.seed,
            self.duration_secs,
            self.publishers,
            self.publishers_connected,
            self.viewers_joined,
            self.viewers_planned,
            self.viewers_failed
        );
        if let Some(room) = &self.external_room {
            let _ = writeln!(
                o,
                "  watching room {room}, published by something else: no forwarding latency (it needs the load tester's own frames), no layer check"
            );
        }
        let _ = writeln!(
            o,
            "  {:<22} {:>9} {:>9} {:>9} {:>9}",
            "", "p50", "p95", "p99", "max"
        );
        row(&mut o, "join: answer", &self.join_ms.answer, "ms");
        row(&mut o, "join: ICE connected", &self.join_ms.ice_connected, "ms");
        row(&mut o, "join: DTLS connected", &self.join_ms.dtls_connected, "ms");
        row(&mut o, "join: first packet", &self.join_ms.first_packet, "ms");
        row(&mut o, "join: first keyframe", &self.join_ms.first_keyframe, "ms");
        if self.external_room.is_none() {
            row(&mut o, "forwarding latency", &self.latency_ms, "ms");
            row(&mut o, "publisher send late", &self.send_lateness_ms, "ms");
        }
        row(&mut o, "jitter", &self.jitter_ms, "ms");
        row(&mut o, "loss per viewer", &self.viewer_loss_pct, "%");
        row(&mut o, "freezes per viewer", &self.viewer_freezes, "");
        for l in &self.layers {
            if l.viewers > 0 {
                row(
                    &mut o,
                    &format!("{} layer ({} viewers)", l.layer, l.viewers),
                    &l.kbps,
                    "kbit/s",
                );
            }
        }
        let _ = writeln!(
            o,
            "  loss {:.3}% overall ({} of {} packets{}); {} freezes; {} layer switches; {} keyframe requests at publishers; on asked layer {}/{}",
            self.loss_pct,
            self.packets_lost,
            self.packets_expected,
            self.tester_share_pct().map_or(String::new(), |p| format!(
                ", up to {p:.1}% of them at the tester's sockets"
            )),
            self.freezes,
            self.layer_switches,
            self.keyframe_requests,
            self.viewers_on_asked_layer,
            self.viewers_asking_layer
        );
        let _ = writeln!(o, "  {}", self.tester_drops_line());
        let _ = writeln!(
            o,
            "  viewers: {} full str0m peers, {} header-counted (low layer) from their first keyframe \
             (loss {:.3}% after NACK / {:.3}% before any repair; latency from full viewers only)",
            self.viewers_joined - self.viewers_header_counted,
            self.viewers_header_counted,
            self.loss_full_pct,
            self.loss_header_counted_pct
        );
        let s = &self.server;
        let f = |v: Option<f64>, d: usize| v.map_or("n/a".to_owned(), |v| format!("{v:.d$}"));
        let _ = writeln!(
            o,
            "  server: {} µs CPU per forwarded packet, {} packets/s ({}), {} cores, {} KiB per viewer, RSS {} MiB",
            f(s.cpu_us_per_packet, 2),
            f(s.packets_per_sec, 0),
            s.packet_source,
            f(s.cpu_cores, 2),
            f(s.mem_per_viewer_kib, 1),
            f(s.rss_mib, 1)
        );
        if self.external_room.is_none() {
            let _ = writeln!(
                o,
                "  publisher layers as encoded: {:?} kbit/s; http: {:?}",
                self.publisher_layer_kbps, self.http
            );
        } else {
            let _ = writeln!(o, "  http: {:?}", self.http);
        }
        if !self.errors.is_empty() {
            let _ = writeln!(o, "  errors: {:?}", self.errors);
        }
        let _ = writeln!(
            o,
            "  load tester: {} µs CPU per received packet, {} cores, {} media-thread wake-ups/s",
            f(self.client.cpu_us_per_packet, 2),
            f(self.client.cpu_cores, 2),
            f(self.client.wakeups_per_sec, 0)
        );
        if self.client_send_errors > 0 {
            let _ = writeln!(o, "  client send errors: {}", self.client_send_errors);
        }
        o
    }
}

/// One `--expect` clause, e.g. `loss<0.5%` or `join_p95<=300ms`.
#[derive(Debug, Clone, PartialEq)]
pub struct Expectation {
    pub metric: String,
    pub op: Op,
    /// The threshold in the metric's base unit.
    pub value: f64,
    pub text: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Lt,
    Le,
    Gt,
    Ge,
}

/// The unit a metric is compared in (what `--expect` accepts after the number).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unit {
    /// Milliseconds; `us`/`µs`/`s` are converted.
    Ms,
    Micros,
    Percent,
    KiB,
    Count,
}

/// A report `--expect` can check.
pub trait Expectable {
    /// A metric by its `--expect` name, in its base unit.
    fn metric(&self, name: &str) -> Option<f64>;
}

impl Expectable for Report {
    fn metric(&self, name: &str) -> Option<f64> {
        Report::metric(self, name)
    }
}

/// The unit of a WebRTC report metric; `None` for an unknown name.
pub fn unit(metric: &str) -> Option<Unit> {
    let known = Report::default().metric(metric).is_some()
        || matches!(metric, "cpu_us_per_packet" | "mem_per_viewer" | "packets_per_sec");
    Some(match metric {
        _ if !known => return None,
        m if m.starts_with("join_") || m.starts_with("latency") || m.starts_with("jitter") => Unit::Ms,
        "cpu_us_per_packet" => Unit::Micros,
        m if m.starts_with("loss") || m == "joined" => Unit::Percent,
        "mem_per_viewer" => Unit::KiB,
        _ => Unit::Count,
    })
}

/// Parses `loss<0.5%,join_p95<300ms` for the WebRTC report.
pub fn parse_expect(spec: &str) -> Result<Vec<Expectation>, Error> {
    parse_expect_with(spec, unit)
}

/// Parses `--expect` clauses whose metrics `unit_of` knows.
pub fn parse_expect_with(
    spec: &str,
    unit_of: impl Fn(&str) -> Option<Unit>,
) -> Result<Vec<Expectation>, Error> {
    let mut out = Vec::new();
    for clause in spec.split(',').map(str::trim).filter(|c| !c.is_empty()) {
        let (pos, op, len) = ["<=", ">=", "<", ">"]
            .iter()
            .find_map(|o| clause.find(o).map(|p| (p, *o, o.len())))
            .ok_or_else(|| Error::Config(format!("expect `{clause}`: no <, <=, > or >=")))?;
        let metric = clause[..pos].trim().to_owned();
        let raw = clause[pos + len..].trim();
        let split = raw
            .find(|c: char| !(c.is_ascii_digit() || c == '.' || c == '-'))
            .unwrap_or(raw.len());
        let number: f64 = raw[..split]
            .parse()
            .map_err(|_| Error::Config(format!("expect `{clause}`: `{raw}` is not a number")))?;
        let unit = raw[split..].trim();
        let kind = unit_of(&metric)
            .ok_or_else(|| Error::Config(format!("expect `{clause}`: unknown metric `{metric}`")))?;
        let value = match (kind, unit) {
            (Unit::Ms, "" | "ms") | (Unit::Micros, "" | "us" | "µs") | (Unit::Percent, "" | "%") => number,
            (Unit::KiB, "" | "KiB" | "kib") | (Unit::Count, "") => number,
            (Unit::Ms, "us" | "µs") => number / 1000.0,
            (Unit::Ms, "s") => number * 1000.0,
            _ => {
                return Err(Error::Config(format!(
                    "expect `{clause}`: unit `{unit}` does not fit `{metric}`"
                )));
            }
        };
        let op = match op {
            "<" => Op::Lt,
            "<=" => Op::Le,
            ">" => Op::Gt,
            _ => Op::Ge,
        };
        out.push(Expectation {
            metric,
            op,
            value,
            text: clause.to_owned(),
        });
    }
    Ok(out)
}

/// The clauses the report misses, with what was measured (a metric the
/// run could not measure misses too).
pub fn check(report: &impl Expectable, expect: &[Expectation]) -> Vec<String> {
    expect
        .iter()
        .filter_map(|e| {
            let Some(v) = report.metric(&e.metric) else {
                return Some(format!("{}: not measured", e.text));
            };
            let ok = match e.op {
                Op::Lt => v < e.value,
                Op::Le => v <= e.value,
                Op::Gt => v > e.value,
                Op::Ge => v >= e.value,
            };
            (!ok).then(|| format!("{}: measured {v:.3}", e.text))
        })
        .collect()
}

/// Prints the table, writes the JSON, checks the expectations: the end of
/// every scenario's run. Exit code 3 when an expectation is missed.
pub fn finish<R: Expectable + Serialize>(
    report: &R,
    table: &str,
    json: Option<&std::path::Path>,
    expect: &[Expectation],
) -> Result<std::process::ExitCode, Error> {
    print!("{table}");
    if let Some(path) = json {
        let text = serde_json::to_string_pretty(report).map_err(|e| Error::Config(e.to_string()))?;
        std::fs::write(path, text)?;
    }
    let missed = check(report, expect);
    for m in &missed {
        eprintln!("expectation missed: {m}");
    }
    Ok(if missed.is_empty() {
        std::process::ExitCode::SUCCESS
    } else {
        std::process::ExitCode::from(3)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_checks_expectations() {
        let e = parse_expect("loss<0.5%, join_p95<300ms,latency_p99<=1000us,joined>=99%").unwrap();
        assert_eq!(e.len(), 4);
        assert_eq!((e[0].metric.as_str(), e[0].op, e[0].value), ("loss", Op::Lt, 0.5));
        assert_eq!(e[2].value, 1.0);
        let mut r = Report {
            loss_pct: 0.2,
            viewers_planned: 100,
            viewers_joined: 100,
            ..Report::default()
        };
        r.join_ms.first_keyframe.p95 = 250.0;
        r.latency_ms.p99 = 0.8;
        assert!(check(&r, &e).is_empty());
        r.loss_pct = 0.7;
        r.viewers_joined = 98;
        let missed = check(&r, &e);
        assert_eq!(missed.len(), 2, "{missed:?}");
        assert!(missed[0].starts_with("loss<0.5%"));
        // Not measured counts as missed.
        let cpu = parse_expect("cpu_us_per_packet<4us").unwrap();
        assert_eq!(check(&r, &cpu).len(), 1);
    }

    #[test]
    fn loss_line_says_how_much_the_tester_dropped() {
        let mut r = Report {
            packets_expected: 100_000,
            packets_lost: 2_000,
            loss_pct: 2.0,
            tester_socket_drops: Some(500),
            tester_socket_drops_window: Some(300),
            ..Report::default()
        };
        assert_eq!(r.tester_share_pct(), Some(25.0));
        let t = r.table();
        assert!(
            t.contains(
                "loss 2.000% overall (2000 of 100000 packets, up to 25.0% of them at the tester's sockets)"
            ),
            "{t}"
        );
        assert!(
            t.contains(
                "tester socket drops: 500 datagrams over the run (300 in the measured window) (a drop"
            ),
            "{t}"
        );
        assert_eq!(t.matches("25.0%").count(), 1, "the share is stated once: {t}");
        // More drops than losses (STUN, RTCP, NACK-repaired): capped at all of it.
        r.tester_socket_drops = Some(9_000);
        assert_eq!(r.tester_share_pct(), Some(100.0));
        r.packets_lost = 0;
        assert_eq!(r.tester_share_pct(), None);
        assert!(!r.table().contains("at the tester's sockets"));
        r.tester_socket_drops = None;
        assert!(r.table().contains("tester socket drops: n/a"));
        let json = serde_json::to_value(&r).unwrap();
        assert!(json["tester_socket_drops"].is_null());
        assert_eq!(json["tester_socket_drops_window"], 300);
    }

    #[test]
    fn rejects_bad_expectations() {
        for bad in ["loss", "loss<abc", "nosuch<1", "join_p95<3%", "loss<1ms"] {
            assert!(parse_expect(bad).is_err(), "{bad}");
        }
    }
}
