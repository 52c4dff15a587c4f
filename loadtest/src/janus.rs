//! Janus VideoRoom over Janus's REST API (`--target janus`), for a
//! same-run comparison with a peer SFU: the same str0m publisher and
//! viewers, signaled the way Janus wants.
//!
//! Each peer gets its own Janus session and VideoRoom handle. Requests are
//! POSTed to the session or handle URL; asynchronous results (the JSEP
//! answer or offer) come from long-polling the session (`GET ?maxev=1`).
//! The publisher creates its room (string ids: the plugin's `string_ids`)
//! and joins it with the WHIP offer (`joinandconfigure`); a viewer joins as a
//! subscriber of the publisher's feed on one simulcast substream, gets
//! Janus's offer (server-offers), and answers with `start`.

use serde_json::{Value, json};

use crate::error::Error;
use crate::http::Signaling;

/// One peer's Janus session and VideoRoom handle.
#[derive(Debug, Clone)]
pub struct Handle {
    session: String,
    handle: String,
}

/// The feed id of publisher `index` (the publisher names itself).
pub fn feed(index: usize) -> String {
    format!("pub{index}")
}

fn transaction() -> String {
    format!("lt{:016x}", rand::random::<u64>())
}

fn parse(body: &str) -> Result<Value, Error> {
    serde_json::from_str(body).map_err(|e| Error::Http(format!("janus: not JSON ({e}): {body:.200}")))
}

/// Janus's own error, or the plugin's, as a status-like error.
fn check(v: &Value) -> Result<(), Error> {
    if v["janus"] == "error" {
        return Err(Error::Status {
            status: v["error"]["code"].as_u64().unwrap_or(0) as u16,
            reason: v["error"]["reason"].as_str().unwrap_or("janus error").to_owned(),
        });
    }
    let data = &v["plugindata"]["data"];
    if let Some(reason) = data["error"].as_str() {
        return Err(Error::Status {
            status: data["error_code"].as_u64().unwrap_or(0) as u16,
            reason: reason.to_owned(),
        });
    }
    Ok(())
}

async fn post(sig: &Signaling, url: &str, mut body: Value) -> Result<Value, Error> {
    body["transaction"] = Value::String(transaction());
    let v = parse(&sig.json(url, &body.to_string()).await?)?;
    check(&v)?;
    Ok(v)
}

impl Handle {
    /// A new session with a VideoRoom handle; `root` is the REST root (`…/janus`).
    pub async fn attach(sig: &Signaling, root: &str) -> Result<Handle, Error> {
        let root = root.trim_end_matches('/');
        let v = post(sig, root, json!({"janus": "create"})).await?;
        let session = format!("{root}/{}", id(&v)?);
        let v = post(
            sig,
            &session,
            json!({"janus": "attach", "plugin": "janus.plugin.videoroom"}),
        )
        .await?;
        let handle = format!("{session}/{}", id(&v)?);
        Ok(Handle { session, handle })
    }

    /// Sends a plugin request (with a JSEP if given) and returns the
    /// plugin's data and JSEP: at once for synchronous requests, else from
    /// the session's events.
    pub async fn message(
        &self,
        sig: &Signaling,
        body: Value,
        jsep: Option<Value>,
    ) -> Result<(Value, Option<Value>), Error> {
        let tx = transaction();
        let mut req = json!({"janus": "message", "transaction": tx, "body": body});
        if let Some(j) = jsep {
            req["jsep"] = j;
        }
        let v = parse(&sig.json(&self.handle, &req.to_string()).await?)?;
        check(&v)?;
        if v["janus"] != "ack" {
            return Ok((v["plugindata"]["data"].clone(), v.get("jsep").cloned()));
        }
        let poll = format!("{}?maxev=1", self.session);
        loop {
            let body = sig.json(&poll, "").await?;
            let v = parse(&body)?;
            // A long poll answers with one event or an array of them.
            let events = match v {
                Value::Array(a) => a,
                v => vec![v],
            };
            for e in events {
                if e["transaction"] == tx.as_str() && e["janus"] == "event" {
                    check(&e)?;
                    return Ok((e["plugindata"]["data"].clone(), e.get("jsep").cloned()));
                }
                if e["janus"] == "error" {
                    check(&e)?;
                }
            }
        }
    }
}

