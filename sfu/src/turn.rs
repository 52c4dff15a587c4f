//! TURN for the node: the embedded `turn-server` on its own thread, and the
//! per-session REST credentials advertised in WHIP/WHEP `Link` headers.

use std::net::{IpAddr, SocketAddr};
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use signaling::{IceServer, IceServerSource, RoomId};
use tokio::sync::oneshot;
use tracing::warn;
use turn_server::LocalAddrs;
use turn_server::filter::PeerFilter;

/// Why the embedded TURN server could not start.
#[derive(Debug, thiserror::Error)]
pub enum TurnError {
    #[error("embedded TURN server on {listen}: {source}")]
    Start {
        listen: SocketAddr,
        source: turn_server::Error,
    },
    #[error("embedded TURN server thread: {0}")]
    Thread(std::io::Error),
    #[error("embedded TURN server on {0} stopped while starting")]
    Died(SocketAddr),
}

/// Time-limited TURN REST credentials (username `expiry:user`, password
/// base64(HMAC-SHA1(secret, username))), fresh for every session.
pub struct RestIceServers {
    secret: String,
    urls: Vec<String>,
    ttl: Duration,
}

impl RestIceServers {
    pub fn new(secret: String, urls: Vec<String>, ttl: Duration) -> Self {
        RestIceServers { secret, urls, ttl }
    }
}

impl IceServerSource for RestIceServers {
    fn ice_servers(&self, _room: &RoomId, identity: Option<&str>, now: SystemTime) -> Vec<IceServer> {
        // The user part is the TURN server's quota key: the token's identity,
        // or on an open node a random per-session name.
        let user = match identity {
            Some(id) => id.to_owned(),
            None => format!("s-{:016x}", rand::random::<u64>()),
        };
        let unix_now = now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
        let creds =
            turn_server::rest_credentials(&self.secret, &user, self.ttl.as_secs(), unix_now, Vec::new());
        vec![IceServer {
            urls: self.urls.clone(),
            username: Some(creds.username),
            credential: Some(creds.password),
        }]
    }
}

