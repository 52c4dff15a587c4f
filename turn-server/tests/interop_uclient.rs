//! Interop with an independent client: coturn's `turnutils_uclient`
//! allocates through our server, relays to a loopback echo peer
//! (`turnutils_peer`, allow-listed) and gets every message back.

use crate::common;

use std::process::Command;

use common::*;

struct Run {
    sent: u64,
    received: u64,
    lost: Option<u64>,
}

fn parse(output: &str) -> Run {
    let num_after = |key: &str| {
        output.lines().rev().find_map(|l| {
            let rest = &l[l.find(key)? + key.len()..];
            let digits: String = rest
                .trim_start_matches([' ', '=', '~'])
                .chars()
                .take_while(char::is_ascii_digit)
                .collect();
            digits.parse::<u64>().ok()
        })
    };
    Run {
        sent: num_after("tot_send_msgs").unwrap_or(0),
        received: num_after("tot_recv_msgs").unwrap_or(0),
        lost: num_after("Total lost packets"),
    }
}

async fn relay_through_us(extra_flags: &[&str], rfc5766_channels: bool) {
    let (uclient, peer_tool) = (coturn_tool("turnutils_uclient"), coturn_tool("turnutils_peer"));
    let (_peer, peer_port) = start_echo_peer(&peer_tool).await;
    let mut cfg = config();
    cfg.server.peer_filter = turn_server::filter::PeerFilter::new(vec!["127.0.0.1/32".parse().unwrap()]);
    cfg.server.rfc5766_channels = rfc5766_channels;
    let server = start(cfg).await;
    let port = server.addrs.udp.port().to_string();
    let peer_port = peer_port.to_string();
    let (messages, clients) = (20u64, 3u64);
    let mut args: Vec<String> = extra_flags.iter().map(|s| s.to_string()).collect();
    let (n, m) = (messages.to_string(), clients.to_string());
    args.extend(
        [
            "-c",
            "-n",
            &n,
            "-m",
            &m,
            "-l",
            "120",
            "-z",
            "5",
            "-p",
            &port,
            "-e",
            "127.0.0.1",
            "-r",
            &peer_port,
            "-W",
            SECRET,
            "-u",
            "interop",
            "127.0.0.1",
        ]
        .map(String::from),
    );
    let out = tokio::task::spawn_blocking(move || Command::new(uclient).args(&args).output())
        .await
        .unwrap()
        .expect("run turnutils_uclient");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "uclient failed:\n{text}");
    let run = parse(&text);
    assert_eq!(run.sent, messages * clients, "uclient output:\n{text}");
    assert_eq!(run.received, run.sent, "every message came back:\n{text}");
    assert_eq!(run.lost, Some(0), "{text}");
    // Each message crossed the relay twice (to the peer and back).
    let relayed = wait_metric(&server, "turn_packets_relayed_total", |v| {
        v >= 2 * messages * clients
    })
    .await;
    assert!(relayed >= 2 * messages * clients, "relayed {relayed}");
    server.stop().await;
}

#[tokio::test]
async fn uclient_udp_send_indications() {
    relay_through_us(&["-s"], false).await;
}

#[tokio::test]
async fn uclient_udp_channels() {
    // Debian's uclient (coturn 4.6) picks channels from RFC 5766's range.
    relay_through_us(&[], true).await;
}

#[tokio::test]
async fn uclient_tcp_channels() {
    relay_through_us(&["-t"], true).await;
}

#[tokio::test]
async fn uclient_tcp_send_indications() {
    relay_through_us(&["-t", "-s"], false).await;
}
