#!/bin/sh
# check.sh CHECK ENV ARTIFACT
# A quality-gate check, as the simulation runs it: it passes unless FAILING_CHECKS (the worker's setting, a
# comma list of <container>-<version>:<ENV>:<check>) names this one; it fails (exit 1, final) if the
# environment does not hold the artifact.
set -eu
if [ "$#" -ne 3 ]; then
    echo "usage: check.sh CHECK ENV ARTIFACT" >&2
    exit 2
fi
check=$1 env=$2 artifact=$3
name=$(basename "$artifact")
if [ ! -f "$artifact" ]; then
    echo "$env does not hold $name" >&2
    exit 1
fi
echo "running $check on $name in $env"
for item in $(printf '%s' "${FAILING_CHECKS:-}" | tr -d ' \t' | tr ',' ' '); do
    item_env=$(printf '%s' "$item" | cut -d: -f2 | tr '[:lower:]' '[:upper:]')
    if [ "$(printf '%s' "$item" | cut -d: -f1)" = "$name" ] && [ "$item_env" = "$env" ] \
        && [ "$(printf '%s' "$item" | cut -d: -f3)" = "$check" ]; then
        echo "FAILING_CHECKS names $name:$env:$check"
        exit 1
    fi
done
echo "$check passed"