/// The embedded TURN server: a dedicated thread with a current-thread
/// runtime (relay readers hand packets to the core without cross-thread
/// wakeups). Stops when [`EmbeddedTurn::stop`] is called or it is dropped.
pub struct EmbeddedTurn {
    addrs: LocalAddrs,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl EmbeddedTurn {
    /// Binds the listeners on the TURN thread and returns once they are bound.
    /// `on_down` is called from the thread if it panics.
    pub async fn start(
        config: turn_server::Config,
        on_down: std::sync::Arc<dyn Fn(usize) + Send + Sync>,
    ) -> Result<EmbeddedTurn, TurnError> {
        let listen = config.listen;
        let (ready_tx, ready_rx) = oneshot::channel();
        let (stop_tx, stop_rx) = oneshot::channel::<()>();
        let thread = std::thread::Builder::new()
            .name("turn".into())
            .spawn(move || {
                let _supervised = crate::worker::Supervised {
                    index: 0,
                    what: "TURN",
                    on_down,
                };
                serve(config, ready_tx, stop_rx)
            })
            .map_err(TurnError::Thread)?;
        match ready_rx.await {
            Ok(Ok(addrs)) => Ok(EmbeddedTurn {
                addrs,
                stop: Some(stop_tx),
                thread: Some(thread),
            }),
            Ok(Err(source)) => {
                let _ = thread.join();
                Err(TurnError::Start { listen, source })
            }
            Err(_) => {
                let _ = thread.join();
                Err(TurnError::Died(listen))
            }
        }
    }

    pub fn local_addrs(&self) -> LocalAddrs {
        self.addrs
    }

    /// Asks the server to stop; [`EmbeddedTurn::join`] waits for it.
    pub fn stop(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
    }

    /// A handle that stops the server from elsewhere (also when dropped).
    pub fn stop_handle(&mut self) -> TurnStop {
        TurnStop(self.stop.take())
    }

    /// Stops the server and waits for its thread; blocks.
    pub fn join(mut self) {
        self.stop();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Stops an [`EmbeddedTurn`] when used or dropped.
pub struct TurnStop(Option<oneshot::Sender<()>>);

impl TurnStop {
    pub fn stop(mut self) {
        if let Some(tx) = self.0.take() {
            let _ = tx.send(());
        }
    }
}

impl Drop for EmbeddedTurn {
    fn drop(&mut self) {
        self.stop();
    }
}

fn serve(
    config: turn_server::Config,
    ready: oneshot::Sender<Result<LocalAddrs, turn_server::Error>>,
    stop: oneshot::Receiver<()>,
) {
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            let _ = ready.send(Err(turn_server::Error::Udp(e)));
            return;
        }
    };
    runtime.block_on(async move {
        let bound = match turn_server::bind(config).await {
            Ok(b) => b,
            Err(e) => {
                let _ = ready.send(Err(e));
                return;
            }
        };
        let addrs = bound.local_addrs();
        if ready.send(Ok(addrs)).is_err() {
            return;
        }
        // Resolves on stop() and when the node drops its handle.
        let shutdown = async {
            let _ = stop.await;
        };
        if let Err(e) = bound.run(shutdown).await {
            warn!(error = %e, "embedded TURN server stopped");
        }
    });
}

/// The only peers the embedded server relays to: the node's media sockets,
/// IP *and* port, as bound (`media`), as advertised (`public_ip`) and, for
/// a socket bound to the unspecified address, as reached on the relay IP.
/// Any other port of the node's host, and any other host, is refused.
pub fn media_allow_list(media: &[SocketAddr], public_ip: Option<IpAddr>, relay_ip: IpAddr) -> PeerFilter {
    let peers = media.iter().flat_map(|a| {
        let bound = match a.ip().is_unspecified() {
            true => (!relay_ip.is_unspecified()).then(|| SocketAddr::new(relay_ip, a.port())),
            false => Some(*a),
        };
        let advertised = public_ip
            .filter(|ip| !ip.is_unspecified())
            .map(|ip| SocketAddr::new(ip, a.port()));
        bound.into_iter().chain(advertised)
    });
    PeerFilter::only(peers)
}

/// The largest stretch of `range` that holds none of the node's media ports
/// on the relay IP. The TURN server never relays to its own relay range, so
/// a media port inside it would be an unreachable peer.
pub fn relay_ports_avoiding(range: (u16, u16), relay_ip: IpAddr, media: &[SocketAddr]) -> (u16, u16) {
    let (lo, hi) = range;
    let mut taken: Vec<u16> = media
        .iter()
        .filter(|a| {
            a.ip().is_unspecified()
                || relay_ip.is_unspecified()
                || a.ip().to_canonical() == relay_ip.to_canonical()
        })
        .map(SocketAddr::port)
        .filter(|p| (lo..=hi).contains(p))
        .collect();
    if taken.is_empty() {
        return range;
    }
    taken.sort_unstable();
    let mut best = (0u32, range);
    let mut start = u32::from(lo);
    // Each taken port closes a stretch; one past `hi` closes the last.
    for p in taken.into_iter().map(u32::from).chain([u32::from(hi) + 1]) {
        if p > start {
            let len = p - start;
            if len > best.0 {
                // Both ends lie inside `range`, so they fit in a u16.
                best = (len, (start as u16, (p - 1) as u16));
            }
        }
        start = p + 1;
    }
    if best.0 == 0 {
        warn!(
            ?range,
            "every relay port is a media port; keeping the range as given"
        );
        return range;
    }
    best.1
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relay_range_skips_media_ports_on_the_relay_ip() {
        let ip: IpAddr = "127.0.0.1".parse().unwrap();
        let media =
            |ports: &[u16]| -> Vec<SocketAddr> { ports.iter().map(|p| SocketAddr::new(ip, *p)).collect() };
        assert_eq!(
            relay_ports_avoiding((49152, 65535), ip, &media(&[40000])),
            (49152, 65535)
        );
        assert_eq!(
            relay_ports_avoiding((49152, 65535), ip, &media(&[50000, 50001])),
            (50002, 65535)
        );
        assert_eq!(
            relay_ports_avoiding((49152, 65535), ip, &media(&[60000])),
            (49152, 59999)
        );
        assert_eq!(
            relay_ports_avoiding((49152, 65535), ip, &media(&[65535])),
            (49152, 65534)
        );
        let elsewhere: Vec<SocketAddr> = vec!["10.0.0.1:50000".parse().unwrap()];
        assert_eq!(
            relay_ports_avoiding((49152, 65535), ip, &elsewhere),
            (49152, 65535)
        );
    }

    #[test]
    fn only_the_media_sockets_are_peers() {
        let media: Vec<SocketAddr> = vec![
            "127.0.0.1:40000".parse().unwrap(),
            "127.0.0.1:40001".parse().unwrap(),
        ];
        let relay: IpAddr = "127.0.0.1".parse().unwrap();
        let filter = media_allow_list(&media, None, relay);
        assert!(filter.check_ip("127.0.0.1".parse().unwrap()).is_ok());
        assert!(filter.check_addr(media[0]).is_ok());
        assert!(filter.check_addr(media[1]).is_ok());
        assert!(filter.check_addr("127.0.0.1:21000".parse().unwrap()).is_err());
        assert!(filter.check_ip("127.0.0.2".parse().unwrap()).is_err());
        assert!(filter.check_ip("10.0.0.1".parse().unwrap()).is_err());
        assert!(
            filter.check_ip("8.8.8.8".parse().unwrap()).is_err(),
            "no other host"
        );

        // Bound on every interface, advertised on a public IP.
        let any: Vec<SocketAddr> = vec!["0.0.0.0:40000".parse().unwrap()];
        let public: IpAddr = "203.0.113.7".parse().unwrap();
        let filter = media_allow_list(&any, Some(public), "10.0.0.5".parse().unwrap());
        assert!(filter.check_addr("10.0.0.5:40000".parse().unwrap()).is_ok());
        assert!(filter.check_addr("203.0.113.7:40000".parse().unwrap()).is_ok());
        assert!(filter.check_addr("203.0.113.7:40001".parse().unwrap()).is_err());
        assert!(filter.check_addr("0.0.0.0:40000".parse().unwrap()).is_err());
    }

    #[test]
    fn each_session_gets_fresh_credentials() {
        let source = RestIceServers::new(
            "s".into(),
            vec!["turn:127.0.0.1:3478".into()],
            Duration::from_secs(60),
        );
        let room = RoomId::parse("r").unwrap();
        let now = UNIX_EPOCH + Duration::from_secs(1000);
        let a = &source.ice_servers(&room, None, now)[0];
        let b = &source.ice_servers(&room, None, now)[0];
        assert_ne!(a.username, b.username);
        assert!(a.username.as_deref().unwrap().starts_with("1060:s-"));
        let named = &source.ice_servers(&room, Some("alice"), now)[0];
        let user = named.username.as_deref().unwrap();
        assert_eq!(user, "1060:alice");
        assert_eq!(
            named.credential.as_deref(),
            Some(turn_server::auth::rest_password("s", user).as_str())
        );
    }
}
