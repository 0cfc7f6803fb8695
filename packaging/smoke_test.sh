#!/usr/bin/env bash
# Smoke test of the built .deb: install it into a scratch root, ask the installed dcp-chat the demo
# scene's questions (same answers as the venv; "orange" for the README's; the .tar.gz's dcp-chat
# too, when there is one), start the installed
# dcp-desktop under Xvfb (window up, screenshot, cold and warm start times), and check that
# neither touches the network.
#
#   packaging/smoke_test.sh [PATH.deb]      default: the newest packaging/dist/dcp-desktop_*.deb
#
# Needs: the dev venv (.venv: it makes the scene and gives the reference answers); Debian packages
# xvfb (installed here when run as root), x11-utils (xwininfo), strace, bc; unshare -n when run as
# root (else the strace check alone).
# Writes packaging/dist/smoke/: screenshot.png, the logs, summary.txt. Exit status 0 = passed.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
cd "$ROOT"
DEB="${1:-$(ls -t packaging/dist/dcp-desktop_*.deb | head -1)}"
PY="${PY:-$ROOT/.venv/bin/python}"
OUT="$ROOT/packaging/dist/smoke"
START_LIMIT_S="${START_LIMIT_S:-10}"
SCRATCH="$(mktemp -d /tmp/dcp-smoke.XXXXXX)"
XVFB_PID=""
cleanup() { [ -n "$XVFB_PID" ] && kill "$XVFB_PID" 2>/dev/null; rm -rf "$SCRATCH"; }
trap cleanup EXIT
rm -rf "$OUT" && mkdir -p "$OUT"
failures=0
say() { echo "$*" | tee -a "$OUT/summary.txt"; }
check() {  # check NAME CONDITION-COMMAND...
  local name="$1"; shift
  if "$@"; then say "PASS  $name"; else say "FAIL  $name"; failures=$((failures + 1)); fi
}
offline=()
if ! command -v Xvfb > /dev/null && [ "$(id -u)" = 0 ]; then
  apt-get install -y -qq xvfb > /dev/null || { apt-get update -qq && apt-get install -y -qq xvfb > /dev/null; }
fi
if [ "$(id -u)" = 0 ] && unshare -n true 2>/dev/null; then offline=(unshare -n); fi

say "deb: $DEB ($(du -m "$DEB" | cut -f1) MB)"
dpkg -x "$DEB" "$SCRATCH/root"
APP="$SCRATCH/root/opt/dcp-desktop"
say "installed: $(du -sm "$SCRATCH/root" | cut -f1) MB (bundle $(du -sm "$APP" | cut -f1) MB)"
check "/usr/bin links point into /opt/dcp-desktop" \
  test "$(readlink "$SCRATCH/root/usr/bin/dcp-chat")" = /opt/dcp-desktop/dcp-chat -a \
       "$(readlink "$SCRATCH/root/usr/bin/dcp-desktop")" = /opt/dcp-desktop/dcp-desktop
# The same links, pointing into the scratch root: the program must find _internal/ through them.
mkdir -p "$SCRATCH/bin"
ln -s "$APP/dcp-chat" "$SCRATCH/bin/dcp-chat"
ln -s "$APP/dcp-desktop" "$SCRATCH/bin/dcp-desktop"
export DCP_DESKTOP_HOME="$SCRATCH/home" HF_HOME="$SCRATCH/hf"  # nothing of the user's is read or written

# --- dcp-chat: the same answers as the venv -----------------------------------------------------
# The venv reads the demo model from the source tree, the bundle carries the one there at build
# time: a model replaced since then makes different answers that are no fault of the bundle.
check "the bundle's demo model is the source tree's (else rebuild: the answers below compare two models)" \
  bash -c "cd '$ROOT/dcp_desktop/demo' && md5sum *.gguf | (cd '$APP/_internal/dcp_desktop/demo' && md5sum --quiet -c -)"
"$PY" -m dcp_desktop.scenes --split test --n 1 --out "$SCRATCH/scenes" > /dev/null
IMAGE="$SCRATCH/scenes/2000000000000000.png"
same=1
while IFS=$'\t' read -r question expected; do
  venv="$("$PY" -m dcp_desktop.cli "$IMAGE" "$question" --model demo)"
  bundle="$("${offline[@]}" "$SCRATCH/bin/dcp-chat" "$IMAGE" "$question" --model demo 2> "$OUT/dcp-chat.err")"
  say "      $question  venv: $venv  bundle: $bundle  (scene's answer: $expected)"
  [ "$venv" = "$bundle" ] || same=0
  [ "$question" = "What colour is the hexagon?" ] && readme_answer="$bundle"
