#!/usr/bin/env bash
# run.sh: unpack out:hello:latest with umoci into a temporary bundle and run it with runc.
# Needs root, umoci and runc. Prints "Hello from pybuild".
set -euo pipefail
cd "$(dirname "$0")"

image=${1:-out:hello:latest}
work=$(mktemp -d)
id="hello-$$"
cleanup() {
    runc --root "$work/state" delete --force "$id" > /dev/null 2>&1 || true
    rm -rf "$work"
}
trap cleanup EXIT

umoci unpack --image "$image" "$work/bundle" > /dev/null
# umoci writes "terminal": true, which needs a console; this runs without one.
sed -i 's/"terminal": *true/"terminal":false/' "$work/bundle/config.json"
runc --root "$work/state" run --bundle "$work/bundle" "$id" < /dev/null
