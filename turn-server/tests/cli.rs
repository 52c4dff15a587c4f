//! The command line: `credentials` prints TURN REST JSON the server
//! accepts; `serve` reads a TOML file and rejects unknown keys.

use crate::common;

use std::process::Command;

use common::*;

const BIN: &str = env!("CARGO_BIN_EXE_turn-server");

#[tokio::test]
async fn credentials_prints_rest_json_the_server_accepts() {
    let out = Command::new(BIN)
        .args([
            "credentials",
            "--auth-secret",
            SECRET,
            "--user",
            "carol",
            "--ttl",
            "10m",
        ])
        .output()
        .unwrap();
    assert!(out.status.success());
    let creds: turn_server::RestCredentials = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(creds.ttl, 600);
    assert!(creds.username.ends_with(":carol"));
    assert_eq!(
        creds.password,
        turn_server::auth::rest_password(SECRET, &creds.username)
    );
    assert_eq!(
        creds.uris,
        [
            "turn:127.0.0.1:3478?transport=udp",
            "turn:127.0.0.1:3478?transport=tcp"
        ]
    );

    let server = start(config()).await;
    let sock = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let mut c = Client::new(Conn::Udp(sock), server.addrs.udp, creds.username, creds.password);
    c.allocate().await;
    server.stop().await;
}

#[test]
fn serve_reads_toml_and_flags_override_it() {
    let dir = std::env::temp_dir().join(format!("turn-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let good = dir.join("good.toml");
    std::fs::write(
        &good,
        "listen = \"127.0.0.1:0\"\nrealm = \"from-file\"\nauth-secret = \"s\"\nallow-peers = [\"10.0.0.0/8\"]\nrelay-ports = \"20000-20100\"\n",
    )
    .unwrap();
    let (_guard, line) = spawn_server_binary([
        std::ffi::OsStr::new("serve"),
        "--config".as_ref(),
        good.as_os_str(),
    ]);
    assert!(line.starts_with("turn-server listening udp=127.0.0.1:"), "{line}");

    let bad = dir.join("bad.toml");
    std::fs::write(
        &bad,
        "listen = \"127.0.0.1:0\"\nauth-secret = \"s\"\nlisten-port = 1\n",
    )
    .unwrap();
    let out = Command::new(BIN)
        .args(["serve", "--config"])
        .arg(&bad)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("listen-port"), "names the unknown key: {err}");

    let out = Command::new(BIN)
        .args(["serve", "--listen", "127.0.0.1:0"])
        .output()
        .unwrap();
    assert!(!out.status.success(), "no credentials, no server");
    std::fs::remove_dir_all(&dir).unwrap();
}
