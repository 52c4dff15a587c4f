//! Request routing and the WHIP/WHEP, REST and page handlers.

use std::net::SocketAddr;
use std::sync::Mutex;
use std::time::{Instant, SystemTime};

use hyper::body::Incoming;
use hyper::header::{self, HeaderMap, HeaderValue};
use hyper::{Method, Request, StatusCode};
use tracing::{debug, info, warn};

use crate::auth::{self, AuthError, Claims, Grant, Role};
use crate::bus::Bus;
use crate::chat::{self, Action, ChatError, ChatHub};
use crate::cluster::{Claim, Cluster, NodeId, RoomClaim};
use crate::config::{HttpConfig, IceServer};
use crate::hls_proxy::HlsProxy;
use crate::http::{
    self, ACCEPT_PATCH, ACCEPT_POST, CORS_MAX_AGE, CORS_METHODS, CORS_REQUEST_HEADERS, HttpError, IfMatch,
    JSON, Resp, SDP, SDPFRAG,
};
use crate::media::{
    IcePatch, LayerPref, MediaError, MediaNode, Origin, PlayRequest, PublishRequest, PullRequest, RoomId,
    RoomInfo, SessionId,
};
use crate::metrics::HttpMetrics;
use crate::page;
use crate::ratelimit::{ConnectionGate, RateLimiter};
use crate::sdpfrag;
use crate::sessions::{Kind, Session, Sessions};

/// The `rel` of the WHEP layer-selection extension ([WHEP-EXT]).
const LAYER_REL: &str = "urn:ietf:params:whep:ext:core:layer";

const ENDPOINT_METHODS: &str = "GET, HEAD, POST, OPTIONS";
const SESSION_METHODS: &str = "GET, HEAD, PATCH, DELETE, OPTIONS";
const LAYER_METHODS: &str = "POST, OPTIONS";
const READ_METHODS: &str = "GET, HEAD";
/// Retry-After of a draining node: by then a load balancer polling
/// `/healthz` has taken it out and the retry reaches another node.
const DRAIN_RETRY_SECS: u32 = 3;
/// An overflow redirect goes to a node whose busiest resource is under this.
const OVERFLOW_LOAD: f64 = 0.9;
/// How long an overflow redirect's ticket is good for.
const TICKET_TTL: std::time::Duration = std::time::Duration::from_secs(60);
const CHAT_METHODS: &str = "GET";
const INGEST_METHODS: &str = "POST, OPTIONS";
const PULL_METHODS: &str = "GET, HEAD, DELETE, OPTIONS";
/// The longest pull URL taken (RTSP URLs are short; a camera's path and
/// query fit many times over).
const MAX_PULL_URL: usize = 2048;
const MODERATION_METHODS: &str = "POST, OPTIONS";

/// Everything a request handler needs; one per server, shared by connections.
pub struct Shared<M> {
    pub node: std::sync::Arc<M>,
    pub config: HttpConfig,
    pub sessions: Sessions,
    pub metrics: HttpMetrics,
    /// The registries; `None` serves every room locally without claims.
    pub cluster: Option<Cluster>,
    /// Set when the node drains: no new sessions, `/healthz` 503.
    pub drain: crate::drain::Drain,
    limiter: Option<Mutex<RateLimiter>>,
    /// Open HTTP connections per client and in total.
    pub connections: ConnectionGate,
    /// The chat, opened on first use (on the cluster's bus, else on
    /// `local_bus`).
    pub chat: tokio::sync::OnceCell<ChatHub>,
    local_bus: Bus,
    /// `/hls/` of rooms held by another node.
    hls_proxy: HlsProxy,
}

/// A parsed request path. Names are validated by the handlers, so that a bad
/// room is a 400 and not a 404.
#[derive(Debug)]
enum Route {
    Asset(&'static page::Asset),
    /// `/vendor/hls.js/{file}`: hls.js from its installed package.
    HlsJs(String),
    Healthz,
    Metrics,
    Rooms,
    Room(String),
    Nodes,
    Endpoint(Kind, String),
    Resource(Kind, String, String),
    Layer(String, String),
    /// `/v1/chat/{room}`: WebSocket.
    Chat(String),
    /// `/v1/moderation/{room}/actions`.
    Moderation(String),
    /// `/v1/ingest/{room}`: starts an RTSP pull.
    Ingest(String),
    /// `/v1/ingest/{room}/{id}`: one pull.
    Pull(String, String),
    /// `/hls/...`: served by the node ([`MediaNode::other`]).
    Hls,
    NotFound,
}

impl Route {
    fn parse(path: &str) -> Route {
        if let Some(asset) = page::find(path) {
            return Route::Asset(asset);
        }
        if let Some(file) = path.strip_prefix(page::HLSJS_PREFIX) {
            return Route::HlsJs(file.to_owned());
        }
        let segs: Vec<&str> = path.strip_prefix('/').unwrap_or(path).split('/').collect();
        let kind = |s: &str| match s {
            "whip" => Some(Kind::Whip),
            "whep" => Some(Kind::Whep),
            _ => None,
        };
        match segs[..] {
            ["healthz"] => Route::Healthz,
            ["metrics"] => Route::Metrics,
            ["hls", ..] => Route::Hls,
            ["v1", "rooms"] => Route::Rooms,
            ["v1", "nodes"] => Route::Nodes,
            ["v1", "rooms", room] => Route::Room(room.to_owned()),
            ["v1", "chat", room] => Route::Chat(room.to_owned()),
            ["v1", "moderation", room, "actions"] => Route::Moderation(room.to_owned()),
            ["v1", "ingest", room] => Route::Ingest(room.to_owned()),
            ["v1", "ingest", room, id] => Route::Pull(room.to_owned(), id.to_owned()),
            ["whep", room, session, "layer"] => Route::Layer(room.to_owned(), session.to_owned()),
            [k, ref rest @ ..] => match (kind(k), rest) {
                (Some(kind), [room]) => Route::Endpoint(kind, (*room).to_owned()),
                (Some(kind), [room, session]) => {
                    Route::Resource(kind, (*room).to_owned(), (*session).to_owned())
                }
                _ => Route::NotFound,
            },
            _ => Route::NotFound,
        }
    }

    /// The metrics label: a fixed set, never a room or session name.
    fn label(&self) -> &'static str {
        match self {
            Route::Asset(_) => "page",
            Route::HlsJs(_) => "vendor",
            Route::Healthz => "healthz",
            Route::Metrics => "metrics",
            Route::Rooms => "rooms",
            Route::Room(_) => "room",
            Route::Nodes => "nodes",
            Route::Endpoint(Kind::Whip, _) => "whip",
            Route::Endpoint(Kind::Whep, _) => "whep",
            Route::Resource(Kind::Whip, ..) => "whip_session",
            Route::Resource(Kind::Whep, ..) => "whep_session",
            Route::Layer(..) => "whep_layer",
            Route::Chat(_) => "chat",
            Route::Moderation(_) => "moderation",
            Route::Ingest(_) => "ingest",
            Route::Pull(..) => "ingest_pull",
            Route::Hls => "hls",
            Route::NotFound => "not_found",
        }
    }

    fn room_and_session(&self) -> (Option<&str>, Option<&str>) {
        match self {
            Route::Room(r)
            | Route::Endpoint(_, r)
            | Route::Chat(r)
            | Route::Moderation(r)
            | Route::Ingest(r) => (Some(r), None),
            Route::Resource(_, r, s) | Route::Layer(r, s) | Route::Pull(r, s) => (Some(r), Some(s)),
            _ => (None, None),
        }
    }
}

impl<M: MediaNode> Shared<M> {
    pub fn new(node: std::sync::Arc<M>, config: HttpConfig, sessions: Sessions) -> Self {
        let limiter = config.post_rate_limit.map(|l| Mutex::new(RateLimiter::new(l)));
        let connections = ConnectionGate::new(config.connection_limit);
        Shared {
            connections,
            node,
            config,
            sessions,
            metrics: HttpMetrics::default(),
            cluster: None,
            drain: crate::drain::Drain::default(),
            limiter,
            chat: tokio::sync::OnceCell::new(),
            local_bus: Bus::in_process(),
            hls_proxy: HlsProxy::default(),
        }
    }

