//! `turn-bench`: relayed packets/s and Mbit/s through `turn-server` and
//! Debian's coturn `turnserver`, side by side, with the same load from
//! coturn's `turnutils_uclient` against a `turnutils_peer` echo on loopback.
//!
//! Each echoed message crosses the relay twice (client -> peer, peer ->
//! client), so relayed packets = 2 x messages received back. "Per core" is
//! relayed packets divided by the server process's CPU seconds
//! (utime + stime), which makes the two servers comparable whatever their
//! thread counts. Memory per allocation is the server's peak RSS during the
//! run minus its idle RSS, divided by the allocations the run created.
//!
//! Run: `cargo build --release -p turn-server && target/release/turn-bench`
//! (it looks for the `turn-server` binary next to itself). Loads are bounded
//! in count; everything stays on 127.0.0.1.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};

const SECRET: &str = "bench-secret";
const REALM: &str = "bench";
const PAYLOAD: usize = 120;

#[derive(Clone, Copy)]
struct Scenario {
    clients: u32,
    messages: u32,
    interval_ms: u32,
}

const SCENARIOS: &[Scenario] = &[
    Scenario {
        clients: 1,
        messages: 40_000,
        interval_ms: 0,
    },
    Scenario {
        clients: 100,
        messages: 800,
        interval_ms: 2,
    },
    Scenario {
        clients: 1000,
        messages: 100,
        interval_ms: 20,
    },
];

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Ours,
    Coturn,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Ours => "turn-server",
            Kind::Coturn => "coturn",
        }
    }
}

struct Outcome {
    allocations: Option<u64>,
    sent: u64,
    received: u64,
    wall: Duration,
    cpu: Duration,
    idle_rss_kib: u64,
    peak_rss_kib: u64,
}

impl Outcome {
    fn relayed(&self) -> u64 {
        2 * self.received
    }
    fn pps(&self) -> f64 {
        self.relayed() as f64 / self.wall.as_secs_f64().max(1e-9)
    }
    fn mbps(&self) -> f64 {
        self.pps() * (PAYLOAD * 8) as f64 / 1e6
    }
    fn pps_per_core(&self) -> f64 {
        self.relayed() as f64 / self.cpu.as_secs_f64().max(1e-9)
    }
}

