//! One room's viewers spread over a node's two media workers: the room's
//! home worker hands its publisher's packets to the other, and every viewer
//! gets its media.

use crate::common;

use std::time::{Duration, Instant};

use common::{Node, loadtest, num, succeeded};

/// A Prometheus sample's value (`name` includes any labels).
fn metric(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}

#[test]
fn one_rooms_viewers_are_served_by_both_workers_without_loss() {
    let node = Node::start_at("127.0.0.1:0", &["--workers", "2"]);
    let pid = node.pid().to_string();
    // Read each worker's viewers, and the room list, while the run is live.
    let ((most, rooms), (out, r)) = std::thread::scope(|s| {
        let watcher = s.spawn(|| {
            let mut most = [0.0f64; 2];
            let end = Instant::now() + Duration::from_secs(20);
            while Instant::now() < end {
                let (_, text) = node.get("/metrics");
                let now: Vec<f64> = (0..2)
                    .map(|w| metric(&text, &format!("wave_worker_viewers{{worker=\"{w}\"}}")).unwrap_or(0.0))
                    .collect();
                for (m, v) in most.iter_mut().zip(&now) {
                    *m = m.max(*v);
                }
                if now.iter().sum::<f64>() >= 40.0 {
                    return (most, node.get("/v1/rooms").1);
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            (most, String::new())
        });
        let run = loadtest(&[
            "fanout",
            "--url",
            &node.url,
            "--server-pid",
            &pid,
            "--viewers",
            "40",
            "--layer",
            "low",
            "--rate",
            "100",
            "--duration",
            "2",
            "--full-every",
            "1",
            "--expect",
            "loss<1%,joined>=100%",
        ]);
        (watcher.join().expect("metrics watcher"), run)
    });
    let stdout = succeeded(&out);
    assert_eq!(num(&r, "/viewers_joined"), 40.0, "{stdout}");
    assert_eq!(num(&r, "/viewers_on_asked_layer"), 40.0, "{stdout}");
    assert!(num(&r, "/loss_pct") < 1.0, "{stdout}");
    assert!(most[0] >= 10.0 && most[1] >= 10.0, "viewers per worker: {most:?}");
    let (_, text) = node.get("/metrics");
    let handed = metric(&text, "wave_relay_packets_total").unwrap_or(0.0);
    assert!(handed > 100.0, "packets handed between workers: {handed}");
    assert_eq!(metric(&text, "wave_relay_dropped_total"), Some(0.0));
    // The room is listed once with every viewer, however many workers hold them.
    assert_eq!(rooms.matches("\"room\"").count(), 1, "{rooms}");
    assert_eq!(rooms.matches("\"session\"").count(), 41, "{rooms}");
}