    /// Answers one request; never fails, never panics on input.
    pub async fn handle(&self, req: Request<Incoming>, peer: SocketAddr) -> Resp {
        let peer = self.config.trusted_proxies.client(peer, req.headers());
        let cors = self.cors(req.headers());
        let route = Route::parse(req.uri().path());
        let label = route.label();
        let method = req.method().clone();
        let (room, session) = route.room_and_session();
        let room = room.unwrap_or("-").to_owned();
        let session = session.unwrap_or("-").to_owned();
        let answered = match self.check_open_node_request(&req) {
            Ok(()) => self.dispatch(route, req, peer).await,
            Err(e) => Err(e),
        };
        let mut resp = match answered {
            Ok(resp) => resp,
            Err(e) => {
                let (status, reason) = (e.status.as_u16(), &e.detail);
                if e.status.is_server_error() {
                    warn!(route = label, %method, %room, %session, client = %peer.ip(), status, reason, "request failed");
                } else if e.status == StatusCode::TOO_MANY_REQUESTS || e.status == StatusCode::NOT_FOUND {
                    debug!(route = label, %method, %room, %session, client = %peer.ip(), status, reason, "request refused");
                } else {
                    info!(route = label, %method, %room, %session, client = %peer.ip(), status, reason, "request refused");
                }
                e.into_response()
            }
        };
        http::decorate_cors(&mut resp, cors);
        self.metrics.record(label, resp.status());
        resp
    }

    /// Secured nodes let any page read their answers (a token is the
    /// gate); an open node only pages served from loopback.
    fn cors(&self, headers: &HeaderMap) -> http::Cors {
        match headers.get(header::ORIGIN) {
            None => http::Cors::Any,
            Some(o) if self.config.auth_secret.is_some() || http::is_loopback_origin(o) => {
                http::Cors::Echo(o.clone())
            }
            Some(_) => http::Cors::Deny,
        }
    }

    /// An open node trusts whoever reaches it, which must then be this
    /// machine and no web page from elsewhere: a `Host` that is not a
    /// loopback name is a DNS-rebinding page (403), and a state-changing
    /// request (any method but GET, HEAD and OPTIONS, and a WebSocket
    /// upgrade) from a page whose `Origin` is not loopback is a cross-site
    /// request (403). A request without `Host` (HTTP/1.0 tools) or without
    /// `Origin` (not a browser, or same-origin) passes.
    fn check_open_node_request<B>(&self, req: &Request<B>) -> Result<(), HttpError> {
        if self.config.auth_secret.is_some() {
            return Ok(());
        }
        let host = match req.uri().authority() {
            Some(a) => Some(a.as_str()),
            None => req.headers().get(header::HOST).map(|h| h.to_str().unwrap_or("")),
        };
        if let Some(host) = host
            && !http::is_loopback_host(host)
        {
            debug!(host, "open node: request for a non-loopback host refused");
            return Err(HttpError::new(
                StatusCode::FORBIDDEN,
                "this node runs without --auth-secret and answers only requests for a loopback \
                 host (localhost, 127.0.0.1, [::1])",
            ));
        }
        let upgrade = req
            .headers()
            .get(header::UPGRADE)
            .is_some_and(|u| u.as_bytes().eq_ignore_ascii_case(b"websocket"));
        let changes_state = !matches!(*req.method(), Method::GET | Method::HEAD | Method::OPTIONS) || upgrade;
        if changes_state
            && let Some(origin) = req.headers().get(header::ORIGIN)
            && !http::is_loopback_origin(origin)
        {
            debug!(origin = ?origin, "open node: cross-site request refused");
            return Err(HttpError::new(
                StatusCode::FORBIDDEN,
                "this node runs without --auth-secret and accepts changes only from pages served \
                 from loopback",
            ));
        }
        Ok(())
    }

    async fn dispatch(
        &self,
        route: Route,
        req: Request<Incoming>,
        peer: SocketAddr,
    ) -> Result<Resp, HttpError> {
        let method = req.method().clone();
        match route {
            Route::Asset(a) => match method {
                Method::GET | Method::HEAD => Ok(http::with_body(StatusCode::OK, a.content_type, a.body)),
                _ => Err(HttpError::method_not_allowed(READ_METHODS)),
            },
            Route::HlsJs(file) => match method {
                Method::GET | Method::HEAD => page::hlsjs(self.config.hlsjs_dir.as_deref(), &file).await,
                _ => Err(HttpError::method_not_allowed(READ_METHODS)),
            },
            Route::Healthz => match method {
                Method::GET | Method::HEAD if self.drain.is_draining() => {
                    let mut resp = http::with_body(StatusCode::SERVICE_UNAVAILABLE, "text/plain", "draining");
                    resp.headers_mut()
                        .insert(header::RETRY_AFTER, HeaderValue::from(DRAIN_RETRY_SECS));
                    Ok(resp)
                }
                Method::GET | Method::HEAD if !self.node.healthy() => {
                    let mut resp = http::with_body(
                        StatusCode::SERVICE_UNAVAILABLE,
                        "text/plain",
                        "a media worker is down",
                    );
                    resp.headers_mut()
                        .insert(header::RETRY_AFTER, HeaderValue::from(DRAIN_RETRY_SECS));
                    Ok(resp)
                }
                Method::GET | Method::HEAD => Ok(http::with_body(StatusCode::OK, "text/plain", "ok")),
                _ => Err(HttpError::method_not_allowed(READ_METHODS)),
            },
            Route::Metrics => match method {
                Method::GET | Method::HEAD => Ok(self.metrics_page().await),
                _ => Err(HttpError::method_not_allowed(READ_METHODS)),
            },
            Route::Rooms => match method {
                Method::GET | Method::HEAD => self.rooms(req.headers(), None).await,
                _ => Err(HttpError::method_not_allowed(READ_METHODS)),
            },
            Route::Nodes => match method {
                Method::GET | Method::HEAD => self.nodes(req.headers()),
                _ => Err(HttpError::method_not_allowed(READ_METHODS)),
            },
            Route::Room(room) => match method {
                Method::GET | Method::HEAD => self.rooms(req.headers(), Some(parse_room(&room)?)).await,
                _ => Err(HttpError::method_not_allowed(READ_METHODS)),
            },
            Route::Endpoint(kind, room) => {
                let room = parse_room(&room)?;
                match method {
                    Method::OPTIONS => Ok(options(req.headers(), ENDPOINT_METHODS, Some(SDP), None)),
                    Method::POST => self.create(kind, room, req, peer).await,
                    // RFC 9725 §4.1: GET is 2xx without content, never 405.
                    Method::GET => Ok(http::empty(StatusCode::NO_CONTENT)),
                    // draft-ietf-wish-whep §4.1: HEAD is 200 with the SDP content type.
                    Method::HEAD => {
                        let mut resp = http::empty(StatusCode::OK);
                        let h = resp.headers_mut();
                        h.insert(header::CONTENT_TYPE, HeaderValue::from_static(SDP));
                        h.insert(ACCEPT_POST, HeaderValue::from_static(SDP));
                        Ok(resp)
                    }
                    _ => Err(HttpError::method_not_allowed(ENDPOINT_METHODS)),
                }
            }
            Route::Resource(kind, room, session) => {
                let room = parse_room(&room)?;
                let id = SessionId::parse(&session).ok_or_else(HttpError::not_found)?;
                match method {
                    Method::OPTIONS => Ok(options(req.headers(), SESSION_METHODS, Some(SDP), Some(SDPFRAG))),
                    Method::PATCH => self.patch(kind, room, id, req).await,
                    Method::DELETE => self.delete(kind, room, id, req.headers()).await,
                    Method::GET | Method::HEAD => {
                        self.lookup(kind, &room, &id)?;
                        Ok(http::empty(StatusCode::NO_CONTENT))
                    }
                    _ => Err(HttpError::method_not_allowed(SESSION_METHODS)),
                }
            }
            Route::Layer(room, session) => {
                let room = parse_room(&room)?;
                let id = SessionId::parse(&session).ok_or_else(HttpError::not_found)?;
                match method {
                    Method::OPTIONS => Ok(options(req.headers(), LAYER_METHODS, Some(JSON), None)),
                    Method::POST => self.set_layer(room, id, req, peer).await,
                    _ => Err(HttpError::method_not_allowed(LAYER_METHODS)),
                }
            }
            Route::Chat(room) => {
                let room = parse_room(&room)?;
                match method {
                    Method::GET => self.chat(room, req).await,
                    _ => Err(HttpError::method_not_allowed(CHAT_METHODS)),
                }
            }
            Route::Moderation(room) => {
                let room = parse_room(&room)?;
                match method {
                    Method::OPTIONS => Ok(options(req.headers(), MODERATION_METHODS, Some(JSON), None)),
                    Method::POST => self.moderate(room, req, peer).await,
                    _ => Err(HttpError::method_not_allowed(MODERATION_METHODS)),
                }
            }
            Route::Ingest(room) => self.ingest(&room, None, req, peer).await,
            Route::Pull(room, id) => self.ingest(&room, Some(&id), req, peer).await,
            Route::Hls => {
                let (parts, _body) = req.into_parts();
                if let Some(cluster) = self.cluster.as_ref().filter(|c| c.relays())
                    && let Some(room) = HlsProxy::room_of(parts.uri.path())
                    && let Some(owner) = self.hls_proxy.owner_elsewhere(cluster, &room).await
                {
                    return Ok(self.hls_proxy.forward(&owner, &parts).await);
                }
                match self.node.other(Request::from_parts(parts, ())).await {
                    Some(resp) => Ok(resp),
                    None => Err(HttpError::not_found()),
                }
            }
            Route::NotFound => Err(HttpError::not_found()),
        }
    }

