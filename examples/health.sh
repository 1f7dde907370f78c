#!/bin/sh
# health.sh ENV ARTIFACT
# The health check that verifies a deploy after its checks: check.sh's rules, for the check named health
# (FAILING_CHECKS=<container>-<version>:<ENV>:health makes it fail).
set -eu
exec "$(dirname "$0")/check.sh" health "$@"
