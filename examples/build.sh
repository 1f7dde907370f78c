#!/bin/sh
# build.sh ARTIFACT CONTAINER VERSION RELEASE_KEY GIT_URL
# Writes the artifact the simulated build writes (release_management.build_content), byte for byte,
# through a hidden temporary file and a rename: a crash leaves the old artifact or the new, never half.
set -eu
if [ "$#" -ne 5 ]; then
    echo "usage: build.sh ARTIFACT CONTAINER VERSION RELEASE_KEY GIT_URL" >&2
    exit 2
fi
artifact=$1 container=$2 version=$3 release=$4 git=$5
dir=$(dirname "$artifact")
name=$(basename "$artifact")
mkdir -p "$dir"
tmp="$dir/.$name.$$.tmp"
trap 'rm -f "$tmp"' EXIT
printf 'container: %s\nversion: %s\nrelease: %s\ngit: %s\n' "$container" "$version" "$release" "$git" >"$tmp"
mv -f "$tmp" "$artifact"
echo "built $name for $release from $git"