    /// `POST /whip/{room}` and `POST /whep/{room}`.
    async fn create(
        &self,
        kind: Kind,
        room: RoomId,
        req: Request<Incoming>,
        peer: SocketAddr,
    ) -> Result<Resp, HttpError> {
        self.admit(peer)?;
        let claims = match (kind, ticket_of(req.uri())?) {
            // An overflow redirect's ticket stands in for the bearer token
            // the browser dropped on the way.
            (Kind::Whep, Some(ticket)) if http::bearer(req.headers()).is_none() => {
                self.authorize_ticket(&ticket, &room)?
            }
            _ => self.authorize(req.headers(), &room, grant_of(kind))?,
        };
        if !http::content_type_is(req.headers(), SDP) {
            return Err(HttpError::unsupported_type(ACCEPT_POST, SDP));
        }
        let origin = match self.owner_elsewhere(kind, &room).await? {
            None => None,
            Some(owner) => match (kind, self.relay_origin(&room, &owner)) {
                // A viewer is served here, fed from the owner over the relay.
                (Kind::Whep, Some(origin)) => Some(origin),
                // A publisher stays here too: this node becomes a second
                // origin of the room, and viewers anywhere are fed from both.
                (Kind::Whip, Some(_)) => None,
                _ => {
                    if self.cluster.as_ref().is_some_and(|c| c.relays()) {
                        // A browser drops its bearer token on this redirect.
                        info!(%room, owner = %owner.node, "the room's node is not in this node's relay view (not live, or it does not relay); redirecting");
                    }
                    return redirect(&owner, req.uri(), &room);
                }
            },
        };
        let (publisher, max_layer) = match kind {
            Kind::Whep => parse_play_query(req.uri().query().unwrap_or(""))?,
            Kind::Whip => (None, None),
        };
        let (parts, body) = req.into_parts();
        let query = parts.uri.query().unwrap_or("").to_owned();
        let offer = self.read_text(body, &parts.headers).await?;
        if !sdpfrag::looks_like_sdp(&offer) {
            return Err(HttpError::bad_request("body is not an SDP offer (no v=0 line)"));
        }
        let remote = sdpfrag::ice_params(&offer);
        let session = SessionId::random();
        let location = self.location(kind, &room, &session);
        // Checked before the node is asked, so a bad base URL cannot leave a session behind.
        let location_value = header_value(&location)?;
        let layer_link = match kind {
            Kind::Whep => Some(header_value(&format!("<{location}/layer>; rel=\"{LAYER_REL}\""))?),
            Kind::Whip => None,
        };
        let identity = claims.map(|c| c.sub);
        let answer = match kind {
            Kind::Whip => {
                let req = PublishRequest {
                    room: room.clone(),
                    session: session.clone(),
                    identity: identity.clone(),
                    offer,
                };
                self.node.publish(req).await?
            }
            Kind::Whep => {
                let req = PlayRequest {
                    room: room.clone(),
                    session: session.clone(),
                    identity: identity.clone(),
                    offer,
                    publisher,
                    max_layer,
                    origin,
                };
                match self.node.play(req).await {
                    Ok(answer) => answer,
                    Err(MediaError::Overloaded { retry_after_secs }) => {
                        return self.overflow(&room, &query, identity.as_deref(), retry_after_secs);
                    }
                    Err(e) => return Err(e.into()),
                }
            }
        };
        let local = sdpfrag::ice_params(&answer);
        let (etag, etag_value) = new_etag();
        let ice_servers = self.ice_servers(&room, identity.as_deref());
        self.sessions.insert(
            session.clone(),
            Session {
                room: room.clone(),
                kind,
                etag,
                identity,
                remote_ufrag: remote.ufrag,
                remote_pwd: remote.pwd,
                ice_options: local.ice_options,
            },
        );
        info!(%room, %session, kind = kind.as_str(), "session created");

        let mut resp = http::with_body(StatusCode::CREATED, SDP, answer);
        let h = resp.headers_mut();
        h.insert(header::LOCATION, location_value);
        h.insert(header::ETAG, etag_value);
        h.insert(ACCEPT_PATCH, HeaderValue::from_static(SDPFRAG));
        for server in &ice_servers {
            for link in ice_server_links(server) {
                match HeaderValue::from_str(&link) {
                    Ok(v) => {
                        h.append(header::LINK, v);
                    }
                    Err(_) => warn!(%room, "ICE server link is not a valid header value; skipped"),
                }
            }
        }
        if let Some(link) = layer_link {
            h.append(header::LINK, link);
        }
        Ok(resp)
    }

    /// `/v1/ingest/{room}` (`id` `None`) and `/v1/ingest/{room}/{id}`.
    async fn ingest(
        &self,
        room: &str,
        id: Option<&str>,
        req: Request<Incoming>,
        peer: SocketAddr,
    ) -> Result<Resp, HttpError> {
        let room = parse_room(room)?;
        let id = match id {
            Some(id) => Some(SessionId::parse(id).ok_or_else(HttpError::not_found)?),
            None => None,
        };
        match (req.method().clone(), id) {
            (Method::OPTIONS, None) => Ok(options(req.headers(), INGEST_METHODS, Some(JSON), None)),
            (Method::OPTIONS, Some(_)) => Ok(options(req.headers(), PULL_METHODS, None, None)),
            (Method::POST, None) => self.start_pull(room, req, peer).await,
            (Method::GET | Method::HEAD, Some(id)) => {
                self.authorize(req.headers(), &room, Grant::Publish)?;
                let state = self
                    .node
                    .pull(&room, &id)
                    .await
                    .ok_or_else(HttpError::not_found)?;
                Ok(http::json(StatusCode::OK, &state))
            }
            (Method::DELETE, Some(id)) => {
                self.authorize(req.headers(), &room, Grant::Publish)?;
                if !self.node.stop_pull(&room, &id).await? {
                    return Err(HttpError::not_found());
                }
                info!(%room, pull = %id, "RTSP pull deleted");
                Ok(http::empty(StatusCode::OK))
            }
            (_, None) => Err(HttpError::method_not_allowed(INGEST_METHODS)),
            (_, Some(_)) => Err(HttpError::method_not_allowed(PULL_METHODS)),
        }
    }

