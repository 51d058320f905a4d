"""Shadow scoring's shared state: which candidate is shadowed, and what it has shown so far.

The spec lives in Redis, so `POST /admin/shadow`, `piston models shadow` and every API worker
see the same one: at most one candidate at a time (starting one replaces the last). Workers
count what they compared under the spec's id (`piston.live.Tally`); `report` adds it up. A
promote or rollback ends the shadow: the admin API and the CLI end it when they move the
pointer, and a worker that finds production moved past the spec ends it too. The counts and
the last spec expire after `ttl_s`.
"""

from __future__ import annotations

import datetime as dt
import json
import secrets
from typing import Any

from pydantic import BaseModel, Field

from piston.errors import InputError, RegistryError, StaleProduction
from piston.live import PREFIX, connect, numbers, reaching
from piston.names import NOTHING
from piston.registry import Registry

SPEC_KEY = f"{PREFIX}shadow:spec"
LAST_KEY = f"{PREFIX}shadow:last"  # the spec of the shadow that ended last, with why
# Compare-and-delete: end the shadow only if it is still the one the caller saw.
_END = """
local raw = redis.call('GET', KEYS[1])
if not raw then return nil end
if ARGV[1] ~= '' and cjson.decode(raw)['id'] ~= ARGV[1] then return nil end
redis.call('DEL', KEYS[1])
redis.call('SET', KEYS[2], ARGV[2], 'EX', ARGV[3])
return raw
"""


class ShadowSpec(BaseModel):
    """The candidate being shadowed, the share of live images it sees, and against what."""

    id: str
    version: str
    share: float = Field(gt=0, le=1)
    production: str  # the version serving when it started; a move away ends the shadow
    started_at: str
    ended_at: str | None = None
    ended_reason: str | None = None


class Pair(BaseModel):
    production: float | None = None
    candidate: float | None = None


class ShadowSample(BaseModel):
    """One image the two models disagreed on (kept for review: newest first, bounded)."""

    at: str
    production: str
    production_confidence: float
    candidate: str
    candidate_confidence: float
    candidate_review: bool
    width: int = 0
    height: int = 0
    thumbnail: str = ""  # a small JPEG as a data: URI


class ShadowReport(BaseModel):
    """What `GET /admin/shadow` answers: the shadow (active or the last one) and its figures."""

    active: bool
    spec: ShadowSpec | None = None
    offered: int = Field(0, description="live images picked for the candidate")
    compared: int = Field(0, description="scored by both models")
    agreed: int = 0
    agreement: float | None = None
    dropped: dict[str, int] = Field(default_factory=dict,
                                    description="picked but not scored, by why (busy, ...)")
    failed: int = 0
    matrix: dict[str, dict[str, int]] = Field(
        default_factory=dict, description="production label -> candidate label -> images")
    mean_confidence: Pair = Field(default_factory=Pair)
    needs_review: dict[str, int] = Field(default_factory=dict)
    review_share: Pair = Field(default_factory=Pair)
    latency_ms: Pair = Field(default_factory=Pair, description="mean per image")
    samples: list[ShadowSample] = Field(default_factory=list)
    headline: str = ""


def counts_key(shadow_id: str) -> str:
    return f"{PREFIX}shadow:{shadow_id}:counts"


def samples_key(shadow_id: str) -> str:
    return f"{PREFIX}shadow:{shadow_id}:samples"


def now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds")


def current(redis_url: str) -> ShadowSpec | None:
    with reaching(redis_url, "shadow scoring"):
        raw = connect(redis_url).get(SPEC_KEY)
    return ShadowSpec.model_validate_json(raw) if raw else None


