//! One room's viewers spread over a node's two media workers: the room's
//! home worker hands its publisher's packets to the other, and every viewer
//! gets its media.

use crate::common;

use std::time::{Duration, Instant};

use common::{Node, fanout_low_layer};
use wave_metrics::value as metric;

#[test]
fn one_rooms_viewers_are_served_by_both_workers_without_loss() {
    let node = Node::start_at("127.0.0.1:0", &["--workers", "2"]);
    // Read each worker's viewers, and the room list, while the run is live.
    let ((most, rooms), stdout) = std::thread::scope(|s| {
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
        let (stdout, _) = fanout_low_layer(&node, 40);
        (watcher.join().expect("metrics watcher"), stdout)
    });
    assert!(
        most[0] >= 10.0 && most[1] >= 10.0,
        "viewers per worker: {most:?}\n{stdout}"
    );
    let (_, text) = node.get("/metrics");
    let handed = metric(&text, "wave_relay_packets_total").unwrap_or(0.0);
    assert!(handed > 100.0, "packets handed between workers: {handed}");
    assert_eq!(metric(&text, "wave_relay_dropped_total"), Some(0.0));
    // The room is listed once with every viewer, however many workers hold them.
    assert_eq!(rooms.matches("\"room\"").count(), 1, "{rooms}");
    assert_eq!(rooms.matches("\"session\"").count(), 41, "{rooms}");
}
