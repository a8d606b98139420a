"""The API versions the emulated org serves, and what it answers for the others, as Salesforce does.

One place for the range so REST, composite subrequests and CometD agree. Salesforce's API
End-of-Life Policy (REST API Developer Guide, Winter '27): versions 31.0 through 68.0 are served,
21.0 through 30.0 were retired in Summer '25 and 7.0 through 20.0 in Summer '22; "if you request
any resource or use an operation from a retired API version, REST API returns the 410:GONE error
code". A version newer than the org's release does not exist yet: 404 NOT_FOUND, as for any unknown
resource. The Streaming API (CometD) only ever accepted 37.0 and later.
"""

from __future__ import annotations

import re

from sfsign.emulator.errors import ApiError, not_found

NEWEST = 68  # Winter '27
OLDEST = 31  # Summer '14; 31.0 through 40.0 are deprecated from Summer '27, retired from Summer '28
OLDEST_RETIRED = 7
OLDEST_STREAMING = 37
NEWEST_VERSION = f"{NEWEST}.0"
REST_VERSION_RE = re.compile(r"^v(\d+)\.0$")


def release_label(version: int) -> str:
    """Release name of an API version: v37.0 was Summer '16, three releases a year since."""
    k = version - 37
    season = ("Winter", "Spring", "Summer")[(2 + k) % 3]
    return f"{season} '{16 + (2 + k) // 3:02d}"


def versions_list() -> list[dict[str, str]]:
    """`GET /services/data/`: oldest first, as Salesforce lists them."""
    return [{"label": release_label(v), "url": f"/services/data/v{v}.0", "version": f"{v}.0"}
            for v in range(OLDEST, NEWEST + 1)]


def retired() -> ApiError:
    """410 for a retired version (the status is documented; the body follows the REST error shape)."""
    return ApiError(410, "GONE", "The requested API version has been retired and is no longer available.")


def rest_version(segment: str) -> str:
    """The `NN.0` of a `/services/data/vNN.0` path segment the org serves, else the error it answers."""
    match = REST_VERSION_RE.match(segment)
    if match is None:
        raise not_found()
    number = int(match.group(1))
    if OLDEST <= number <= NEWEST:
        return f"{number}.0"
    if OLDEST_RETIRED <= number < OLDEST:
        raise retired()
    raise not_found()


def streaming_version_served(number: int) -> bool:
    return OLDEST_STREAMING <= number <= NEWEST