done < <("$PY" -c 'import json, sys
for line in open(sys.argv[1]):
    q = json.loads(line); print(q["question"], q["answer"], sep="\t")' "$SCRATCH/scenes/test.jsonl")
check "dcp-chat in the bundle answers as the venv does" test "$same" = 1
check "dcp-chat in the bundle says orange to the README's question" test "${readme_answer:-}" = orange
[ ${#offline[@]} -gt 0 ] && say "      (the bundle's answers ran without a network: unshare -n)"

TARBALL="$(ls -t packaging/dist/dcp-desktop-*-linux-*.tar.gz 2>/dev/null | head -1)"
if [ -n "$TARBALL" ]; then  # the same folder for other distributions: unpacked anywhere, it answers too
  mkdir -p "$SCRATCH/tarball" && tar -C "$SCRATCH/tarball" -xzf "$TARBALL"
  answer="$("${offline[@]}" "$SCRATCH/tarball/dcp-desktop/dcp-chat" "$IMAGE" "What colour is the hexagon?" --model demo)"
  check "the .tar.gz's dcp-chat, unpacked elsewhere, says orange ($(du -m "$TARBALL" | cut -f1) MB)" test "$answer" = orange
  rm -rf "$SCRATCH/tarball"
fi

strace -f -qq -e trace=connect -o "$OUT/dcp-chat.strace" \
  "$SCRATCH/bin/dcp-chat" "$IMAGE" "What colour is the hexagon?" --model demo > /dev/null 2>&1
check "dcp-chat opens no network connection (strace: no connect to AF_INET/AF_INET6)" \
  bash -c "! grep -q 'AF_INET' '$OUT/dcp-chat.strace'"

# --- dcp-desktop under Xvfb ---------------------------------------------------------------------
display=":$((90 + RANDOM % 9))"
Xvfb "$display" -screen 0 1280x860x24 -nolisten tcp > /dev/null 2>&1 &
XVFB_PID=$!
for _ in $(seq 100); do [ -e "/tmp/.X11-unix/X${display#:}" ] && break; sleep 0.05; done
export DISPLAY="$display" QT_QPA_PLATFORM=xcb

evict_page_cache() {  # a cold start: the bundle's files out of the page cache (ours only, no root)
  "$PY" - "$APP" <<'EOF'
import os, sys
for folder, _, names in os.walk(sys.argv[1]):
    for name in names:
        path = os.path.join(folder, name)
        if os.path.islink(path) or not os.path.isfile(path):
            continue
        fd = os.open(path, os.O_RDONLY)
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        os.close(fd)
EOF
}

start_window() {  # start_window NAME [wrapper...]: start it, wait for both ready lines; writes "shown loaded" (s) to NAME.times
  local name="$1"; shift
  local log="$OUT/$name.log" t0 shown="" loaded=""
  t0=$(date +%s.%N)
  "$@" "$SCRATCH/bin/dcp-desktop" > "$log" 2>&1 &
  APP_PID=$!
  for _ in $(seq 1200); do  # 60 s
    [ -z "$shown" ] && grep -qs "ready (window shown)" "$log" && shown=$(echo "$(date +%s.%N) - $t0" | bc)
    [ -z "$loaded" ] && grep -qs "ready (model .* loaded)" "$log" && loaded=$(echo "$(date +%s.%N) - $t0" | bc)
    [ -n "$loaded" ] && break
    kill -0 "$APP_PID" 2>/dev/null || break
    sleep 0.05
  done
  printf '%.2f %.2f\n' "${shown:-999}" "${loaded:-999}" > "$OUT/$name.times"
}

stop_window() {  # the app, and the app under a wrapper (strace): the wrapper's children first
  local child
  for child in $(pgrep -P "$APP_PID" || true); do kill "$child" 2>/dev/null || true; done
  kill "$APP_PID" 2>/dev/null || true
  wait "$APP_PID" 2>/dev/null || true
}

evict_page_cache
start_window cold "${offline[@]}"
read -r cold_shown cold_loaded < "$OUT/cold.times"
windows="$(xwininfo -root -tree | grep -c '"dcp-desktop' || true)"
sleep 1  # let the first paint settle
"$PY" - "$OUT/screenshot.png" <<'EOF'
import sys
from PySide6.QtGui import QGuiApplication
app = QGuiApplication(["screenshot"])
assert app.primaryScreen().grabWindow(0).save(sys.argv[1]), "could not save the screenshot"
EOF
stop_window
start_window warm
read -r warm_shown warm_loaded < "$OUT/warm.times"
stop_window
say "      start-up, window shown / demo model loaded: cold $cold_shown s / $cold_loaded s, warm $warm_shown s / $warm_loaded s"
check "dcp-desktop's window appears (xwininfo sees it)" test "$windows" -ge 1
check "cold start to a shown window under $START_LIMIT_S s" \
  bash -c "[ \$(echo '$cold_shown < $START_LIMIT_S' | bc) = 1 ]"
say "      screenshot: $OUT/screenshot.png (look at it)"

start_window strace strace -f -qq -e trace=connect -o "$OUT/dcp-desktop.strace"
stop_window
check "dcp-desktop opens no network connection (strace: only the X server's unix socket)" \
  bash -c "! grep -q 'AF_INET' '$OUT/dcp-desktop.strace'"

say "$([ "$failures" = 0 ] && echo "smoke test passed" || echo "smoke test FAILED: $failures check(s)")"
exit "$failures"
