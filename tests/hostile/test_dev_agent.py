"""The dev agent's JSON and KV API under hostile bodies and keys: JSON bombs (deep nesting, huge numbers, huge
strings) answered 400 or 413 in Consul's words, never a 500; hostile KV keys stored and read back as the bytes
they are, or refused, never a crash or a path outside the store."""

from __future__ import annotations

import json
import urllib.error
import urllib.parse
import urllib.request

from meshlet.http_limits import MAX_BODY_BYTES
from tests.hostile.conftest import CALL_TIMEOUT_S, Face, Hostile

REGISTER = "/v1/agent/service/register"


def send(url: str, body: bytes, method: str = "PUT") -> int:
    request = urllib.request.Request(url, data=body, method=method)
    try:
        with urllib.request.urlopen(request, timeout=CALL_TIMEOUT_S) as response:
            response.read()
            return int(response.status)
    except urllib.error.HTTPError as error:
        error.read()
        return int(error.code)
    except (urllib.error.URLError, ConnectionError) as error:
        return -1 if "reset" in str(error).lower() or "broken pipe" in str(error).lower() else 0


# Each bomb and what the agent answers: 400 (Consul's "Request decode failed"), 413 past MAX_BODY_BYTES (or the
# connection cut while the client still sends past it, -1); a long string within the limit is a long name (200).
BOMBS = {
    "200,000 nested arrays": (b"[" * 200_000 + b"]" * 200_000, {400}),
    "100,000 nested objects": (b'{"a":' * 100_000 + b"1" + b"}" * 100_000, {400}),
    "900 nested objects in Meta": (b'{"Name": "bomb", "Meta": ' + b'{"a":' * 900 + b"1" + b"}" * 900 + b"}", {400}),
    "a 900,000-digit number": (b'{"Name": "bomb", "Port": ' + b"9" * 900_000 + b"}", {400}),
    "1e999999 as a port": (b'{"Name": "bomb", "Port": 1e999999}', {400}),
    "a 1,000,000-character name": (b'{"Name": "' + b"n" * 1_000_000 + b'"}', {200}),
    "a 2 MiB body": (b'{"Name": "' + b"n" * 2 * MAX_BODY_BYTES + b'"}', {413, -1}),
    "10,000 Meta keys": (json.dumps({"Name": "bomb", "Meta": {f"k{i}": "v" for i in range(10_000)}}).encode(), {400}),
}


def test_json_bombs(faces: dict[str, Face]) -> None:
    face = faces["dev agent HTTP"]
    base = f"http://127.0.0.1:{face.port}"
    statuses: dict[str, int] = {}
    with Hostile(face, "JSON bombs: nesting, huge numbers, huge strings (x5 each)") as run:
        for what, (body, _) in BOMBS.items():
            for _ in range(5):
                statuses[what] = send(base + REGISTER, body)
        run.note = "; ".join(f"{what}: {status}" for what, status in statuses.items())
    for what, (_, expected) in BOMBS.items():
        assert statuses[what] in expected, f"{what} was answered {statuses[what]}, not {expected}"


HOSTILE_KEYS = [
    "../../../../etc/passwd", "..%2F..%2Fetc", "a//b", "/leading", "%00nul", "\u202eright-to-left", "emoji-\U0001f600",
    "x" * 4000, "con/aux/nul", "?recurse", "#fragment", "a b", "\\windows\\path", "tab\tkey", "percent-%25",
]  # fmt: skip


def test_hostile_kv_keys(faces: dict[str, Face]) -> None:
    face = faces["dev agent HTTP"]
    base = f"http://127.0.0.1:{face.port}/v1/kv/hostile/"
    results: dict[str, str] = {}
    with Hostile(face, "hostile KV keys, 1,000 keys, a value past 512 KiB") as run:
        for key in HOSTILE_KEYS:
            url = base + urllib.parse.quote(key, safe="")
            written = send(url, key.encode())
            if written == 200:
                with urllib.request.urlopen(url + "?raw", timeout=CALL_TIMEOUT_S) as response:
                    results[key] = "kept" if response.read() == key.encode() else "CHANGED"
            else:
                results[key] = f"refused {written}"
        stored = sum(send(f"{base}many/{n}", b"v" * 1024) == 200 for n in range(1000))
        too_big = send(base + "too-big", b"v" * (512 * 1024 + 1))
        run.note = (
            f"{len(HOSTILE_KEYS)} hostile keys kept as written; 1,000 x 1 KiB stored: {stored}; 512 KiB+1: {too_big}"
        )
    assert all(result == "kept" or result.startswith("refused 4") for result in results.values()), results
    assert too_big == 413