    /// `POST /v1/ingest/{room}` `{"url": "rtsp://…", "transport": "tcp"|"udp"}`:
    /// 201 with the pull's URL and state. The URL's credentials stay in
    /// the node: no log line, answer or listing carries them.
    async fn start_pull(
        &self,
        room: RoomId,
        req: Request<Incoming>,
        peer: SocketAddr,
    ) -> Result<Resp, HttpError> {
        #[derive(serde::Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Body {
            url: String,
            #[serde(default)]
            transport: Option<String>,
        }
        self.admit(peer)?;
        let claims = self.authorize(req.headers(), &room, Grant::Publish)?;
        if !http::content_type_is(req.headers(), JSON) {
            return Err(HttpError::unsupported_type(ACCEPT_POST, JSON));
        }
        let (parts, body) = req.into_parts();
        let text = self.read_text(body, &parts.headers).await?;
        // serde's message may quote the URL: only its position is answered.
        let body: Body = serde_json::from_str(&text).map_err(|e| {
            HttpError::bad_request(format!(
                "body is not {{\"url\": \"rtsp://…\", \"transport\": \"tcp\"|\"udp\"}} (line {}, column {})",
                e.line(),
                e.column()
            ))
        })?;
        let scheme_ok = body
            .url
            .get(..7)
            .is_some_and(|s| s.eq_ignore_ascii_case("rtsp://"));
        if !scheme_ok || body.url.len() > MAX_PULL_URL {
            return Err(HttpError::bad_request(format!(
                "url must be rtsp://… of at most {MAX_PULL_URL} bytes"
            )));
        }
        let tcp = match body.transport.as_deref() {
            None | Some("tcp") => true,
            Some("udp") => false,
            Some(_) => return Err(HttpError::bad_request("transport must be \"tcp\" or \"udp\"")),
        };
        let id = SessionId::random();
        let base = self.base_url();
        let location = header_value(&format!("{base}/v1/ingest/{room}/{id}"))?;
        let until = claims
            .as_ref()
            .map(|c| std::time::UNIX_EPOCH + std::time::Duration::from_secs(c.exp));
        self.node
            .start_pull(PullRequest {
                room: room.clone(),
                id: id.clone(),
                url: body.url,
                tcp,
                identity: claims.map(|c| c.sub),
                until,
            })
            .await?;
        info!(%room, pull = %id, tcp, "RTSP pull started");
        let state = self.node.pull(&room, &id).await.unwrap_or_default();
        let mut resp = http::json(StatusCode::CREATED, &state);
        resp.headers_mut().insert(header::LOCATION, location);
        Ok(resp)
    }

    /// `PATCH` on a session: trickle (204) or ICE restart (200) (RFC 9725 §4.3).
    async fn patch(
        &self,
        kind: Kind,
        room: RoomId,
        id: SessionId,
        req: Request<Incoming>,
    ) -> Result<Resp, HttpError> {
        let claims = self.authorize(req.headers(), &room, grant_of(kind))?;
        let session = self.lookup(kind, &room, &id)?;
        Self::check_owner(claims.as_ref(), &session)?;
        if !http::content_type_is(req.headers(), SDPFRAG) {
            return Err(HttpError::unsupported_type(ACCEPT_PATCH, SDPFRAG));
        }
        let (parts, body) = req.into_parts();
        let text = self.read_text(body, &parts.headers).await?;
        let mut frag =
            sdpfrag::parse(&text).map_err(|e| HttpError::bad_request(format!("bad sdpfrag: {e}")))?;
        // RFC 9725 §4.3.1-2: PATCH is always conditional; trickle without
        // If-Match is not tolerated.
        let Some(cond) = IfMatch::from_headers(&parts.headers) else {
            return Err(HttpError::new(
                StatusCode::PRECONDITION_REQUIRED,
                "PATCH needs If-Match",
            ));
        };
        if !cond.matches(&session.etag) {
            return Err(HttpError::new(
                StatusCode::PRECONDITION_FAILED,
                "If-Match does not match the ICE session",
            ));
        }
        let restart = match (&frag.ufrag, &frag.pwd) {
            (Some(u), Some(p)) => {
                session.remote_ufrag.as_ref() != Some(u) || session.remote_pwd.as_ref() != Some(p)
            }
            _ => false,
        };
        if !restart {
            let patch = IcePatch::Trickle {
                candidates: frag.candidates,
                end_of_candidates: frag.end_of_candidates,
            };
            self.node
                .patch(&id, patch)
                .await
                .map_err(|e| self.forget_if_gone(&id, e))?;
            debug!(%room, session = %id, dropped = frag.dropped, "trickle");
            return Ok(http::empty(StatusCode::NO_CONTENT));
        }
        let (Some(ufrag), Some(pwd)) = (frag.ufrag.clone(), frag.pwd.clone()) else {
            // `restart` is true only when both are present.
            return Err(HttpError::bad_request("restart needs a=ice-ufrag and a=ice-pwd"));
        };
        let patch = IcePatch::Restart {
            ufrag: ufrag.clone(),
            pwd: pwd.clone(),
            candidates: std::mem::take(&mut frag.candidates),
        };
        let answer = self
            .node
            .patch(&id, patch)
            .await
            .map_err(|e| self.forget_if_gone(&id, e))?;
        let Some(answer) = answer else {
            return Err(
                MediaError::Internal("node returned no credentials for an ICE restart".into()).into(),
            );
        };
        let (etag, etag_value) = new_etag();
        let updated = self.sessions.update(&id, |s| {
            s.etag = etag;
            s.remote_ufrag = Some(ufrag);
            s.remote_pwd = Some(pwd);
        });
        if !updated {
            return Err(HttpError::not_found());
        }
        info!(%room, session = %id, "ICE restart");
        let body = sdpfrag::restart_answer(&answer, session.ice_options.as_deref(), &frag);
        let mut resp = http::with_body(StatusCode::OK, SDPFRAG, body);
        resp.headers_mut().insert(header::ETAG, etag_value);
        Ok(resp)
    }

    /// `DELETE` on a session: 200, then 404. Entity tags are ignored (RFC 9725 §4.3.1).
    async fn delete(
        &self,
        kind: Kind,
        room: RoomId,
        id: SessionId,
        headers: &HeaderMap,
    ) -> Result<Resp, HttpError> {
        let claims = self.authorize(headers, &room, grant_of(kind))?;
        let session = self.lookup(kind, &room, &id)?;
        Self::check_owner(claims.as_ref(), &session)?;
        let Some(session) = self.sessions.remove(&id) else {
            return Err(HttpError::not_found());
        };
        match self.node.delete(&id).await {
            // The node had already ended it: the client's intent holds.
            Ok(()) | Err(MediaError::NotFound) => {
                info!(%room, session = %id, kind = kind.as_str(), "session deleted");
                Ok(http::empty(StatusCode::OK))
            }
            Err(e) => {
                self.sessions.insert(id, session);
                Err(e.into())
            }
        }
    }

    /// `POST /whep/{room}/{session}/layer` ([WHEP-EXT] layer selection).
    async fn set_layer(
        &self,
        room: RoomId,
        id: SessionId,
        req: Request<Incoming>,
        peer: SocketAddr,
    ) -> Result<Resp, HttpError> {
        self.rate_limit(peer)?;
        let claims = self.authorize(req.headers(), &room, Grant::Subscribe)?;
        let session = self.lookup(Kind::Whep, &room, &id)?;
        Self::check_owner(claims.as_ref(), &session)?;
        if req.headers().contains_key(header::CONTENT_TYPE) && !http::content_type_is(req.headers(), JSON) {
            return Err(HttpError::unsupported_type(ACCEPT_POST, JSON));
        }
        let (parts, body) = req.into_parts();
        let text = self.read_text(body, &parts.headers).await?;
        let layer = parse_layer_request(&text)?;
        self.node
            .set_layer(&id, layer.clone())
            .await
            .map_err(|e| self.forget_if_gone(&id, e))?;
        info!(%room, session = %id, ?layer, "layer set");
        Ok(http::empty(StatusCode::OK))
    }

    async fn rooms(&self, headers: &HeaderMap, room: Option<RoomId>) -> Result<Resp, HttpError> {
        if self.config.auth_secret.is_some() {
            // Listings name sessions and identities: a token for the room
            // (or for every room, to list them all) is required.
            let claims = self.claims(headers)?;
            let allowed =
                claims.room == auth::ANY_ROOM || room.as_ref().is_some_and(|r| r.as_str() == claims.room);
            if !allowed {
                return Err(
                    HttpError::new(StatusCode::FORBIDDEN, "token does not grant this listing").with(
                        header::WWW_AUTHENTICATE,
                        HeaderValue::from_static(r#"Bearer realm="wave", error="insufficient_scope""#),
                    ),
                );
            }
        }
        let rooms = self.node.rooms().await;
        match room {
            None => Ok(http::json(StatusCode::OK, &serde_json::json!({ "rooms": rooms }))),
            Some(room) => {
                let owner = match &self.cluster {
                    Some(cluster) => cluster.owner(&room).await.unwrap_or_else(|e| {
                        debug!(%room, error = %e, "room registry unreachable; listing local state only");
                        None
                    }),
                    None => None,
                };
                let local = rooms.into_iter().find(|r| r.room == room);
                let presence = match self.chat_hub().await {
                    Ok(hub) => chat::presence::room(hub, &room).await.unwrap_or_else(|e| {
                        debug!(%room, error = %e, "presence unreachable; listing without it");
                        chat::RoomPresence::default()
                    }),
                    Err(_) => chat::RoomPresence::default(),
                };
                let pulls = self.node.room_pulls(&room).await;
                if local.is_none() && owner.is_none() && presence.is_empty() && pulls.is_empty() {
                    return Err(HttpError::new(
                        StatusCode::NOT_FOUND,
                        format!("room {room} is not active"),
                    ));
                }
                let relay = self.node.room_links(&room).await;
                // A room hosted elsewhere is listed with its owner and no local peers.
                let info = local.unwrap_or_else(|| RoomInfo {
                    room,
                    publishers: Vec::new(),
                    viewers: Vec::new(),
                });
                let mut value = serde_json::to_value(&info).unwrap_or_default();
                value["owner"] = serde_json::to_value(&owner).unwrap_or_default();
                value["presence"] = serde_json::to_value(&presence).unwrap_or_default();
                value["relay"] = relay;
                value["ingest"] = serde_json::Value::Array(pulls);
                Ok(http::json(StatusCode::OK, &value))
            }
        }
    }

    /// The node a WHIP/WHEP `POST` belongs on when it is not this one. WHIP
    /// claims the room (the node taking its first publisher owns it); WHEP
    /// follows the claim. During a bus outage a node keeps serving the rooms
    /// it owns, serves WHEP locally, and refuses to take new rooms (503).
    async fn owner_elsewhere(&self, kind: Kind, room: &RoomId) -> Result<Option<RoomClaim>, HttpError> {
        let Some(cluster) = &self.cluster else {
            return Ok(None);
        };
        if cluster.owns(room) {
            return Ok(None);
        }
        match kind {
            Kind::Whip => {
                // With the relay a publisher stays on the node it reached:
                // viewers anywhere are fed from it, no redirect.
                if !cluster.relays()
                    && let Some(placed) = self.placed_elsewhere(cluster, room).await
                {
                    return Ok(Some(placed));
                }
                self.claim(cluster, room).await
            }
            Kind::Whep => match cluster.owner(room).await {
                Ok(Some(owner)) if owner.node != *cluster.node_id() => Ok(Some(owner)),
                Ok(_) => Ok(None),
                Err(e) => {
                    debug!(%room, error = %e, "room registry unreachable; serving WHEP locally");
                    Ok(None)
                }
            },
        }
    }

    /// WHEP at a full node: 307 to the least loaded node with room (its
    /// `Location` carries a ticket, a subscribe token for the room valid a
    /// minute: browsers drop `Authorization` on a cross-origin redirect), or
    /// 503 + `Retry-After` with the room's LL-HLS as the alternate when
    /// every node is full.
    fn overflow(
        &self,
        room: &RoomId,
        query: &str,
        identity: Option<&str>,
        retry: u32,
    ) -> Result<Resp, HttpError> {
        let target = self.cluster.as_ref().and_then(|c| {
            c.live_nodes()
                .into_iter()
                .filter(|n| n.id != *c.node_id() && n.load.factor() < OVERFLOW_LOAD)
                .min_by(|a, b| a.load.factor().total_cmp(&b.load.factor()))
        });
        let Some(target) = target else {
            let hls = header_value(&format!(
                "</hls/{room}/index.m3u8>; rel=\"alternate\"; type=\"application/vnd.apple.mpegurl\""
            ))?;
            let cluster_full = self.cluster.as_ref().is_some_and(|c| c.live_nodes().len() > 1);
            let detail = if cluster_full {
                "every node is full; the room's LL-HLS is the alternate".to_owned()
            } else {
                MediaError::Overloaded {
                    retry_after_secs: retry,
                }
                .to_string()
            };
            return Err(
                HttpError::retry_after(StatusCode::SERVICE_UNAVAILABLE, detail, retry)
                    .with(header::LINK, hls),
            );
        };
        let mut params: Vec<String> = query
            .split('&')
            .filter(|p| !p.is_empty() && !p.starts_with("ticket="))
            .map(str::to_owned)
            .collect();
        if let Some(secret) = &self.config.auth_secret {
            let mut c = Claims::new(
                room.as_str(),
                identity.unwrap_or("anonymous"),
                TICKET_TTL,
                SystemTime::now(),
            );
            c.subscribe = true;
            c.aud = self.config.token_policy.audience.clone().map(auth::Audience::One);
            params.push(format!("ticket={}", auth::issue_claims(secret, &c)));
        }
        let query = if params.is_empty() {
            String::new()
        } else {
            format!("?{}", params.join("&"))
        };
        let url = format!("{}/whep/{room}{query}", target.http_url.trim_end_matches('/'));
        debug!(%room, node = %target.id, "node full, redirecting the viewer");
        let mut resp = http::with_body(
            StatusCode::TEMPORARY_REDIRECT,
            "text/plain; charset=utf-8",
            format!("this node is full; node {} has room\n", target.id),
        );
        resp.headers_mut().insert(header::LOCATION, header_value(&url)?);
        Ok(resp)
    }

    /// A ticket from an overflow redirect, checked as a subscribe token.
    fn authorize_ticket(&self, ticket: &str, room: &RoomId) -> Result<Option<Claims>, HttpError> {
        let Some(secret) = &self.config.auth_secret else {
            return Ok(None);
        };
        let claims = auth::verify_with(secret, &self.config.token_policy, ticket, SystemTime::now())?;
        if !claims.allows(room, Grant::Subscribe) {
            return Err(AuthError::Forbidden {
                room: room.clone(),
                grant: Grant::Subscribe,
            }
            .into());
        }
        Ok(Some(claims))
    }

    /// Where this node is fed the room from over the relay, when both it and
    /// the owner relay: the owner, or the relay between them in the room's
    /// tree.
    fn relay_origin(&self, room: &RoomId, owner: &RoomClaim) -> Option<Origin> {
        let cluster = self.cluster.as_ref().filter(|c| c.relays())?;
        let info = cluster.relay_parent(room, &owner.node, &self.node.unreachable_relays())?;
        let source = cluster.live_node(&owner.node)?.relay_fingerprint?;
        Some(Origin {
            node: info.id.to_string(),
            relay_addr: info.relay_addr?,
            fingerprint: info.relay_fingerprint?,
            source,
        })
    }

    /// A room nobody holds goes to the live node weighted rendezvous
    /// hashing picks (overloaded nodes skipped); `None` when that is this
    /// node, when every node is overloaded (this one takes it rather than
    /// refusing), or when the registry cannot say (the claim decides).
    async fn placed_elsewhere(&self, cluster: &Cluster, room: &RoomId) -> Option<RoomClaim> {
        match cluster.owner(room).await {
            Ok(None) => {}
            // Held (the claim answers with the holder, or takes over a dead
            // one), or the registry is down (the claim answers 503).
            Ok(Some(_)) | Err(_) => return None,
        }
        let target = cluster.placement(room)?;
        if target.id == *cluster.node_id() {
            return None;
        }
        debug!(%room, node = %target.id, "placing the new room on another node");
        Some(RoomClaim {
            node: target.id,
            http_url: target.http_url,
        })
    }

    async fn claim(&self, cluster: &Cluster, room: &RoomId) -> Result<Option<RoomClaim>, HttpError> {
        match cluster.claim(room).await {
            Ok(Claim::Local) => Ok(None),
            Ok(Claim::Elsewhere(owner)) => Ok(Some(owner)),
            Err(e) => {
                warn!(%room, error = %e, "cannot claim the room");
                Err(HttpError::retry_after(
                    StatusCode::SERVICE_UNAVAILABLE,
                    format!("room registry unreachable, cannot place room {room}"),
                    2,
                ))
            }
        }
    }

    /// `GET /v1/nodes`: the cluster as this node sees it (the last
    /// heartbeat's view), or this node alone without a bus.
    fn nodes(&self, headers: &HeaderMap) -> Result<Resp, HttpError> {
        if self.config.auth_secret.is_some() {
            let claims = self.claims(headers)?;
            if claims.room != auth::ANY_ROOM {
                return Err(HttpError::new(
                    StatusCode::FORBIDDEN,
                    "listing nodes needs a token for every room",
                ));
            }
        }
        let nodes = match &self.cluster {
            Some(cluster) => cluster.live_nodes(),
            None => Vec::new(),
        };
        let me = self.cluster.as_ref().map(|c| c.node_id().to_string());
        Ok(http::json(
            StatusCode::OK,
            &serde_json::json!({ "node": me, "nodes": nodes }),
        ))
    }

    /// The chat, opened on the first call; 503 while its bus is unreachable.
    pub async fn chat_hub(&self) -> Result<&ChatHub, HttpError> {
        self.chat
            .get_or_try_init(|| async {
                let config = self.config.chat.clone();
                match &self.cluster {
                    Some(c) => ChatHub::in_cluster(c.clone(), config).await,
                    None => ChatHub::new(self.local_bus.clone(), NodeId::sanitize("local"), config).await,
                }
            })
            .await
            .map_err(|e| {
                warn!(error = %e, "chat cannot open its stream and buckets");
                HttpError::retry_after(StatusCode::SERVICE_UNAVAILABLE, "chat unavailable", 2)
            })
    }

    /// Publishes this node's presence (retrying until the chat opens).
    pub async fn run_presence(self: std::sync::Arc<Self>) {
        let hub = loop {
            match self.chat_hub().await {
                Ok(hub) => break hub.clone(),
                Err(_) => tokio::time::sleep(self.config.chat.presence_interval).await,
            }
        };
        chat::presence::run(hub, self.node.clone()).await;
    }

    /// `GET /v1/chat/{room}`: admits the member, then answers 101 and runs
    /// the WebSocket (RFC 6455 §4.2) on the upgraded connection.
    async fn chat(&self, room: RoomId, req: Request<Incoming>) -> Result<Resp, HttpError> {
        let key = websocket_key(req.headers())?;
        let (identity, role) = self.chat_member(req.headers(), req.uri().query(), &room)?;
        let hub = self.chat_hub().await?.clone();
        let admission = hub.admit(&room, identity, role).await.map_err(chat_error)?;
        let upgrade = hyper::upgrade::on(req);
        tokio::spawn(async move {
            match upgrade.await {
                Ok(upgraded) => hub.serve(admission, hyper_util::rt::TokioIo::new(upgraded)).await,
                Err(e) => {
                    debug!(error = %e, "chat upgrade failed");
                    hub.abandon(admission).await;
                }
            }
        });
        let mut resp = http::empty(StatusCode::SWITCHING_PROTOCOLS);
        let h = resp.headers_mut();
        h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        h.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
        h.insert(header::SEC_WEBSOCKET_ACCEPT, header_value(&key)?);
        Ok(resp)
    }

    /// Who is joining: the token's identity and role (`?token=` or
    /// `Authorization`), or a generated anonymous identity on an open node.
    fn chat_member(
        &self,
        headers: &HeaderMap,
        query: Option<&str>,
        room: &RoomId,
    ) -> Result<(String, Role), HttpError> {
        let Some(secret) = &self.config.auth_secret else {
            return Ok((format!("anon-{:08x}", rand::random::<u32>()), Role::Anonymous));
        };
        let token = match query_param(query.unwrap_or(""), "token")? {
            Some(t) => t,
            None => http::bearer(headers).ok_or(AuthError::Missing)?.to_owned(),
        };
        let claims = auth::verify_with(secret, &self.config.token_policy, &token, SystemTime::now())?;
        if !claims.allows_chat(room) {
            return Err(HttpError::new(
                StatusCode::FORBIDDEN,
                format!("token does not grant the chat of room {room}"),
            ));
        }
        let role = claims.chat_role();
        Ok((claims.sub, role))
    }

    /// `POST /v1/moderation/{room}/actions`: a streamer's or moderator's
    /// ban, unban, timeout or delete, applied on every node.
    async fn moderate(
        &self,
        room: RoomId,
        req: Request<Incoming>,
        peer: SocketAddr,
    ) -> Result<Resp, HttpError> {
        self.rate_limit(peer)?;
        let by = match &self.config.auth_secret {
            None if self.config.chat.open_moderation => "open-node".to_owned(),
            None => {
                debug!(%room, %peer, "moderation refused: open node without --open-moderation");
                return Err(HttpError::new(
                    StatusCode::FORBIDDEN,
                    "moderation needs tokens: configure --auth-secret (or pass --open-moderation \
                     to let anyone moderate this open node)",
                ));
            }
            Some(_) => {
                let claims = self.claims(req.headers())?;
                if !claims.allows_chat(&room) || !claims.chat_role().moderates() {
                    return Err(HttpError::new(
                        StatusCode::FORBIDDEN,
                        format!("moderating room {room} needs a streamer or moderator token for it"),
                    ));
                }
                claims.sub
            }
        };
        if req.headers().contains_key(header::CONTENT_TYPE) && !http::content_type_is(req.headers(), JSON) {
            return Err(HttpError::unsupported_type(ACCEPT_POST, JSON));
        }
        let (parts, body) = req.into_parts();
        let text = self.read_text(body, &parts.headers).await?;
        let action = Action::parse(&text).map_err(HttpError::bad_request)?;
        let hub = self.chat_hub().await?;
        hub.moderate(&room, action.clone(), &by)
            .await
            .map_err(chat_error)?;
        Ok(http::json(
            StatusCode::OK,
            &serde_json::json!({ "room": room, "applied": action }),
        ))
    }

    async fn metrics_page(&self) -> Resp {
        let mut out = String::new();
        self.metrics
            .render(self.sessions.len(), self.connections.open(), &mut out);
        if let Some(hub) = self.chat.get() {
            hub.render_metrics(&mut out);
        }
        self.node.metrics(&mut out).await;
        http::with_body(StatusCode::OK, "text/plain; version=0.0.4; charset=utf-8", out)
    }

    /// Whether a request that starts something new (a session, a pull)
    /// is taken: a draining node takes none (checked before claiming
    /// anything: it takes no new room), then the POST rate limit.
    fn admit(&self, peer: SocketAddr) -> Result<(), HttpError> {
        if self.drain.is_draining() {
            return Err(HttpError::retry_after(
                StatusCode::SERVICE_UNAVAILABLE,
                "node draining, retry (another node)",
                DRAIN_RETRY_SECS,
            ));
        }
        self.rate_limit(peer)
    }

    fn rate_limit(&self, peer: SocketAddr) -> Result<(), HttpError> {
        let Some(limiter) = &self.limiter else {
            return Ok(());
        };
        let mut limiter = limiter.lock().unwrap_or_else(|p| p.into_inner());
        limiter.check(peer.ip(), Instant::now()).map_err(|wait| {
            let secs = u32::try_from(wait.as_secs())
                .unwrap_or(u32::MAX)
                .saturating_add(1);
            HttpError::retry_after(
                StatusCode::TOO_MANY_REQUESTS,
                "too many requests from this address",
                secs,
            )
        })
    }

    /// Checks the bearer token for `grant` in `room`; `None` on an open node.
    fn authorize(
        &self,
        headers: &HeaderMap,
        room: &RoomId,
        grant: Grant,
    ) -> Result<Option<Claims>, HttpError> {
        if self.config.auth_secret.is_none() {
            return Ok(None);
        }
        let claims = self.claims(headers)?;
        if !claims.allows(room, grant) {
            return Err(AuthError::Forbidden {
                room: room.clone(),
                grant,
            }
            .into());
        }
        Ok(Some(claims))
    }

    fn claims(&self, headers: &HeaderMap) -> Result<Claims, HttpError> {
        let Some(secret) = &self.config.auth_secret else {
            return Err(AuthError::Missing.into());
        };
        let token = http::bearer(headers).ok_or(AuthError::Missing)?;
        Ok(auth::verify_with(
            secret,
            &self.config.token_policy,
            token,
            SystemTime::now(),
        )?)
    }

    /// A session belongs to the identity that created it: another valid
    /// token for the same room cannot patch or end it.
    fn check_owner(claims: Option<&Claims>, session: &Session) -> Result<(), HttpError> {
        let (Some(claims), Some(owner)) = (claims, &session.identity) else {
            return Ok(());
        };
        if &claims.sub != owner {
            return Err(HttpError::new(
                StatusCode::FORBIDDEN,
                "session belongs to another identity",
            ));
        }
        Ok(())
    }

    /// The session at this URL, which must have been created by `kind` in `room`.
    fn lookup(&self, kind: Kind, room: &RoomId, id: &SessionId) -> Result<Session, HttpError> {
        match self.sessions.get(id) {
            Some(s) if s.kind == kind && &s.room == room => Ok(s),
            _ => Err(HttpError::not_found()),
        }
    }

    /// A node that no longer knows a session: drop it here too.
    fn forget_if_gone(&self, id: &SessionId, e: MediaError) -> HttpError {
        if matches!(e, MediaError::NotFound) {
            self.sessions.remove(id);
        }
        e.into()
    }

    async fn read_text(&self, body: Incoming, headers: &HeaderMap) -> Result<String, HttpError> {
        http::read_text(
            body,
            headers,
            self.config.max_body_bytes,
            self.config.body_timeout,
        )
        .await
    }

    /// `--public-base-url` without its trailing `/` (empty: relative URLs).
    fn base_url(&self) -> &str {
        let base = self.config.public_base_url.as_deref().unwrap_or("");
        base.trim_end_matches('/')
    }

    fn location(&self, kind: Kind, room: &RoomId, session: &SessionId) -> String {
        let base = self.base_url();
        format!("{base}/{}/{room}/{session}", kind.as_str())
    }

    fn ice_servers(&self, room: &RoomId, identity: Option<&str>) -> Vec<IceServer> {
        let mut servers = self.config.ice_servers.clone();
        if let Some(source) = &self.config.ice_server_source {
            servers.extend(source.ice_servers(room, identity, SystemTime::now()));
        }
        servers
    }
}

