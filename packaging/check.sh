#!/usr/bin/env bash
# Checks packaging/ without a Docker engine (run on demand; tests/packaging.rs does the
# quick structural checks on every `cargo test`):
#   1. runs the Dockerfile's build step (its `RUN cargo build ...` line, verbatim) and
#      checks that every file the runtime stage copies exists and runs;
#   2. starts the built server with the image's ENV (paths mapped to this checkout),
#      waits until it listens, stops it with SIGTERM and expects exit code 0;
#   3. parses the compose file and the alert rules (python3-yaml), and runs
#      `promtool check rules` when promtool is installed;
#   4. `systemd-analyze verify` and `systemd-analyze security` on both units.
# Usage: packaging/check.sh   (CARGO_TARGET_DIR is honoured; default target/)
set -euo pipefail
cd "$(dirname "$0")/.."
target=$(realpath -m "${CARGO_TARGET_DIR:-target}")
tmp=$(mktemp -d)
server_pid=
cleanup() {
  if [ -n "$server_pid" ]; then kill "$server_pid" 2>/dev/null || true; fi
  rm -rf "$tmp"
}
trap cleanup EXIT

echo "== 1. the Dockerfile's build step"
build=$(sed -n 's/^RUN \(cargo build .*\)$/\1/p' packaging/Dockerfile)
[ -n "$build" ] || { echo "no 'RUN cargo build' line in packaging/Dockerfile" >&2; exit 1; }
echo "+ $build"
bash -c "$build"
# COPY --from=build /src/<path> <dest>: /src is this checkout, target/ is $target.
grep '^COPY --from=build' packaging/Dockerfile | while read -r _ _ src _; do
  path=${src#/src/}
  case $path in target/*) path="$target/${path#target/}" ;; esac
  [ -e "$path" ] || { echo "the runtime stage copies $src, which the build did not make" >&2; exit 1; }
  echo "copied: $src -> found $path"
done
for bin in radiovis-server radiovis-fallback; do
  "$target/release/$bin" --version
done

echo "== 2. the image's configuration starts the server"
env_line=$(sed -n '/^ENV /,/[^\\]$/p' packaging/Dockerfile | tr -d '\\\n' | sed 's/^ENV //')
# shellcheck disable=SC2086
env_args=$(echo $env_line | sed "s#/etc/radiovis/directory.toml#$PWD/examples/directory.toml#")
echo "+ env $env_args STOMP_PORT=0"
# shellcheck disable=SC2086
env -i PATH="$PATH" $env_args STOMP_IP=127.0.0.1 STOMP_PORT=0 HTTP_PORT=off \
  "$target/release/radiovis-server" >"$tmp/server.log" 2>&1 &
server_pid=$!
for _ in $(seq 1 100); do
  grep -q 'listening for STOMP connections' "$tmp/server.log" && break
  sleep 0.1
done
grep -q 'listening for STOMP connections' "$tmp/server.log" || { cat "$tmp/server.log" >&2; exit 1; }
head -c 300 "$tmp/server.log"; echo
python3 -c 'import json,sys; [json.loads(l) for l in open(sys.argv[1]) if l.strip()]' "$tmp/server.log"
kill -TERM "$server_pid"
status=0; wait "$server_pid" || status=$?
server_pid=
[ "$status" -eq 0 ] || { echo "server exited $status after SIGTERM" >&2; exit 1; }
echo "stopped cleanly on SIGTERM"

echo "== 3. compose and alert rules"
python3 - <<'PY'
import yaml
compose = yaml.safe_load(open("packaging/compose.yaml"))
print("compose services:", ", ".join(compose["services"]))
rules = yaml.safe_load(open("packaging/prometheus/radiovis-alerts.yml"))
print("alerts:", ", ".join(r["alert"] for g in rules["groups"] for r in g["rules"]))
PY
if command -v promtool >/dev/null 2>&1; then
  promtool check rules packaging/prometheus/radiovis-alerts.yml
else
  echo "promtool not installed: rules parsed as YAML only"
fi

echo "== 4. systemd units"
if command -v systemd-analyze >/dev/null 2>&1; then
  for unit in radiovis-server@.service radiovis-fallback.service; do
    bin=radiovis-${unit#radiovis-}; bin=${bin%%@*}; bin=${bin%.service}
    sed "s#/usr/local/bin/$bin#$target/release/$bin#" "packaging/systemd/$unit" >"$tmp/$unit"
    systemd-analyze verify "$tmp/$unit"
    systemd-analyze security --offline=yes --threshold=20 "$tmp/$unit" | tail -1
  done
else
  echo "systemd-analyze not installed: units not verified"
fi
echo "packaging: all checks passed"
