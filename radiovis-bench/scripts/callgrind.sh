#!/bin/sh
# User-space instructions per delivery of a fan-out server, counted by valgrind's
# callgrind: repeatable whatever else the machine runs (BENCHMARKS.md, "CPU per
# delivery: instruction counts").
#
#   radiovis-bench/scripts/callgrind.sh radiovis|baseline|baseline-channel [out-dir]
#
# Runs the server under callgrind twice, with the same N subscribers (K=10 topics) and
# LO, then HI messages from radiovis-bench (--addr); the difference of the two totals
# divided by the difference of the deliveries is the cost of one delivery, without the
# start-up and the connections. N, LO, HI, RATE can be set in the environment.
# Needs target/release/radiovis-server and radiovis-bench (cargo build --release).
set -eu
kind=${1:?radiovis, baseline or baseline-channel}
out=${2:-/tmp/radiovis-callgrind}
n=${N:-1000}
k=10
lo=${LO:-20}
hi=${HI:-220}
rate=${RATE:-20}
bin=${BIN:-target/release}
mkdir -p "$out"
dir="$out/directory.toml"
cat > "$dir" <<'TOML'
[[station]]
login = "1.radio1"
passcode = "secret1"
channels = ["/topic/dab/4e1/4001/4001/0/"]
TOML
ulimit -n "$(ulimit -Hn)"
total() {
    callgrind_annotate "$1" 2>/dev/null | awk '/PROGRAM TOTALS/ { gsub(",", "", $1); print $1 }'
}
for m in "$lo" "$hi"; do
    port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
    file="$out/$kind-n$n-m$m.callgrind"
    case "$kind" in
        radiovis)
            RUST_LOG=warn valgrind --tool=callgrind --callgrind-out-file="$file" \
                "$bin/radiovis-server" --stomp-ip 127.0.0.1 --stomp-port "$port" --watchdog off \
                --directory "$dir" --max-connections-per-address 10000000 --idle-timeout 0 \
                >"$out/$kind-m$m.log" 2>&1 &
            ;;
        baseline|baseline-channel)
            design=lean
            [ "$kind" = baseline-channel ] && design=channel
            valgrind --tool=callgrind --callgrind-out-file="$file" \
                "$bin/radiovis-bench" baseline-server --addr "127.0.0.1:$port" --design "$design" \
                >"$out/$kind-m$m.log" 2>&1 &
            ;;
        *) echo "unknown server $kind" >&2; exit 2 ;;
    esac
    pid=$!
    i=0
    until python3 -c "import socket; socket.create_connection(('127.0.0.1',$port),1)" 2>/dev/null; do
        i=$((i + 1))
        [ $i -lt 600 ] || { echo "server does not listen" >&2; kill "$pid"; exit 1; }
        sleep 0.1
    done
    "$bin/radiovis-bench" --addr "127.0.0.1:$port" -n "$n" -k "$k" -r "$rate" -m "$m" \
        --settle-ms 2000 --drain-timeout 60 >"$out/$kind-m$m.bench.txt" 2>&1 \
        || { echo "bench failed: $out/$kind-m$m.bench.txt" >&2; kill "$pid"; exit 1; }
    callgrind_control -d "$pid" >/dev/null 2>&1 || true
    sleep 1
    kill -TERM "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
done
# Deliveries: message j goes to the N/K subscribers of topic j % K.
per=$((n / k))
d=$(( (hi - lo) * per ))
a=0; b=0
for f in "$out/$kind-n$n-m$lo.callgrind"*; do a=$((a + $(total "$f"))); done
for f in "$out/$kind-n$n-m$hi.callgrind"*; do b=$((b + $(total "$f"))); done
echo "$kind: N=$n, $lo vs $hi messages: $a vs $b instructions; $(( (b - a) / d )) per delivery ($d deliveries)"