fn chat_error(e: ChatError) -> HttpError {
    match e {
        ChatError::Banned { .. } => HttpError::new(StatusCode::FORBIDDEN, e.to_string()),
        ChatError::Bus(_) => {
            debug!(error = %e, "chat bus unavailable");
            HttpError::retry_after(StatusCode::SERVICE_UNAVAILABLE, "chat unavailable, retry", 2)
        }
    }
}

/// Checks a WebSocket opening handshake (RFC 6455 §4.2.1) and returns the
/// `Sec-WebSocket-Accept` value. A plain GET is 426.
fn websocket_key(headers: &HeaderMap) -> Result<String, HttpError> {
    let has_token = |name: header::HeaderName, token: &str| {
        headers.get_all(name).iter().any(|v| {
            v.to_str()
                .is_ok_and(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
        })
    };
    if !has_token(header::UPGRADE, "websocket") || !has_token(header::CONNECTION, "upgrade") {
        return Err(HttpError::new(
            StatusCode::UPGRADE_REQUIRED,
            "this is a WebSocket endpoint (Upgrade: websocket)",
        )
        .with(header::UPGRADE, HeaderValue::from_static("websocket")));
    }
    if headers
        .get(header::SEC_WEBSOCKET_VERSION)
        .map(HeaderValue::as_bytes)
        != Some(b"13")
    {
        return Err(
            HttpError::new(StatusCode::UPGRADE_REQUIRED, "Sec-WebSocket-Version must be 13")
                .with(header::SEC_WEBSOCKET_VERSION, HeaderValue::from_static("13")),
        );
    }
    let Some(key) = headers.get(header::SEC_WEBSOCKET_KEY) else {
        return Err(HttpError::bad_request("missing Sec-WebSocket-Key"));
    };
    Ok(tokio_tungstenite::tungstenite::handshake::derive_accept_key(
        key.as_bytes(),
    ))
}

/// `?ticket=` of a request (an overflow redirect's).
fn ticket_of(uri: &hyper::Uri) -> Result<Option<String>, HttpError> {
    query_param(uri.query().unwrap_or(""), "ticket")
}

/// The percent-decoded value of `name` in a query string.
fn query_param(query: &str, name: &str) -> Result<Option<String>, HttpError> {
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        if k == name {
            return percent_decode(v)
                .map(Some)
                .ok_or_else(|| HttpError::bad_request(format!("bad percent-encoding in {k}=")));
        }
    }
    Ok(None)
}