fn main() -> anyhow::Result<()> {
    let out_path = std::env::args()
        .skip_while(|a| a != "--out")
        .nth(1)
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../BENCHMARKS.md"));
    let uclient = which("turnutils_uclient").context("turnutils_uclient (apt-get install coturn)")?;
    let peer_tool = which("turnutils_peer").context("turnutils_peer (apt-get install coturn)")?;
    let coturn = which("turnserver");
    let ours = std::env::current_exe()?
        .parent()
        .context("exe dir")?
        .join("turn-server");
    if !ours.is_file() {
        bail!("{} missing: cargo build --release -p turn-server", ours.display());
    }
    let peer_port = free_port();
    let _peer = Guard(
        Command::new(&peer_tool)
            .args(["-L", "127.0.0.1", "-p", &peer_port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?,
    );
    std::thread::sleep(Duration::from_millis(300));

    let mut kinds = vec![Kind::Ours];
    match &coturn {
        Some(_) => kinds.push(Kind::Coturn),
        None => eprintln!("turnserver not found: coturn column skipped"),
    }
    let mut rows = Vec::new();
    for &sc in SCENARIOS {
        let mut allocations = None;
        for &kind in &kinds {
            let bin = match kind {
                Kind::Ours => ours.as_path(),
                Kind::Coturn => coturn.as_deref().expect("checked"),
            };
            let mut o = run_one(kind, bin, &uclient, peer_port, sc)?;
            // uclient's allocation count is the same for both servers; ours
            // reports it in /metrics.
            if o.allocations.is_none() {
                o.allocations = allocations;
            }
            allocations = o.allocations;
            println!(
                "{:>11} {:>5} clients: sent {:>7} back {:>7} | {:>9.0} pps {:>7.1} Mbit/s | {:>9.0} pps/core | allocations {:>5} | rss idle {} KiB peak {} KiB",
                kind.name(),
                sc.clients,
                o.sent,
                o.received,
                o.pps(),
                o.mbps(),
                o.pps_per_core(),
                o.allocations.map_or("?".into(), |a| a.to_string()),
                o.idle_rss_kib,
                o.peak_rss_kib,
            );
            rows.push((kind, sc, o));
        }
    }
    let section = render(&rows);
    println!("\n{section}");
    write_section(&out_path, &section)?;
    println!("wrote {}", out_path.display());
    Ok(())
}

fn run_one(kind: Kind, bin: &Path, uclient: &Path, peer_port: u16, sc: Scenario) -> anyhow::Result<Outcome> {
    let port = free_port();
    let metrics_port = free_port();
    let dir = std::env::temp_dir().join(format!("turn-bench-{}-{port}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let mut cmd = Command::new(bin);
    match kind {
        Kind::Ours => {
            cmd.args([
                "serve",
                "--listen",
                &format!("127.0.0.1:{port}"),
                "--realm",
                REALM,
                "--auth-secret",
                SECRET,
                "--allow-peer",
                "127.0.0.1",
                "--relay-ports",
                "20000-29999",
                "--rfc5766-channels",
                "--user-quota",
                "100000",
                "--ip-quota",
                "100000",
                "--unauth-rate",
                "100000",
                "--metrics-listen",
                &format!("127.0.0.1:{metrics_port}"),
            ]);
        }
        Kind::Coturn => {
            cmd.args([
                "-n",
                "--listening-ip",
                "127.0.0.1",
                "--listening-port",
                &port.to_string(),
                "--relay-ip",
                "127.0.0.1",
                "--min-port",
                "20000",
                "--max-port",
                "29999",
                "--use-auth-secret",
                "--static-auth-secret",
                SECRET,
                "--realm",
                REALM,
                "--allow-loopback-peers",
                "--no-tls",
                "--no-dtls",
                "--no-cli",
                "--no-stdout-log",
                "--log-file",
                "/dev/null",
                "--pidfile",
            ])
            .arg(dir.join("turnserver.pid"));
        }
    }
    let child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .with_context(|| format!("start {}", bin.display()))?;
    let mut server = Guard(child);
    if kind == Kind::Ours {
        let mut line = String::new();
        BufReader::new(server.0.stdout.take().context("stdout")?).read_line(&mut line)?;
    }
    wait_for_udp_server(port)?;
    let pid = server.0.id();
    std::thread::sleep(Duration::from_millis(300));
    let idle_rss = rss_kib(pid)?;
    let cpu_before = cpu_time(pid)?;
    let alloc_before = (kind == Kind::Ours).then(|| metric(metrics_port, "turn_allocations_created_total"));

    let peak = Arc::new(AtomicU64::new(idle_rss));
    let done = Arc::new(AtomicBool::new(false));
    let sampler = {
        let (peak, done) = (peak.clone(), done.clone());
        std::thread::spawn(move || {
            while !done.load(Ordering::Relaxed) {
                if let Ok(r) = rss_kib(pid) {
                    peak.fetch_max(r, Ordering::Relaxed);
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        })
    };
    let started = Instant::now();
    let out = Command::new(uclient)
        .args([
            "-c",
            "-n",
            &sc.messages.to_string(),
            "-m",
            &sc.clients.to_string(),
            "-l",
            &PAYLOAD.to_string(),
            "-z",
            &sc.interval_ms.to_string(),
            "-p",
            &port.to_string(),
            "-e",
            "127.0.0.1",
            "-r",
            &peer_port.to_string(),
            "-W",
            SECRET,
            "-u",
            "bench",
            "127.0.0.1",
        ])
        .output()?;
    let wall_total = started.elapsed();
    done.store(true, Ordering::Relaxed);
    let _ = sampler.join();
    let cpu = cpu_time(pid)?.saturating_sub(cpu_before);
    let allocations = match alloc_before {
        Some(Ok(before)) => metric(metrics_port, "turn_allocations_created_total")
            .ok()
            .map(|after| after - before),
        _ => None,
    };
    drop(server);
    let _ = std::fs::remove_dir_all(&dir);
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let sent = last_number_after(&text, "tot_send_msgs").unwrap_or(0);
    let received = last_number_after(&text, "tot_recv_msgs").unwrap_or(0);
    // uclient's own transmit time (whole seconds) excludes allocation setup;
    // fall back to the process wall time when it rounds to zero.
    let transmit = last_number_after(&text, "Total transmit time is").unwrap_or(0);
    let wall = if transmit > 0 {
        Duration::from_secs(transmit)
    } else {
        wall_total
    };
    if received == 0 {
        eprintln!(
            "{} {} clients: nothing came back:\n{text}",
            kind.name(),
            sc.clients
        );
    }
    Ok(Outcome {
        allocations,
        sent,
        received,
        wall,
        cpu,
        idle_rss_kib: idle_rss,
        peak_rss_kib: peak.load(Ordering::Relaxed),
    })
}

fn render(rows: &[(Kind, Scenario, Outcome)]) -> String {
    let mut s = String::new();
    s.push_str("## turn-server\n\n");
    s.push_str(&format!(
        "`turn-bench` ({}): `turnutils_uclient -c -l {PAYLOAD}` (Debian coturn {}) through each server to a `turnutils_peer` echo, all on 127.0.0.1, {} CPUs. Relayed packets = 2 x messages echoed back. pps/core = relayed packets / server CPU seconds. Memory per allocation = (peak RSS - idle RSS) / allocations.\n\n",
        today(),
        coturn_version(),
        std::thread::available_parallelism().map_or(0, |n| n.get()),
    ));
    s.push_str("| server | clients | allocations | msgs sent/echoed | relayed pps | Mbit/s | pps per core | CPU s | RSS idle→peak KiB | KiB/allocation |\n");
    s.push_str("|---|---|---|---|---|---|---|---|---|---|\n");
    for (kind, sc, o) in rows {
        let per_alloc = o
            .allocations
            .filter(|&a| a > 0)
            .map(|a| {
                format!(
                    "{:.2}",
                    o.peak_rss_kib.saturating_sub(o.idle_rss_kib) as f64 / a as f64
                )
            })
            .unwrap_or_else(|| "?".into());
        s.push_str(&format!(
            "| {} | {} | {} | {}/{} | {:.0} | {:.1} | {:.0} | {:.2} | {}→{} | {} |\n",
            kind.name(),
            sc.clients,
            o.allocations.map_or("?".into(), |a| a.to_string()),
            o.sent,
            o.received,
            o.pps(),
            o.mbps(),
            o.pps_per_core(),
            o.cpu.as_secs_f64(),
            o.idle_rss_kib,
            o.peak_rss_kib,
            per_alloc,
        ));
    }
    s.push_str("\nThe load generator shares the machine, so relayed pps is bounded by `turnutils_uclient`; pps per core is the efficiency comparison. Targets: pps per core ≥ coturn's, ≤ 4 KiB per allocation.\n");
    s
}

/// Replaces the `## turn-server` section of BENCHMARKS.md (or appends it).
fn write_section(path: &Path, section: &str) -> anyhow::Result<()> {
    let old = std::fs::read_to_string(path).unwrap_or_else(|_| "# Benchmarks\n".to_owned());
    let new = match old.find("## turn-server\n") {
        Some(start) => {
            let rest = &old[start + 1..];
            let end = rest.find("\n## ").map_or(old.len(), |i| start + 1 + i + 1);
            format!("{}{}{}", &old[..start], section, &old[end..])
        }
        None => format!("{}\n{}", old.trim_end_matches('\n').to_owned() + "\n", section),
    };
    std::fs::write(path, new)?;
    Ok(())
}

fn wait_for_udp_server(port: u16) -> anyhow::Result<()> {
    // A STUN Binding request; any response means the server is up.
    let sock = std::net::UdpSocket::bind("127.0.0.1:0")?;
    sock.set_read_timeout(Some(Duration::from_millis(100)))?;
    let mut req = vec![0x00, 0x01, 0x00, 0x00, 0x21, 0x12, 0xa4, 0x42];
    req.extend_from_slice(&[7u8; 12]);
    for _ in 0..100 {
        sock.send_to(&req, ("127.0.0.1", port))?;
        let mut buf = [0u8; 512];
        if sock.recv_from(&mut buf).is_ok() {
            return Ok(());
        }
    }
    bail!("server on port {port} never answered")
}

fn metric(port: u16, name: &str) -> anyhow::Result<u64> {
    use std::io::{Read, Write};
    let mut conn = std::net::TcpStream::connect(("127.0.0.1", port))?;
    conn.write_all(b"GET /metrics HTTP/1.1\r\n\r\n")?;
    let mut text = String::new();
    conn.read_to_string(&mut text)?;
    let v = wave_metrics::value(&text, name).context("metric missing")?;
    Ok(v as u64)
}

fn rss_kib(pid: u32) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .context("VmRSS")
}

/// utime + stime of a process.
fn cpu_time(pid: u32) -> anyhow::Result<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    let after_comm = &stat[stat.rfind(')').context("stat")? + 2..];
    let fields: Vec<&str> = after_comm.split_whitespace().collect();
    // Fields 14 and 15 of stat; index 11 and 12 after the comm field.
    let ticks: u64 = fields[11].parse::<u64>()? + fields[12].parse::<u64>()?;
    // USER_HZ is 100 on every Linux this runs on.
    Ok(Duration::from_millis(ticks * 10))
}

fn last_number_after(text: &str, key: &str) -> Option<u64> {
    text.lines().rev().find_map(|l| {
        let rest = &l[l.find(key)? + key.len()..];
        let digits: String = rest
            .trim_start_matches([' ', '=', '~'])
            .chars()
            .take_while(char::is_ascii_digit)
            .collect();
        digits.parse().ok()
    })
}

fn free_port() -> u16 {
    // A port free for both UDP and TCP (our server binds both).
    loop {
        let udp = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind");
        let port = udp.local_addr().expect("addr").port();
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

fn which(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

fn coturn_version() -> String {
    Command::new("dpkg-query")
        .args(["-W", "-f=${Version}", "coturn"])
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .filter(|v| !v.is_empty())
        .unwrap_or_else(|| "unknown version".into())
}

fn today() -> String {
    Command::new("date")
        .arg("+%Y-%m-%d")
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default()
}

struct Guard(Child);

impl Drop for Guard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
