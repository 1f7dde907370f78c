"""Freeze-window arithmetic: whether a moment is inside a window (absolute or weekly, in UTC), and when it ends.

Plain Python, no temporalio: the workflow calls these with workflow.now(), so they must stay deterministic.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from shared import FreezeWindow

WEEKDAYS = ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday")
WEEKLY_TIME = re.compile(r"^([A-Za-z]{3,9}) ([01]?[0-9]|2[0-3]):([0-5][0-9])$")
WEEK = timedelta(days=7)


def parse_weekly(text: str) -> timedelta | None:
    """'Fri 16:00' (or 'Friday 16:00') as the time since Monday 00:00 UTC; None if text is not a weekly time."""
    m = WEEKLY_TIME.fullmatch(text.strip())
    day = m and next((i for i, name in enumerate(WEEKDAYS) if name.startswith(m.group(1).lower())), None)
    if m is None or day is None:
        return None
    return timedelta(days=day, hours=int(m.group(2)), minutes=int(m.group(3)))


def parse_moment(text: str) -> datetime | None:
    """An ISO date and time, in UTC (a time without a zone is UTC); None if text is not one."""
    try:
        when = datetime.fromisoformat(text.strip())
    except ValueError:
        return None
    return when.replace(tzinfo=UTC) if when.tzinfo is None else when.astimezone(UTC)


def window_until(window: FreezeWindow, now: datetime) -> datetime | None:
    """When window ends, if now is inside it; else None."""
    weekly = parse_weekly(window.start)
    if weekly is None:
        start, end = parse_moment(window.start), parse_moment(window.end)
        assert start is not None and end is not None
        return end if start <= now < end else None
    end_in_week = parse_weekly(window.end)
    assert end_in_week is not None
    monday = (now - timedelta(days=now.weekday())).replace(hour=0, minute=0, second=0, microsecond=0)
    into = now - monday
    inside = weekly <= into < end_in_week if weekly < end_in_week else (into >= weekly or into < end_in_week)
    if not inside:
        return None
    end = monday + end_in_week
    return end if end > now else end + WEEK


def frozen_until(windows: list[FreezeWindow], now: datetime) -> tuple[datetime, FreezeWindow] | None:
    """When the freeze in force at now ends (windows that meet or overlap chain), and the window in force now."""
    first: FreezeWindow | None = None
    # Each pass moves past one window's end; more passes than windows means a chain all week round.
    for _ in range(len(windows) + 1):
        ends = [(end, w) for w in windows if (end := window_until(w, now)) is not None]
        if not ends:
            break
        end, window = max(ends, key=lambda e: e[0])
        first = first or window
        now = end
    return None if first is None else (now, first)