fn grant_of(kind: Kind) -> Grant {
    match kind {
        Kind::Whip => Grant::Publish,
        Kind::Whep => Grant::Subscribe,
    }
}

/// 307 to the same path and query on the owner (WHIP RFC 9725 §4.5 and WHEP
/// allow redirects; 307 keeps the method and body).
fn redirect(owner: &RoomClaim, uri: &hyper::Uri, room: &RoomId) -> Result<Resp, HttpError> {
    let path = uri.path_and_query().map_or(uri.path(), |p| p.as_str());
    let target = format!("{}{path}", owner.http_url.trim_end_matches('/'));
    let location = header_value(&target)?;
    debug!(%room, owner = %owner.node, %target, "redirecting to the room's node");
    let mut resp = http::with_body(
        StatusCode::TEMPORARY_REDIRECT,
        "text/plain; charset=utf-8",
        format!("room {room} is hosted by node {}\n", owner.node),
    );
    resp.headers_mut().insert(header::LOCATION, location);
    Ok(resp)
}

fn parse_room(s: &str) -> Result<RoomId, HttpError> {
    RoomId::parse(s).ok_or_else(|| HttpError::bad_request("room names are 1-64 of A-Z a-z 0-9 _ . -"))
}

fn header_value(s: &str) -> Result<HeaderValue, HttpError> {
    HeaderValue::from_str(s).map_err(|_| MediaError::Internal(format!("not a header value: {s:?}")).into())
}

