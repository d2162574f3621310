"""Which limit held a run back: RPM, TPM, concurrency over the latency, the provider's own limits, or nothing.

The throttle measures how long admission waited at each of its gates (`Pace`); the gate that held requests
back longest, for a real share of the run, is the one that bound it. `bound_by` names it from those figures
alone (a pure function), so that the closing summary and `batchrun status` (from usage.json, after the run too)
say the same.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

# A gate binds when admission waited on it at least this long, and for at least this share of the time rows
# were being admitted: a short run that never queued was bound by nothing but its input.
MIN_WAIT_S = 1.0
MIN_SHARE = 0.25
RATE_SPAN_S = 10.0  # the rate sent is told only over this long at least (a bucket's first burst skews less)
GATES = ("concurrency", "rpm", "tpm", "paused", "max_pending")
NOTHING = "nothing: the input ran out before any limit held requests back"


@dataclass
class Pace:
    """What admission saw this session: the wait at each gate, the requests sent, their latency, their 429s."""

    waited: dict[str, float] = field(default_factory=lambda: dict.fromkeys(GATES, 0.0))
    sent: int = 0
    first_s: float | None = None  # when admission began (the throttle's clock)
    last_s: float = 0.0  # when the last request was admitted
    latency_sum: float = 0.0
    answered: int = 0
    rate_limited: int = 0
    rpm_source: str | None = None  # the RPM ceiling's: given, named (in a 429), headers
    tpm_source: str | None = None

    def began(self, now: float) -> None:
        if self.first_s is None:
            self.first_s = now

    def wait(self, gate: str, seconds: float) -> None:
        self.waited[gate] = self.waited.get(gate, 0.0) + max(0.0, seconds)

    def admitted(self, now: float) -> None:
        self.sent += 1
        self.last_s = now

    def answer(self, latency: float, *, rate_limited: bool) -> None:
        if rate_limited:
            self.rate_limited += 1
        else:
            self.latency_sum += latency
            self.answered += 1

    def facts(self) -> dict[str, Any]:
        """For usage.json (its `throttle.pace`), where `bound_by` reads them back."""
        span = self.last_s - self.first_s if self.first_s is not None else 0.0
        return {
            "waited_s": {gate: round(s, 3) for gate, s in self.waited.items()},
            "span_s": round(max(0.0, span), 3),
            "sent": self.sent,
            "latency_s": round(self.latency_sum / self.answered, 3) if self.answered else None,
            "rate_limited": self.rate_limited,
            "rpm_source": self.rpm_source,
            "tpm_source": self.tpm_source,
        }


SOURCES = {
    "given": "given",
    "named": "the provider's, named in its 429s",
    "headers": "the provider's, from its rate-limit headers",
}


def bound_by(throttle: Mapping[str, Any]) -> str | None:
    """What bound the run, from usage.json's `throttle`: the throttle's snapshot, its `pace` and the job's `given`
    limits (rpm, tpm, concurrency, max_pending); None for a run that kept no pace (an older version's)."""
    pace, limits = throttle.get("pace"), throttle.get("given") or {}
    if not isinstance(pace, Mapping) or not isinstance(limits, Mapping):
        return None
    waited = {g: _num(s) or 0.0 for g, s in (pace.get("waited_s") or {}).items()}
    if not waited:
        return NOTHING
    gate = max(waited, key=lambda g: waited[g])
    span = _num(pace.get("span_s")) or 0.0
    if waited[gate] < max(MIN_WAIT_S, MIN_SHARE * span):
        return NOTHING
    latency = _num(pace.get("latency_s"))
    if gate == "concurrency":
        most = int(_num(limits.get("concurrency")) or 0)
        slots = int(_num(throttle.get("concurrency")) or most)
        if throttle.get("concurrency_ceiling") is not None:
            whose = " (the provider's limit on requests in flight)"
        elif most and slots >= most:
            whose = ""
        else:
            whose = " (batchrun's adaptive limit)"
        if latency:
            return f"concurrency {slots:,}{whose} × {latency:,.1f} s latency ≈ {slots / latency * 60:,.0f} RPM"
        return f"concurrency {slots:,}{whose}"
    if gate == "rpm":
        rpm = _num(throttle.get("rpm"))
        source = pace.get("rpm_source")
        given = _num(limits.get("rpm"))
        if source == "given" and given and rpm and rpm >= given * 0.98:
            return f"RPM {given:,.0f} (given)"
        if source in ("named", "headers") and not throttle.get("rpm_learned"):
            return f"RPM {_num(throttle.get('rpm_ceiling')) or rpm or 0:,.0f} ({SOURCES[source]})"
        return f"the provider's 429s (learned ceiling {rpm or 0:,.0f} RPM)"
    if gate == "tpm":
        source = pace.get("tpm_source") or "given"
        tpm = _num(limits.get("tpm")) if source == "given" else _num(throttle.get("tpm"))
        return f"TPM {tpm or 0:,.0f} ({SOURCES.get(source, source)})"
    if gate == "paused":
        return "the provider's limits (its rate-limit headers said none left: admission paused)"
    return f"limits.max_pending ({_num(limits.get('max_pending')) or 0:,.0f} tasks held at once)"


def achieved(throttle: Mapping[str, Any]) -> str | None:
    """`sent 552 RPM, 92% of limits.rpm 600`: how close the run came to its given RPM (None: no pace)."""
    pace, limits = throttle.get("pace"), throttle.get("given") or {}
    if not isinstance(pace, Mapping) or not isinstance(limits, Mapping):
        return None
    span, sent = _num(pace.get("span_s")) or 0.0, _num(pace.get("sent")) or 0.0
    if span < RATE_SPAN_S or sent < 2:
        return None
    rpm = (sent - 1) / span * 60
    given = _num(limits.get("rpm"))
    return f"sent {rpm:,.0f} RPM" + (f", {rpm / given:.0%} of limits.rpm {given:,.0f}" if given else "")


def _num(value: Any) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def limit_line(usage: Mapping[str, Any]) -> str | None:
    """`concurrency 64 × 4.1 s latency ≈ 940 RPM (sent 552 RPM, 92% of limits.rpm 600)`, from usage.json (or
    what a run loop adds to it); None for a run without a throttle (batch mode) or an older version's."""
    throttle = usage.get("throttle")
    if not isinstance(throttle, Mapping) or (named := bound_by(throttle)) is None:
        return None
    reached = achieved(throttle)
    return named + (f"; {reached}" if reached and named != NOTHING else "")