fn id(v: &Value) -> Result<u64, Error> {
    v["data"]["id"]
        .as_u64()
        .ok_or_else(|| Error::Http(format!("janus: no id in {v}")))
}

fn sdp_of(jsep: Option<Value>, kind: &str) -> Result<String, Error> {
    let j = jsep.ok_or_else(|| Error::Rtc(format!("janus sent no {kind}")))?;
    if j["type"] != kind {
        return Err(Error::Rtc(format!("janus sent a {} for an {kind}", j["type"])));
    }
    j["sdp"]
        .as_str()
        .map(str::to_owned)
        .ok_or_else(|| Error::Rtc(format!("janus {kind} without SDP")))
}

/// Creates `room` if it does not exist (H.264 and Opus, up to 100 publishers, no
/// bitrate cap or periodic keyframe requests), joins it as publisher
/// `feed` with `offer`; returns the answer.
pub async fn publish(
    sig: &Signaling,
    root: &str,
    room: &str,
    feed: &str,
    offer: &str,
) -> Result<String, Error> {
    let h = Handle::attach(sig, root).await?;
    let create = json!({
        "request": "create", "room": room, "publishers": 100, "bitrate": 0, "fir_freq": 0,
        "audiocodec": "opus", "videocodec": "h264",
    });
    match h.message(sig, create, None).await {
        Ok(_) => {}
        // 427: the room exists.
        Err(Error::Status { status: 427, .. }) => {}
        Err(e) => return Err(e),
    }
    let join = json!({"request": "joinandconfigure", "ptype": "publisher", "room": room, "id": feed, "audio": true, "video": true});
    let (_, jsep) = h
        .message(
            sig,
            join,
            Some(json!({"type": "offer", "sdp": offer, "trickle": false})),
        )
        .await?;
    let answer = sdp_of(jsep, "answer")?;
    tracing::debug!(%offer, %answer, "janus publisher");
    Ok(answer)
}

/// Joins `room` as a subscriber of `feed` (video on `substream` when
/// given); returns the handle and Janus's offer.
pub async fn subscribe(
    sig: &Signaling,
    root: &str,
    room: &str,
    feed: &str,
    substream: Option<usize>,
) -> Result<(Handle, String), Error> {
    let h = Handle::attach(sig, root).await?;
    let mut stream = json!({"feed": feed});
    if let Some(s) = substream {
        // Janus 1.1 numbers the rids of `a=simulcast` from the highest
        // (substream 2 is the first listed); ours list the lowest first.
        stream["substream"] = json!(2usize.saturating_sub(s));
    }
    let join = json!({"request": "join", "ptype": "subscriber", "room": room, "streams": [stream]});
    let (_, jsep) = h.message(sig, join, None).await?;
    Ok((h, sdp_of(jsep, "offer")?))
}

/// Answers a subscription's offer and starts its media.
pub async fn start(sig: &Signaling, h: &Handle, answer: &str) -> Result<(), Error> {
    h.message(
        sig,
        json!({"request": "start"}),
        Some(json!({"type": "answer", "sdp": answer, "trickle": false})),
    )
    .await
    .map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_of_janus_and_of_the_plugin() {
        let core = json!({"janus": "error", "error": {"code": 458, "reason": "No such session"}});
        assert!(matches!(check(&core), Err(Error::Status { status: 458, .. })));
        let plugin = json!({"janus": "event", "plugindata": {"data": {"videoroom": "event", "error_code": 427, "error": "Room exists"}}});
        assert!(matches!(check(&plugin), Err(Error::Status { status: 427, .. })));
        assert!(check(&json!({"janus": "ack"})).is_ok());
        assert_eq!(
            sdp_of(Some(json!({"type": "offer", "sdp": "v=0"})), "offer").unwrap(),
            "v=0"
        );
        assert!(sdp_of(Some(json!({"type": "answer", "sdp": "v=0"})), "offer").is_err());
    }
}