/// A strong entity tag naming one ICE session: 64 random bits, quoted.
fn new_etag() -> (String, HeaderValue) {
    let tag = format!("\"{:016x}\"", rand::random::<u64>());
    // Invariant: quotes and hex digits are visible ASCII, always a valid header value.
    let value = HeaderValue::from_str(&tag).expect("a quoted hex tag is a valid header value");
    (tag, value)
}

/// The reply to OPTIONS. A CORS preflight (RFC: Fetch) gets 204 and the
/// Access-Control-Allow-* set; a plain OPTIONS gets 200 with `Allow`.
/// Neither needs a token, and neither advertises ICE servers (RFC 9725 §4.6).
/// Both list the CORS methods: Eyevinn's client enables trickle only when a
/// plain OPTIONS shows PATCH in `Access-Control-Allow-Methods`.
fn options(
    headers: &HeaderMap,
    allow: &'static str,
    accept_post: Option<&'static str>,
    accept_patch: Option<&'static str>,
) -> Resp {
    let preflight =
        headers.contains_key(header::ORIGIN) && headers.contains_key(header::ACCESS_CONTROL_REQUEST_METHOD);
    let mut resp = http::empty(if preflight {
        StatusCode::NO_CONTENT
    } else {
        StatusCode::OK
    });
    let h = resp.headers_mut();
    h.insert(header::ALLOW, HeaderValue::from_static(allow));
    h.insert(
        header::ACCESS_CONTROL_ALLOW_METHODS,
        HeaderValue::from_static(CORS_METHODS),
    );
    if preflight {
        h.insert(
            header::ACCESS_CONTROL_ALLOW_HEADERS,
            HeaderValue::from_static(CORS_REQUEST_HEADERS),
        );
        h.insert(
            header::ACCESS_CONTROL_MAX_AGE,
            HeaderValue::from_static(CORS_MAX_AGE),
        );
    }
    if let Some(t) = accept_post {
        h.insert(ACCEPT_POST, HeaderValue::from_static(t));
    }
    if let Some(t) = accept_patch {
        h.insert(ACCEPT_PATCH, HeaderValue::from_static(t));
    }
    resp
}

