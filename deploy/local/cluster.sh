#!/usr/bin/env bash
# A WAVE cluster on one machine without containers: 3 nats-server processes
# clustered with JetStream, 3 `sfu serve` nodes sharing one auth secret, and
# the standalone `turn-server`, all on 127.0.0.1.
#
#   deploy/local/cluster.sh up       start what is not running (idempotent), print ports
#   deploy/local/cluster.sh status   what runs, where, and whether it answers
#   deploy/local/cluster.sh down     stop everything it started (idempotent)
#
# Environment:
#   WAVE_LOCAL_STATE      state dir: config, logs, pid files, JetStream data
#                         [default: deploy/local/.state]
#   WAVE_LOCAL_PORT_BASE  B: NATS clients B+100..102, NATS routes B+110..112,
#                         NATS monitoring B+120..122, node HTTP B+81..83,
#                         node media UDP B+200, B+210, B+220, TURN B+478,
#                         TURN relays B+300..B+399 [default: 17000]
#   WAVE_LOCAL_WORKERS    media workers per node (each binds its own port) [default: 1]
#   WAVE_BIN_DIR          directory with `sfu` and `turn-server`; without it the
#                         release binaries are built (or found fresh) with cargo
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
STATE="${WAVE_LOCAL_STATE:-$ROOT/deploy/local/.state}"
BASE="${WAVE_LOCAL_PORT_BASE:-17000}"
WORKERS="${WAVE_LOCAL_WORKERS:-1}"
NODES=(1 2 3)

nats_client() { echo $((BASE + 100 + $1 - 1)); }
nats_route() { echo $((BASE + 110 + $1 - 1)); }
nats_monitor() { echo $((BASE + 120 + $1 - 1)); }
node_http() { echo $((BASE + 80 + $1)); }
node_media() { echo $((BASE + 200 + 10 * ($1 - 1))); }
turn_port() { echo $((BASE + 478)); }

die() {
  echo "cluster.sh: $*" >&2
  exit 1
}

