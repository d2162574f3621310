"""Time-of-day prices: a price may carry windows (hours in a named time zone, optional weekdays, a multiplier on
the price), as DeepSeek has priced by the hour (an off-peak discount until 2025-09, a peak surcharge from 2026).

The windows live in the price table (built-in, `pricing:`, `--prices FILE`), never in code. Everything here is a
pure function of the windows and a time passed in (epoch seconds), so the planner is tested without a clock.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from ..errors import SpecError
from ..text.words import suggestion

DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
WINDOW_KEYS = ("hours", "zone", "days", "multiplier", "name")
DAY_S = 86_400
HORIZON_DAYS = 8  # windows repeat every week at the longest: a week and a day covers every change
_HOURS = re.compile(r"^\s*(\d{1,2}):(\d{2})(?::(\d{2}))?\s*-\s*(\d{1,2}):(\d{2})(?::(\d{2}))?\s*$")


@dataclass(frozen=True)
class Window:
    """Hours of the day (seconds after local midnight; an end at or before the start runs past midnight) in an IANA
    time zone, on some weekdays (the day a span starts; none: every day), when the price is `multiplier` times."""

    spans: tuple[tuple[int, int], ...]
    zone: str
    multiplier: float
    days: tuple[int, ...] = ()  # 0 = Monday
    name: str = ""  # "peak", "off-peak": how messages call it

    def covers(self, t: float) -> bool:
        local = dt.datetime.fromtimestamp(t, ZoneInfo(self.zone))
        sec = local.hour * 3600 + local.minute * 60 + local.second
        day = local.weekday()
        for start, end in self.spans:
            if start < end:
                if start <= sec < end and self._on(day):
                    return True
            elif (sec >= start and self._on(day)) or (sec < end and self._on((day - 1) % 7)):
                return True
        return False

    def _on(self, day: int) -> bool:
        return not self.days or day in self.days

    def edges(self, t: float, days: int = HORIZON_DAYS) -> Iterable[float]:
        """Every time (epoch seconds) from the day before `t` to `days` after, at which this window opens or closes."""
        zone = ZoneInfo(self.zone)
        today = dt.datetime.fromtimestamp(t, zone).date()
        for offset in range(-1, days + 1):
            midnight = dt.datetime.combine(today + dt.timedelta(days=offset), dt.time(), zone)
            for start, end in self.spans:
                stop = end if start < end else end + DAY_S
                for sec in (start, stop):
                    # an aware datetime adds wall-clock time: across a DST change the instant moves with it
                    yield (midnight + dt.timedelta(seconds=sec)).timestamp()

    def hours_text(self) -> str:
        return ", ".join(f"{clock(a)}-{clock(b)}" for a, b in self.spans)

    def describe(self) -> str:
        """`×2 09:00-12:00, 14:00-18:00 Asia/Shanghai (peak)`, with its weekdays when it has some."""
        days = f" {','.join(DAYS[d] for d in self.days)}" if self.days else ""
        name = f" ({self.name})" if self.name else ""
        return f"×{self.multiplier:g} {self.hours_text()} {self.zone}{days}{name}"

    def as_dict(self) -> dict[str, Any]:
        """The window as a price table writes it (the manifest keeps it so, and parse_window reads it back)."""
        out: dict[str, Any] = {
            "hours": [f"{clock(a)}-{clock(b)}" for a, b in self.spans],
            "zone": self.zone,
            "multiplier": self.multiplier,
        }
        if self.days:
            out["days"] = [DAYS[d] for d in self.days]
        if self.name:
            out["name"] = self.name
        return out


def clock(sec: int) -> str:
    """Seconds after midnight as `HH:MM` (`HH:MM:SS` when it has seconds; 24:00 for the end of the day)."""
    h, rest = divmod(sec, 3600)
    m, s = divmod(rest, 60)
    return f"{h:02d}:{m:02d}" + (f":{s:02d}" if s else "")


def window_at(windows: Sequence[Window], t: float) -> Window | None:
    """The window in force at `t`: the first that covers it, in the order the table declares them."""
    return next((w for w in windows if w.covers(t)), None)


def multiplier_at(windows: Sequence[Window], t: float) -> float:
    """How many times its price a model costs at `t` (1 outside every window)."""
    window = window_at(windows, t)
    return 1.0 if window is None else window.multiplier


def edges(windows: Sequence[Window], t: float, days: int = HORIZON_DAYS) -> list[float]:
    """The times after `t` (within `days`) at which some window opens or closes, in order."""
    return sorted({e for w in windows for e in w.edges(t, days) if e > t})


def next_change(windows: Sequence[Window], t: float) -> float | None:
    """When the multiplier next differs from the one at `t` (None: never, within a week)."""
    now = multiplier_at(windows, t)
    return next((e for e in edges(windows, t) if multiplier_at(windows, e) != now), None)


def cheapest(windows: Sequence[Window], t: float) -> tuple[float, float]:
    """(the lowest multiplier within a week of `t`, the first time from `t` it holds): `t` itself when now is."""
    best, when = multiplier_at(windows, t), t
    for e in edges(windows, t):
        m = multiplier_at(windows, e)
        if m < best - 1e-12:
            best, when = m, e
    return best, when


def local_text(t: float, zone: str, now: float | None = None) -> str:
    """`18:00 Asia/Shanghai` (with the weekday and date when it is not within the day of `now`)."""
    local = dt.datetime.fromtimestamp(t, ZoneInfo(zone))
    text = local.strftime("%H:%M:%S" if local.second else "%H:%M")
    if now is not None and t - now >= 20 * 3600:
        text = local.strftime("%a %Y-%m-%d ") + text
    return f"{text} {zone}"


# --- reading windows from a price table ---------------------------------------------------------------


def _seconds(h: str, m: str, s: str | None) -> int | None:
    hh, mm, ss = int(h), int(m), int(s or 0)
    if mm > 59 or ss > 59 or hh > 24 or (hh == 24 and (mm or ss)):
        return None
    return hh * 3600 + mm * 60 + ss


def _spans(value: Any, at: str) -> tuple[tuple[int, int], ...]:
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list) or not items:
        raise SpecError(f'{at}.hours: must be "HH:MM-HH:MM" (or a list of them), e.g. "09:00-12:00"')
    spans = []
    for item in items:
        found = _HOURS.match(item) if isinstance(item, str) else None
        span = None if found is None else (_seconds(*found.group(1, 2, 3)), _seconds(*found.group(4, 5, 6)))
        if span is None or span[0] is None or span[1] is None or span[0] == span[1] or span[0] == DAY_S:
            raise SpecError(
                f'{at}.hours: {item!r} is not a span of the day: write "HH:MM-HH:MM" (HH:MM:SS allowed; an end '
                'before the start runs past midnight), e.g. "09:00-12:00" or "22:30-06:00"'
            )
        spans.append((span[0], span[1]))
    return tuple(spans)


def _zone(value: Any, at: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise SpecError(f"{at}.zone: must name an IANA time zone, e.g. zone: Asia/Shanghai (or UTC)")
    try:
        ZoneInfo(value.strip())
    except (ZoneInfoNotFoundError, ValueError):
        raise SpecError(
            f"{at}.zone: {value!r} is not a time zone this machine knows: use an IANA name such as Asia/Shanghai "
            "or UTC (a machine without a time zone database needs `pip install tzdata`)"
        ) from None
    return value.strip()


def _days(value: Any, at: str) -> tuple[int, ...]:
    if value is None:
        return ()
    items = [value] if isinstance(value, str) else value
    out = []
    for item in items if isinstance(items, list) else [items]:
        name = str(item).strip().lower()[:3]
        if not isinstance(item, str) or name not in DAYS:
            meant = suggestion(str(item).lower(), DAYS)
            raise SpecError(f"{at}.days: {item!r} is not a weekday{meant}: use mon, tue, wed, thu, fri, sat, sun")
        out.append(DAYS.index(name))
    return tuple(sorted(set(out)))


def parse_window(entry: Any, at: str) -> Window:
    """`{hours: "09:00-12:00", zone: Asia/Shanghai, multiplier: 2, days: [mon, fri], name: peak}`."""
    if not isinstance(entry, Mapping):
        raise SpecError(f'{at}: must be a mapping such as {{hours: "09:00-12:00", zone: Asia/Shanghai, multiplier: 2}}')
    unknown = sorted(set(entry) - set(WINDOW_KEYS))
    if unknown:
        raise SpecError(
            f"{at}: unknown key {unknown[0]!r}{suggestion(unknown[0], WINDOW_KEYS)} (allowed: {', '.join(WINDOW_KEYS)})"
        )
    multiplier = entry.get("multiplier")
    if isinstance(multiplier, bool) or not isinstance(multiplier, (int, float)) or multiplier < 0:
        got = "nothing" if multiplier is None else repr(multiplier)
        raise SpecError(f"{at}.multiplier: must be a number >= 0 (2: twice the price, 0.5: half), got {got}")
    name = entry.get("name")
    return Window(
        _spans(entry.get("hours"), at),
        _zone(entry.get("zone"), at),
        float(multiplier),
        _days(entry.get("days"), at),
        str(name).strip() if name is not None else "",
    )


def parse_windows(value: Any, at: str) -> tuple[Window, ...]:
    if value is None:
        return ()
    if not isinstance(value, list):
        raise SpecError(
            f'{at}: must be a list of windows, e.g. [{{hours: "09:00-12:00", zone: Asia/Shanghai, multiplier: 2}}]'
        )
    return tuple(parse_window(entry, f"{at}[{i}]") for i, entry in enumerate(value))


# --- holding a run for the cheap window (`schedule: {avoid_peak: true}`) --------------------------------


@dataclass(frozen=True)
class Hold:
    """Why and until when a run sends nothing: the price now is `multiplier` times, the cheapest `cheapest` times
    (from `until`)."""

    multiplier: float
    cheapest: float
    until: float
    zone: str
    name: str

    def text(self, rows_left: int, now: float) -> str:
        """`peak price (×2) until 18:00 Asia/Shanghai; holding, 1,200 rows left`."""
        name = self.name or "the"
        then = f"×{self.cheapest:g}"
        return (
            f"{name} price (×{self.multiplier:g}) until {local_text(self.until, self.zone, now)}, then {then}; "
            f"holding, {rows_left:,} rows left"
        )


def hold(windows: Sequence[Window], t: float) -> Hold | None:
    """Whether a run that avoids the peak holds at `t`, and until when: while the price is above the cheapest it
    reaches within a week. None: send (now is as cheap as it gets, or the price has no windows)."""
    if not windows:
        return None
    now = multiplier_at(windows, t)
    best, when = cheapest(windows, t)
    if now <= best + 1e-12:
        return None
    window = window_at(windows, t)
    zone = (window or window_at(windows, when) or windows[0]).zone
    return Hold(now, best, when, zone, window.name if window is not None else "")