/// `Link` values for one server (RFC 9725 §4.6): one per URL, with the TURN
/// credentials as quoted parameters.
fn ice_server_links(server: &IceServer) -> Vec<String> {
    server
        .urls
        .iter()
        .map(|url| {
            let mut link = format!("<{url}>; rel=\"ice-server\"");
            if let Some(user) = &server.username {
                link.push_str(&format!("; username=\"{}\"", quote(user)));
            }
            if let Some(cred) = &server.credential {
                link.push_str(&format!(
                    "; credential=\"{}\"; credential-type=\"password\"",
                    quote(cred)
                ));
            }
            link
        })
        .collect()
}

/// Escapes a quoted-string (RFC 9110 §5.6.4).
fn quote(s: &str) -> String {
    s.replace('\\', "\\\\").replace('"', "\\\"")
}

/// WHEP query parameters: `publisher=` picks a publisher by identity or
/// session id, `layer=` caps the simulcast layer. Others are ignored.
fn parse_play_query(query: &str) -> Result<(Option<String>, Option<LayerPref>), HttpError> {
    let mut publisher = None;
    let mut layer = None;
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        let v = percent_decode(v)
            .ok_or_else(|| HttpError::bad_request(format!("bad percent-encoding in {k}=")))?;
        match k {
            "publisher" if !v.is_empty() => {
                if v.len() > 256 {
                    return Err(HttpError::bad_request("publisher= is longer than 256 bytes"));
                }
                publisher = Some(v);
            }
            "layer" if !v.is_empty() => {
                layer =
                    Some(LayerPref::parse(&v).ok_or_else(|| {
                        HttpError::bad_request("layer= must be low, mid, high, 0-2 or a rid")
                    })?);
            }
            _ => {}
        }
    }
    Ok((publisher, layer))
}

/// Decodes `%XX` and `+` of a query value; `None` on bad escapes or bad UTF-8.
fn percent_decode(s: &str) -> Option<String> {
    let mut out = Vec::with_capacity(s.len());
    let mut bytes = s.bytes();
    while let Some(b) = bytes.next() {
        match b {
            b'%' => {
                let hex = [bytes.next()?, bytes.next()?];
                let hex = std::str::from_utf8(&hex).ok()?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
            }
            b'+' => out.push(b' '),
            b => out.push(b),
        }
    }
    String::from_utf8(out).ok()
}

/// `{"maxLayer": "low|mid|high"}`, `{"rid": "q"}`, `{"spatialLayerId": 0}`
/// or `{}` (automatic). Other fields (`mediaId`, ...) are ignored.
fn parse_layer_request(text: &str) -> Result<Option<LayerPref>, HttpError> {
    let value: serde_json::Value =
        serde_json::from_str(text).map_err(|e| HttpError::bad_request(format!("bad JSON: {e}")))?;
    let Some(obj) = value.as_object() else {
        return Err(HttpError::bad_request("layer request must be a JSON object"));
    };
    let field = |name: &str| -> Result<Option<String>, HttpError> {
        match obj.get(name) {
            None | Some(serde_json::Value::Null) => Ok(None),
            Some(serde_json::Value::String(s)) => Ok(Some(s.clone())),
            Some(serde_json::Value::Number(n)) => Ok(Some(n.to_string())),
            Some(_) => Err(HttpError::bad_request(format!(
                "{name} must be a string or number"
            ))),
        }
    };
    let wanted = match (field("maxLayer")?, field("rid")?, field("spatialLayerId")?) {
        (Some(v), _, _) | (None, Some(v), _) | (None, None, Some(v)) => v,
        (None, None, None) => return Ok(None),
    };
    LayerPref::parse(&wanted)
        .map(Some)
        .ok_or_else(|| HttpError::bad_request(format!("unknown layer {wanted:?}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes() {
        assert!(matches!(Route::parse("/"), Route::Asset(_)));
        assert!(matches!(Route::parse("/whip/live"), Route::Endpoint(Kind::Whip, r) if r == "live"));
        assert!(
            matches!(Route::parse("/whep/live/abc"), Route::Resource(Kind::Whep, r, s) if r == "live" && s == "abc")
        );
        assert!(matches!(Route::parse("/whep/live/abc/layer"), Route::Layer(..)));
        assert!(matches!(Route::parse("/whip/live/abc/layer"), Route::NotFound));
        assert!(matches!(Route::parse("/whip/live/"), Route::Resource(..)));
        assert!(matches!(Route::parse("/v1/rooms/x"), Route::Room(_)));
        assert!(matches!(Route::parse("/v1/chat/x"), Route::Chat(r) if r == "x"));
        assert!(matches!(Route::parse("/v1/moderation/x/actions"), Route::Moderation(r) if r == "x"));
        assert!(matches!(Route::parse("/v1/moderation/x"), Route::NotFound));
        assert!(matches!(Route::parse("/nope"), Route::NotFound));
        assert!(matches!(Route::parse(""), Route::NotFound));
    }

    #[test]
    fn play_query() {
        assert_eq!(parse_play_query("").unwrap(), (None, None));
        assert_eq!(
            parse_play_query("publisher=alice%20b&layer=low&x=1").unwrap(),
            (Some("alice b".into()), Some(LayerPref::Low))
        );
        assert_eq!(
            parse_play_query("layer=q").unwrap().1,
            Some(LayerPref::Rid("q".into()))
        );
        assert!(parse_play_query("layer=%%%").is_err());
        assert!(parse_play_query("layer=way+too+high!").is_err());
    }

    #[test]
    fn layer_requests() {
        assert_eq!(parse_layer_request("{}").unwrap(), None);
        assert_eq!(
            parse_layer_request(r#"{"maxLayer":"high"}"#).unwrap(),
            Some(LayerPref::High)
        );
        assert_eq!(
            parse_layer_request(r#"{"mediaId":"1","rid":"q"}"#).unwrap(),
            Some(LayerPref::Rid("q".into()))
        );
        assert_eq!(
            parse_layer_request(r#"{"spatialLayerId":1}"#).unwrap(),
            Some(LayerPref::Mid)
        );
        assert!(parse_layer_request("[]").is_err());
        assert!(parse_layer_request("{").is_err());
        assert!(parse_layer_request(r#"{"maxLayer":"!!"}"#).is_err());
        assert!(parse_layer_request(r#"{"rid":{}}"#).is_err());
    }

    #[test]
    fn query_and_layer_garbage_never_panics() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand::rngs::StdRng::seed_from_u64(11);
        let alphabet = "%&=+layerpublishr{}[]\":,0123456789abcdefmaxLayerrid\u{e9}";
        let chars: Vec<char> = alphabet.chars().collect();
        for _ in 0..20_000 {
            let len = rng.random_range(0..64);
            let s: String = (0..len)
                .map(|_| chars[rng.random_range(0..chars.len())])
                .collect();
            let _ = parse_play_query(&s);
            let _ = parse_layer_request(&s);
            let _ = percent_decode(&s);
            let _ = Route::parse(&s);
        }
    }

    #[test]
    fn ice_server_link_format() {
        let turn = IceServer {
            urls: vec!["turn:turn.example.net:3478?transport=udp".into()],
            username: Some("1700000000:alice".into()),
            credential: Some("pa\"ss".into()),
        };
        assert_eq!(
            ice_server_links(&turn),
            [
                "<turn:turn.example.net:3478?transport=udp>; rel=\"ice-server\"; username=\"1700000000:alice\"; \
              credential=\"pa\\\"ss\"; credential-type=\"password\""
            ]
        );
        let stun = IceServer {
            urls: vec!["stun:a".into(), "stun:b".into()],
            username: None,
            credential: None,
        };
        assert_eq!(
            ice_server_links(&stun),
            ["<stun:a>; rel=\"ice-server\"", "<stun:b>; rel=\"ice-server\""]
        );
    }

    #[test]
    fn etags_are_strong_and_distinct() {
        let ((a, _), (b, _)) = (new_etag(), new_etag());
        assert!(a.starts_with('"') && a.ends_with('"') && a.len() == 18);
        assert_ne!(a, b);
    }
}
