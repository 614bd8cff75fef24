"""Reading a runner's control channel in the runner tests: frames up to "done"."""

from __future__ import annotations

import json


def read_until_done(reader) -> list[dict]:
    """Frames up to and with "done"; an artifact frame's payload (its size in bytes) follows
    it on the channel and is kept as ``data``."""
    frames = []
    while True:
        frame = json.loads(reader.readline())
        if frame["type"] == "artifact":
            frame["data"] = reader.read(frame["size"])
        frames.append(frame)
        if frame["type"] == "done":
            return frames
