// WAVE demo page: room chat and live viewer count over /v1/chat/{room}.
// Plain JS, no build step; separate from app.js (media) on purpose.
//
// Programmatic API (browser tests):
//   waveChat.join(room, { token? }) -> Promise<{ identity, role, node }>
//   waveChat.say(text)               sends one message
//   waveChat.leave()
//   waveChat.messages()              -> [{ id, ts, sender: { identity, role }, text }]
//   waveChat.presence()              -> { ts, publishers, viewers, chat, chat_roles,
//                                         joined?, left?, truncated?, participants? } | null
//
// The server sends JSON frames tagged by `type`: welcome, history, message,
// delete, presence (at most once a second), error, pong. A token goes in
// `?token=` because browsers cannot set headers on a WebSocket.
'use strict';

(() => {
  const state = { ws: null, messages: [], presence: null, welcome: null };
  const $ = (id) => document.getElementById(id);

  function render() {
    const list = $('chat-messages');
    if (!list) return;
    list.replaceChildren(...state.messages.map((m) => {
      const li = document.createElement('li');
      li.dataset.id = m.id;
      const who = document.createElement('b');
      who.textContent = `${m.sender.identity}${m.sender.role === 'streamer' ? ' ★' : ''}: `;
      li.append(who, document.createTextNode(m.text));
      return li;
    }));
    list.scrollTop = list.scrollHeight;
    const p = state.presence;
    $('chat-count').textContent = p
      ? `${p.viewers} watching · ${p.chat} in chat${p.publishers.length ? ` · live: ${p.publishers.join(', ')}` : ''}`
      : '';
  }

  function status(text, isError = false) {
    const el = $('chat-status');
    if (!el) return;
    el.textContent = text;
    el.classList.toggle('error', isError);
  }

  function onFrame(f) {
    switch (f.type) {
      case 'welcome': state.welcome = f; status(`joined as ${f.identity} (${f.role}) on node ${f.node}`); break;
      case 'history': state.messages = f.messages; break;
      case 'message': state.messages.push(f); state.messages = state.messages.slice(-500); break;
      case 'delete': state.messages = state.messages.filter((m) => m.id !== f.id); break;
      case 'presence': state.presence = f; break;
      case 'error': status(`${f.code}: ${f.message}`, true); break;
      default: break;
    }
    render();
  }

  function join(room, opts = {}) {
    leave();
    const proto = location.protocol === 'https:' ? 'wss:' : 'ws:';
    const query = opts.token ? `?token=${encodeURIComponent(opts.token)}` : '';
    const ws = new WebSocket(`${proto}//${location.host}/v1/chat/${encodeURIComponent(room)}${query}`);
    state.ws = ws;
    state.messages = [];
    state.presence = null;
    return new Promise((resolve, reject) => {
      ws.onmessage = (e) => {
        let f;
        try { f = JSON.parse(e.data); } catch { return; }
        onFrame(f);
        if (f.type === 'welcome') resolve({ identity: f.identity, role: f.role, node: f.node });
      };
      ws.onclose = (e) => {
        status(`chat closed (${e.code}${e.reason ? `: ${e.reason}` : ''})`, e.code !== 1000);
        reject(new Error(`chat closed with ${e.code}`));
        if (state.ws === ws) state.ws = null;
        setChatButtons();
      };
      setChatButtons();
    });
  }

  function say(text) {
    if (!state.ws || state.ws.readyState !== WebSocket.OPEN) throw new Error('not in a chat');
    state.ws.send(JSON.stringify({ type: 'message', text }));
  }

  function leave() {
    if (state.ws) state.ws.close(1000);
    state.ws = null;
    setChatButtons();
  }

  function setChatButtons() {
    const joined = !!state.ws;
    if ($('chat-join')) $('chat-join').disabled = joined;
    if ($('chat-leave')) $('chat-leave').disabled = !joined;
    if ($('chat-send')) $('chat-send').disabled = !joined;
  }

  function wireChat() {
    const panel = $('chat-panel');
    if (!panel) return;
    panel.hidden = false;
    const join_ = $('chat-join-form');
    const params = new URLSearchParams(location.search);
    if (params.get('room')) join_.room.value = params.get('room');
    if (params.get('token')) join_.token.value = params.get('token');
    join_.addEventListener('submit', (e) => {
      e.preventDefault();
      join(join_.room.value, { token: join_.token.value.trim() }).catch(() => {});
    });
    $('chat-leave').addEventListener('click', leave);
    const send = $('chat-send-form');
    send.addEventListener('submit', (e) => {
      e.preventDefault();
      const text = send.text.value;
      if (!text.trim()) return;
      try { say(text); send.text.value = ''; } catch (err) { status(err.message, true); }
    });
    setChatButtons();
  }

  window.waveChat = {
    join, say, leave,
    messages: () => state.messages.slice(),
    presence: () => state.presence,
  };
  if (document.readyState === 'loading') document.addEventListener('DOMContentLoaded', wireChat);
  else wireChat();
})();
