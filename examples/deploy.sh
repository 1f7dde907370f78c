#!/bin/sh
# deploy.sh WORKSPACE ENV ARTIFACT_NAME
# Copies the artifact into environments/ENV from the environment before it (DEV: from the artifactory),
# through a hidden temporary file and a rename, as the simulated deploy does. The orchestrator writes the
# configuration next, then removes the container's older versions: that order keeps a configuration beside
# the artifact it names, so this script leaves the older versions alone.
set -eu
if [ "$#" -ne 3 ]; then
    echo "usage: deploy.sh WORKSPACE ENV ARTIFACT_NAME" >&2
    exit 2
fi
workspace=$1 env=$2 name=$3
case "$env" in
    DEV) source="$workspace/artifactory" ;;
    TEST) source="$workspace/environments/DEV" ;;
    QC) source="$workspace/environments/TEST" ;;
    PROD) source="$workspace/environments/QC" ;;
    *)
        echo "unknown environment $env: use DEV, TEST, QC or PROD" >&2
        exit 2
        ;;
esac
if [ ! -f "$source/$name" ]; then
    # Final (exit 1): no retry brings the artifact back.
    echo "$(basename "$source") does not hold $name" >&2
    exit 1
fi
target="$workspace/environments/$env"
mkdir -p "$target"
tmp="$target/.$name.$$.tmp"
trap 'rm -f "$tmp"' EXIT
cp "$source/$name" "$tmp"
mv -f "$tmp" "$target/$name"
echo "deployed $name to $env from $(basename "$source")"
