"""Which traces the collector's tail sampler keeps, decided here too, so that every exemplar names a
stored trace.

With ``TRACE_SAMPLING=tail`` the collector (otel/sampling-tail.yml) keeps a trace when any of its
spans has status ERROR, when it lasts ``TRACE_SLOW_MS`` or longer, or when its trace id falls in the
``TRACE_KEEP_PERCENT`` share that the ``probabilistic`` policy picks by hash. A service attaches a
trace id to a histogram bucket (an exemplar) only when one of those rules already holds from what
it saw itself: its span failed (a server span is ERROR from status 500 on), or its span lasted
the threshold (the trace lasts at least as long as any of its spans), or the hash picks the trace
id. Each is enough for the sampler, so an exemplar never points at a dropped trace; a trace kept
for another hop's reason just lends no exemplar here. (The other way round — marking exemplar
spans for a policy to keep — would keep more traces than the fraction says; docs/observability.md.)

The hash is the collector's own (contrib ``tailsamplingprocessor`` v0.140.1,
``internal/sampling/probabilistic.go``): FNV-1a 64 of the salt (``default-hash-seed``, the
collector's default when ``hash_salt`` is unset) and the trace id's 16 bytes, kept when at most
``MaxUint64 × percent / 100`` as Go's ``big.Float`` computes it (a 64-bit mantissa, rounded to
nearest even, then truncated).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from fractions import Fraction

FNV_OFFSET = 0xCBF29CE484222325
FNV_PRIME = 0x100000001B3
MAX_UINT64 = (1 << 64) - 1
DEFAULT_HASH_SALT = "default-hash-seed"


def fnv1a64(data: bytes, state: int = FNV_OFFSET) -> int:
    for byte in data:
        state = ((state ^ byte) * FNV_PRIME) & MAX_UINT64
    return state


def keep_threshold(percent: float) -> int:
    """The largest hash the ``probabilistic`` policy keeps at ``percent``: ``MaxUint64 × percent/100``
    rounded to a 64-bit mantissa (nearest even), as Go's ``big.Float`` multiplies, then truncated."""
    exact = Fraction(MAX_UINT64) * Fraction(float(percent) / 100)
    if exact <= 0:
        return 0
    exponent = exact.numerator.bit_length() - exact.denominator.bit_length()
    while Fraction(2) ** exponent > exact:
        exponent -= 1
    while Fraction(2) ** (exponent + 1) <= exact:
        exponent += 1
    ulp = Fraction(2) ** (exponent - 63)
    scaled = exact / ulp
    mantissa = scaled.numerator // scaled.denominator
    rest = scaled - mantissa
    if rest > Fraction(1, 2) or (rest == Fraction(1, 2) and mantissa % 2):
        mantissa += 1
    rounded = mantissa * ulp
    return min(MAX_UINT64, rounded.numerator // rounded.denominator)


@dataclass
class TailSampling:
    """The collector's rules, as ``TRACE_SAMPLING``, ``TRACE_KEEP_PERCENT`` and ``TRACE_SLOW_MS`` set them."""

    mode: str = "all"  # "all": every trace is stored; "tail": the rules below decide
    keep_percent: float = 100.0
    slow_ms: int = 500
    hash_salt: str = DEFAULT_HASH_SALT
    _threshold: int = field(init=False, repr=False)
    _salted: int = field(init=False, repr=False)
    _last: tuple[str, bool] = field(init=False, repr=False, default=("", False))

    def __post_init__(self) -> None:
        self._threshold = keep_threshold(self.keep_percent)
        self._salted = fnv1a64(self.hash_salt.encode())

    def picks(self, trace_id: str) -> bool:
        """Whether the ``probabilistic`` policy keeps this trace id (32 hex digits)."""
        last_id, last = self._last  # a request asks a few times (its stages, then itself)
        if trace_id == last_id:
            return last
        picked = fnv1a64(bytes.fromhex(trace_id), self._salted) <= self._threshold
        self._last = (trace_id, picked)
        return picked

    def keeps(self, trace_id: str, *, error: bool, duration_s: float) -> bool:
        """Whether the sampler is sure to keep the trace of a span that failed (``error``) or not and
        lasted ``duration_s``: what an exemplar may then name."""
        if self.mode != "tail" or error:
            return True
        # The latency policy compares whole milliseconds (Go's Duration.Milliseconds(): truncated).
        return int(duration_s * 1000) >= self.slow_ms or self.picks(trace_id)