# The pid in a pid file, if that process still runs.
running_pid() {
  local file="$STATE/run/$1.pid" pid
  [ -f "$file" ] || return 1
  pid="$(cat "$file")"
  [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null || return 1
  echo "$pid"
}

# True when something accepts TCP connections on 127.0.0.1:$1.
tcp_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# Waits until `curl` of $2 succeeds, or fails naming $1 and its log.
wait_http() {
  local name="$1" url="$2" i
  for i in $(seq 1 150); do
    curl -sf -o /dev/null --max-time 1 "$url" && return 0
    running_pid "$name" >/dev/null || {
      tail -n 20 "$STATE/logs/$name.log" >&2 || true
      die "$name exited during start (log: $STATE/logs/$name.log)"
    }
    sleep 0.1
  done
  tail -n 20 "$STATE/logs/$name.log" >&2 || true
  die "$name did not answer $url within 15 s (log: $STATE/logs/$name.log)"
}

# Starts "$@" in its own session with output to logs/$name.log and records its pid.
spawn() {
  local name="$1"
  shift
  setsid "$@" >>"$STATE/logs/$name.log" 2>&1 </dev/null &
  echo $! >"$STATE/run/$name.pid"
}

binaries() {
  if [ -n "${WAVE_BIN_DIR:-}" ]; then
    BIN="$WAVE_BIN_DIR"
  else
    BIN="${CARGO_TARGET_DIR:-$ROOT/target}/release"
    # A no-op when the binaries are fresh; rebuilds them when sources changed.
    (cd "$ROOT" && cargo build --quiet --release -p sfu -p turn-server) ||
      die "cargo build --release -p sfu -p turn-server failed"
  fi
  [ -x "$BIN/sfu" ] && [ -x "$BIN/turn-server" ] || die "no sfu and turn-server in $BIN"
  command -v nats-server >/dev/null || die "nats-server not found (scripts/setup.sh installs it)"
}

secret() {
  if [ ! -s "$STATE/secret" ]; then
    (umask 077 && head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n' >"$STATE/secret")
  fi
  cat "$STATE/secret"
}

nats_urls() {
  local urls=() i
  for i in "${NODES[@]}"; do urls+=("nats://127.0.0.1:$(nats_client "$i")"); done
  (IFS=,; echo "${urls[*]}")
}

start_nats() {
  local i="$1" name="nats-$1" routes=() j
  running_pid "$name" >/dev/null && return 0
  tcp_open "$(nats_client "$i")" && die "port $(nats_client "$i") is in use (set WAVE_LOCAL_PORT_BASE)"
  for j in "${NODES[@]}"; do
    [ "$j" = "$i" ] || routes+=("nats://127.0.0.1:$(nats_route "$j")")
  done
  mkdir -p "$STATE/$name"
  cat >"$STATE/$name.conf" <<EOF
server_name: $name
listen: 127.0.0.1:$(nats_client "$i")
http: 127.0.0.1:$(nats_monitor "$i")
jetstream { store_dir: "$STATE/$name" }
cluster {
  name: wave
  listen: 127.0.0.1:$(nats_route "$i")
  routes: [$(IFS=,; echo "${routes[*]}")]
}
EOF
  spawn "$name" nats-server -c "$STATE/$name.conf"
}

start_turn() {
  local name=turn
  running_pid "$name" >/dev/null && return 0
  tcp_open "$(turn_port)" && die "port $(turn_port) is in use (set WAVE_LOCAL_PORT_BASE)"
  (umask 077 && cat >"$STATE/$name.toml" <<EOF
listen = "127.0.0.1:$(turn_port)"
realm = "wave"
auth-secret = "$(secret)"
relay-ip = "127.0.0.1"
relay-ports = "$((BASE + 300))-$((BASE + 399))"
# Relays may reach the nodes' media ports on loopback (denied by default).
allow-peers = ["127.0.0.1"]
EOF
  )
  spawn "$name" "$BIN/turn-server" serve --config "$STATE/$name.toml"
}

start_node() {
  local i="$1" name="node-$1"
  running_pid "$name" >/dev/null && return 0
  tcp_open "$(node_http "$i")" && die "port $(node_http "$i") is in use (set WAVE_LOCAL_PORT_BASE)"
  (umask 077 && cat >"$STATE/$name.toml" <<EOF
http = "127.0.0.1:$(node_http "$i")"
media_ip = "127.0.0.1"
media_port = $(node_media "$i")
workers = $WORKERS
auth_secret = "$(secret)"
nats = "$(nats_urls)"
node_id = "$name"
advertise_url = "http://127.0.0.1:$(node_http "$i")"
hlsjs_dir = "$ROOT/web/node_modules/hls.js/dist"
turn_urls = ["turn:127.0.0.1:$(turn_port)?transport=udp", "turn:127.0.0.1:$(turn_port)?transport=tcp"]
turn_secret = "$(secret)"
EOF
  )
  spawn "$name" "$BIN/sfu" serve --config "$STATE/$name.toml"
}

# A token good for every room, to read /v1/nodes and to publish/watch.
admin_token() {
  "$BIN/sfu" token --secret "$(secret)" --room '*' --identity operator --publish --subscribe --ttl 1h
}

# How many nodes node 1's registry lists.
live_nodes() {
  curl -sf --max-time 1 -H "Authorization: Bearer $1" "http://127.0.0.1:$(node_http 1)/v1/nodes" |
    grep -o '"http_url"' | wc -l
}

up() {
  mkdir -p "$STATE/logs" "$STATE/run"
  binaries
  local i token
  for i in "${NODES[@]}"; do start_nats "$i"; done
  for i in "${NODES[@]}"; do wait_http "nats-$i" "http://127.0.0.1:$(nats_monitor "$i")/healthz"; done
  start_turn
  for i in "${NODES[@]}"; do start_node "$i"; done
  for i in "${NODES[@]}"; do wait_http "node-$i" "http://127.0.0.1:$(node_http "$i")/healthz"; done
  token="$(admin_token)"
  for i in $(seq 1 100); do
    [ "$(live_nodes "$token")" -ge "${#NODES[@]}" ] && break
    [ "$i" = 100 ] && die "the registry lists $(live_nodes "$token") of ${#NODES[@]} nodes after 10 s"
    sleep 0.1
  done
  running_pid turn >/dev/null || die "turn-server exited (log: $STATE/logs/turn.log)"
  status
  cat <<EOF

token for every room (1 h): $token
  (or: $BIN/sfu token --secret "\$(cat $STATE/secret)" --room ROOM --identity NAME --publish)
page: http://127.0.0.1:$(node_http 1)/    logs: $STATE/logs/
EOF
}

status() {
  local i pid state any=0
  row() {
    if pid="$(running_pid "$1")"; then
      any=1
      state="running pid $pid"
      if [ -n "${3:-}" ] && ! curl -sf -o /dev/null --max-time 1 "$3"; then
        state="$state, not answering"
      fi
    else
      state="stopped"
    fi
    printf '%-8s %-58s %s\n' "$1" "$2" "$state"
  }
  for i in "${NODES[@]}"; do
    row "nats-$i" "nats://127.0.0.1:$(nats_client "$i") (routes :$(nats_route "$i"), monitor :$(nats_monitor "$i"))" \
      "http://127.0.0.1:$(nats_monitor "$i")/healthz"
  done
  row turn "turn:127.0.0.1:$(turn_port) udp+tcp (relays :$((BASE + 300))-$((BASE + 399)))"
  for i in "${NODES[@]}"; do
    row "node-$i" "http://127.0.0.1:$(node_http "$i") media udp 127.0.0.1:$(node_media "$i")" \
      "http://127.0.0.1:$(node_http "$i")/healthz"
  done
  [ "$any" = 1 ]
}

down() {
  local name pid i left=()
  [ -d "$STATE/run" ] || return 0
  # Nodes first (they leave the registry on the way out), NATS last.
  for name in node-1 node-2 node-3 turn nats-1 nats-2 nats-3; do
    pid="$(running_pid "$name")" || continue
    kill -TERM "$pid" 2>/dev/null || true
  done
  for i in $(seq 1 100); do
    left=()
    for name in node-1 node-2 node-3 turn nats-1 nats-2 nats-3; do
      running_pid "$name" >/dev/null && left+=("$name")
    done
    [ "${#left[@]}" = 0 ] && break
    sleep 0.1
  done
  for name in "${left[@]}"; do
    pid="$(running_pid "$name")" || continue
    echo "cluster.sh: $name (pid $pid) ignored SIGTERM for 10 s; killing it" >&2
    kill -KILL "$pid" 2>/dev/null || true
  done
  rm -f "$STATE"/run/*.pid
  echo "cluster stopped (logs kept in $STATE/logs/)"
}

case "${1:-}" in
  up) up ;;
  down) down ;;
  status) mkdir -p "$STATE/run" && { status || { echo "nothing running"; exit 3; }; } ;;
  *) echo "usage: $0 up|down|status" >&2; exit 2 ;;
esac
