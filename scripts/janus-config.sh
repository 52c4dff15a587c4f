#!/usr/bin/env bash
# Writes a loopback-only Janus configuration (HTTP REST transport on
# 127.0.0.1:${JANUS_PORT:-8088}, VideoRoom plugin only, ICE-lite on this
# host's own address)
# into the directory given, for `scripts/bench-peer.sh`. Rooms are created
# by the load tester (`--target janus`) with string ids.
# Usage: scripts/janus-config.sh <dir>; then: janus -F <dir> -C <dir>/janus.jcfg
set -euo pipefail
dir=${1:?usage: janus-config.sh <dir>}
port=${JANUS_PORT:-8088}
# Janus skips loopback interfaces when it gathers ICE candidates, so media
# uses this host's own first IPv4 address (still local: the kernel routes a
# local address over lo; nothing leaves the machine).
ice_ip=${JANUS_ICE_IP:-$(hostname -I | tr ' ' '\n' | grep -m1 -E '^[0-9]+\.[0-9]+\.[0-9]+\.[0-9]+$')}
# Static pool of media loops (Janus's advice for many handles; default is a thread per handle).
loops=${JANUS_EVENT_LOOPS:-2}
libdir=$(dirname "$(dpkg -L janus 2>/dev/null | grep -m1 '/janus/plugins/libjanus_videoroom.so')" 2>/dev/null || true)
libdir=${libdir%/plugins}
[ -n "$libdir" ] || libdir=/usr/lib/x86_64-linux-gnu/janus
mkdir -p "$dir"
cat > "$dir/janus.jcfg" <<CFG
general: {
	configs_folder = "$dir"
	plugins_folder = "$libdir/plugins"
	transports_folder = "$libdir/transports"
	events_folder = "$libdir/events"
	loggers_folder = "$libdir/loggers"
	debug_level = 3
	session_timeout = 0
	event_loops = $loops
	hide_dependencies = true
}
certificates: {
}
media: {
	rtp_port_range = "20000-60000"
	no_media_timer = 5
}
nat: {
	nice_debug = false
	ice_lite = true
	ice_enforce_list = "$ice_ip"
	ignore_mdns = true
}
plugins: {
	disable = "libjanus_audiobridge.so,libjanus_duktape.so,libjanus_echotest.so,libjanus_lua.so,libjanus_nosip.so,libjanus_recordplay.so,libjanus_sip.so,libjanus_streaming.so,libjanus_textroom.so,libjanus_videocall.so,libjanus_voicemail.so"
}
transports: {
	disable = "libjanus_websockets.so,libjanus_pfunix.so,libjanus_mqtt.so,libjanus_nanomsg.so,libjanus_rabbitmq.so"
}
loggers: {
	disable = "libjanus_jsonlog.so"
}
events: {
	broadcast = false
	disable = "libjanus_gelfevh.so,libjanus_mqttevh.so,libjanus_nanomsgevh.so,libjanus_rabbitmqevh.so,libjanus_sampleevh.so,libjanus_wsevh.so"
}
CFG
cat > "$dir/janus.transport.http.jcfg" <<CFG
general: {
	json = "compact"
	base_path = "/janus"
	http = true
	port = $port
	ip = "127.0.0.1"
	https = false
}
admin: {
	admin_http = false
	admin_https = false
}
cors: {
}
CFG
cat > "$dir/janus.plugin.videoroom.jcfg" <<CFG
general: {
	string_ids = true
}
CFG
echo "$dir"