def start(redis_url: str, registry: Registry, version: str, share: float, expected: str,
          ttl_s: int) -> ShadowSpec:
    """Shadow `version` on `share` of live images; replaces any shadow running now.

    `expected` is the version production is at as the caller last saw it: the figures are
    a comparison with that one, so a stale view is refused (409, kind "stale").
    """
    if not 0 < share <= 1:
        raise InputError("invalid_body", f"share {share}: give a fraction in (0, 1]")
    registry.meta(version)  # an unknown version: 404
    production = registry.current()
    if (production or NOTHING) != expected:
        raise StaleProduction(f"production is at {production or NOTHING}, not {expected}:"
                              " look again before shadowing")
    if production is None:
        raise RegistryError("nothing is in production yet: there is nothing to compare with")
    if version == production:
        raise RegistryError(f"{version} is the production bundle: shadow another one")
    spec = ShadowSpec(id=secrets.token_hex(6), version=version, share=share,
                      production=production, started_at=now())
    with reaching(redis_url, "shadow scoring"):
        client = connect(redis_url)
        replaced = client.set(SPEC_KEY, spec.model_dump_json(), ex=ttl_s, get=True)
        if replaced:
            old = ShadowSpec.model_validate_json(replaced)
            ended = old.model_copy(update={"ended_at": now(),
                                           "ended_reason": f"replaced by {version}"})
            client.set(LAST_KEY, ended.model_dump_json(), ex=ttl_s)
    return spec


def end(redis_url: str, reason: str, ttl_s: int, shadow_id: str = "") -> ShadowSpec | None:
    """End the shadow (only the one with `shadow_id` when given); its figures stay readable."""
    with reaching(redis_url, "shadow scoring"):
        client = connect(redis_url)
        raw = client.get(SPEC_KEY)
        if not raw:
            return None
        spec = ShadowSpec.model_validate_json(raw)
        ended = spec.model_copy(update={"ended_at": now(), "ended_reason": reason})
        gone = client.eval(_END, 2, SPEC_KEY, LAST_KEY, shadow_id, ended.model_dump_json(),
                           str(ttl_s))
    return ended if gone else None


def report(redis_url: str, keep_samples: int = 24) -> ShadowReport:
    """The running shadow's figures, or the last one's once it ended (until they expire)."""
    with reaching(redis_url, "shadow scoring"):
        client = connect(redis_url)
        raw = client.get(SPEC_KEY)
        active = raw is not None
        raw = raw or client.get(LAST_KEY)
        if raw is None:
            return ShadowReport(active=False, headline="no shadow")
        spec = ShadowSpec.model_validate_json(raw)
        counts = numbers(client.hgetall(counts_key(spec.id)))
        samples = client.lrange(samples_key(spec.id), 0, keep_samples - 1)
    return summarize(spec, active, counts, [json.loads(s) for s in samples])


def summarize(spec: ShadowSpec, active: bool, counts: dict[str, float],
              samples: list[dict[str, Any]]) -> ShadowReport:
    """The report from the summed counters (see `service.shadow` for the fields it writes)."""
    compared = int(counts.get("compared", 0))
    agreed = int(counts.get("agreed", 0))
    matrix: dict[str, dict[str, int]] = {}
    for name, n in counts.items():
        if name.startswith("m:"):
            prod, cand = json.loads(name[2:])
            matrix.setdefault(prod, {})[cand] = int(n)
    review = {"production": int(counts.get("review_p", 0)),
              "candidate": int(counts.get("review_c", 0))}

    def mean(name: str) -> float | None:
        return counts.get(name, 0.0) / compared if compared else None

    agreement = agreed / compared if compared else None
    return ShadowReport(
        active=active, spec=spec, offered=int(counts.get("offered", 0)), compared=compared,
        agreed=agreed, agreement=agreement,
        dropped={k[len("dropped:"):]: int(v) for k, v in counts.items()
                 if k.startswith("dropped:")},
        failed=int(counts.get("failed", 0)), matrix=matrix,
        mean_confidence=Pair(production=mean("conf_p"), candidate=mean("conf_c")),
        needs_review=review,
        review_share=Pair(production=review["production"] / compared if compared else None,
                          candidate=review["candidate"] / compared if compared else None),
        latency_ms=Pair(production=mean("ms_p"), candidate=mean("ms_c")),
        samples=[ShadowSample.model_validate(s) for s in samples],
        headline=headline(spec.version, agreement, compared),
    )


def headline(version: str, agreement: float | None, compared: int) -> str:
    """E.g. 'agreement 97.3% on 4,112 live images'."""
    if agreement is None:
        return f"shadow of {version}: no live images compared yet"
    return f"agreement {100 * agreement:.1f}% on {compared:,} live images"
