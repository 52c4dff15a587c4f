//! Entry points shared by the fuzz targets (`fuzz/`, nightly) and the
//! regression tests that replay `fuzz/regressions/` on stable: each takes
//! arbitrary bytes and must never panic.
//!
//! - [`sdpfrag`]: a PATCH body as trickle-ice-sdpfrag (and as an offer's
//!   ICE lines), and the restart answer written from it;
//! - [`chat_frame`]: a chat WebSocket text frame as a client sends it, its
//!   content checks and the frame fanned out from it; the same bytes as a
//!   moderator action and as the chat's bus payloads.

use std::collections::BTreeSet;

use wave_vocab::IceRestartAnswer;

use crate::auth::Role;
use crate::chat::quota::LeaseRequest;
use crate::chat::{self, Action, ChatMessage, ClientFrame, NodePresence, Sender, ServerFrame, TextFilter};
use crate::sdpfrag;

/// Input: the body, UTF-8 as the route requires.
pub fn sdpfrag(data: &[u8]) {
    let Ok(body) = std::str::from_utf8(data) else {
        return;
    };
    let _ = sdpfrag::looks_like_sdp(body);
    let ice = sdpfrag::ice_params(body);
    let Ok(frag) = sdpfrag::parse(body) else {
        return;
    };
    assert_eq!(
        frag.ufrag.is_some(),
        frag.pwd.is_some(),
        "half credentials accepted"
    );
    let answer = IceRestartAnswer {
        ufrag: "node".into(),
        pwd: "nodepasswordnodepassword".into(),
        candidates: frag.candidates.clone(),
        ice_lite: true,
    };
    let text = sdpfrag::restart_answer(&answer, ice.ice_options.as_deref(), &frag);
    // What the node writes parses again as a fragment with its candidates.
    let again = sdpfrag::parse(&text).expect("the restart answer is a valid sdpfrag");
    assert_eq!(again.candidates.len(), frag.candidates.len());
}

/// Input: a text frame (UTF-8, as WebSocket text frames are).
pub fn chat_frame(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let filter = TextFilter {
        max_chars: 500,
        banned_words: BTreeSet::from(["badword".to_owned(), "ärger".to_owned()]),
        block_links: true,
    };
    match chat::read_frame(text) {
        Ok(ClientFrame::Message { text, client_id }) => {
            for role in [Role::Anonymous, Role::Moderator] {
                if chat::check_message(&filter, role, &text, client_id.as_deref()).is_err() {
                    continue;
                }
                // What every member receives reads back as what was sent.
                let frame = ServerFrame::Message(ChatMessage {
                    id: "0123456789abcdef".into(),
                    ts: 1,
                    room: "r".into(),
                    sender: Sender {
                        identity: "id".into(),
                        role,
                    },
                    text: text.clone(),
                    client_id: client_id.clone(),
                });
                let json = serde_json::to_string(&frame).expect("a frame serializes");
                let back: ServerFrame = serde_json::from_str(&json).expect("a frame reads back");
                assert_eq!(back, frame);
            }
        }
        Ok(ClientFrame::Ping) => {}
        Err(refused) => assert!(!refused.message.is_empty()),
    }
    let _ = Action::parse(text);
    // From other nodes, over the bus.
    let _ = serde_json::from_str::<ServerFrame>(text);
    let _ = serde_json::from_str::<NodePresence>(text);
    if let Ok(request) = serde_json::from_str::<LeaseRequest>(text) {
        let _ = request.check();
    }
}
