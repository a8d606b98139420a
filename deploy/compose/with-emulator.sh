#!/bin/sh
# Demo only: point sfsign at the emulator, give it a throw-away signing key, then run the command given
# (`sfsign run`, `sfsign check`, ...). docker-compose.yml uses it as the sfsign service's entrypoint, and
# scripts/wheel-check.sh runs it too, so the compose path is the tested one. A real deployment sets the
# SFSIGN_* variables and mounts its keys instead (docs/operations.md).
#
#   EMULATOR_CONNECTION  the emulator's --json-out file (default /data/emulator/connection.json)
#   DEMO_KEYS_DIR        where the demo signing key is made once (default /data/demo-keys; the rules
#                        file next to this script points there)
set -eu
connection="${EMULATOR_CONNECTION:-/data/emulator/connection.json}"
keys="${DEMO_KEYS_DIR:-/data/demo-keys}"

waited=0
until [ -s "$connection" ]; do
  if [ "$waited" -ge 120 ]; then
    echo "with-emulator.sh: no emulator connection file at $connection after 120 s" >&2
    exit 1
  fi
  sleep 1
  waited=$((waited + 1))
done

# URL, Pub/Sub API target, CA, consumer key, user and JWT key file of the emulator's connected app. The file also holds
# the emulator's secrets; only these non-secret values are read.
eval "$(python - "$connection" <<'PY'
import json
import shlex
import sys

with open(sys.argv[1], encoding="utf-8") as fh:
    details = json.load(fh)
for var, key in (("LOGIN_URL", "url"), ("PUBSUB_URL", "pubsub_target"), ("CA_BUNDLE", "ca_file"),
                 ("CONSUMER_KEY", "consumer_key"), ("USERNAME", "username"),
                 ("PRIVATE_KEY_FILE", "private_key_file")):
    print(f"export SFSIGN_{var}={shlex.quote(str(details[key]))}")
print("export SFSIGN_AUTH_FLOW=jwt")
PY
)"

# `sfsign demo-keys` prints the passphrase as an export line: keep it in a 0600 file, never in a log.
if [ ! -s "$keys/passphrase.env" ]; then
  (
    umask 077
    mkdir -p "$keys"
    sfsign demo-keys --out "$keys" --org "sfsign compose demo" | sed -n 's/^export //p' > "$keys/passphrase.env.tmp"
    mv "$keys/passphrase.env.tmp" "$keys/passphrase.env"
  )
fi
set -a
# shellcheck source=/dev/null
. "$keys/passphrase.env"
set +a

exec "$@"
