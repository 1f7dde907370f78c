"""How long the command line waits on Temporal and its workers; read at each use, so tests can shorten them."""

from __future__ import annotations

from datetime import timedelta

# How long to wait for a server that went away (a restart, a network blip) before
# suggesting a re-attach; the release itself never depends on this process.
RIDE_THROUGH_SECONDS = 300
# Queries and updates need a worker to answer; without one they would wait forever.
WORKER_ANSWER = timedelta(seconds=10)
# How many times the state of a release that has ended is asked for before "see status" stands in for it.
FINAL_ASKS = 3
# An idle worker renews its long poll about once a minute, and a killed worker stays in the
# task queue's poller list for minutes: only a poller seen more recently than this counts.
POLLER_FRESH_SECONDS = 90
# How often a follower looks at the task queue and at the steps in flight (describe calls, so
# not every second), and how long it gives a worker that is starting before it warns.
CHECK_SECONDS = 3
WORKER_GRACE_SECONDS = 2
