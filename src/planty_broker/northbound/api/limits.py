"""Numbers from outside, range-checked at the API edge: a 422 naming the field, never a 500.

Every id, cursor and time the API takes ends up in a 64-bit database column; a Python int
has no such bound, so each one is declared with these limits (FastAPI checks them before
the route runs). Floats get an upper bound too, which also refuses `Infinity` and `NaN`.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Path

INT64_MAX = 2**63 - 1
MAX_SECONDS = 10 * 365 * 86400.0  # any duration in seconds: ten years is already absurd

# Unix milliseconds accepted as query times: years 1..9999 (what an ISO 8601 time can name).
TIME_MIN_MS = -62_135_596_800_000
TIME_MAX_MS = 253_402_300_799_999

IdPath = Annotated[int, Path(ge=1, le=INT64_MAX, description="a positive 64-bit id")]
