"""Per-frame detections -> events with hysteresis: one passing car is one event, not 40 frame records.

A track follows one object from frame to frame: greedy nearest-centre matching per class, against where the
track's constant velocity puts it now, within ``match_distance`` diagonals of the larger of the track's and the
detection's boxes (a car coming nearer grows and speeds up in the picture). It becomes an
event once it was seen in ``min_hits`` of its last ``window`` frames, and the event ends when the object has
not been seen for ``end_after_s`` seconds. Tracks that never reach ``min_hits`` (flicker) make no event.
"""

from __future__ import annotations

import itertools
import uuid
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from patchdet.runtime.detections import Detections, nested_fraction
from patchdet.runtime.service_config import EventConfig


@dataclass
class Event:
    """One object seen over time.

    Attributes:
        event_id: Unique id (stable across the start and end messages).
        camera: Camera name.
        class_name: Class of the object.
        start_time: UNIX seconds of the first frame the object was seen in.
        end_time: UNIX seconds of the last frame it was seen in (``None`` while it lasts).
        best_score: Highest score seen.
        best_xyxy: Box of the best score, in frame pixels.
        frames: Frames the object was seen in.
        snapshot: Path of the snapshot JPEG (when written).
    """

    event_id: str
    camera: str
    class_name: str
    start_time: float
    end_time: float | None
    best_score: float
    best_xyxy: tuple[float, float, float, float]
    frames: int = 0
    snapshot: str | None = None

    def to_json(self, state: str) -> dict[str, Any]:
        return {"type": state, "id": self.event_id, "camera": self.camera, "class": self.class_name,
                "start_time": round(self.start_time, 3),
                "end_time": None if self.end_time is None else round(self.end_time, 3),
                "best_score": round(self.best_score, 4), "best_box": [round(v, 1) for v in self.best_xyxy],
                "frames": self.frames, "snapshot": self.snapshot}


@dataclass
class _Track:
    class_id: int
    center: np.ndarray
    diagonal: float
    last_seen: float  # monotonic-free: the frame's timestamp in seconds
    hits: deque = field(default_factory=deque)
    event: Event | None = None
    best_score: float = -np.inf
    best_xyxy: tuple[float, float, float, float] = (0.0, 0.0, 0.0, 0.0)
    first_seen: float = 0.0
    seen: int = 0
    best_changed: bool = False
    velocity: np.ndarray = field(default_factory=lambda: np.zeros(2))  # pixels per second, smoothed


def overlap_of_smaller(a: np.ndarray, b: np.ndarray) -> float:
    """Intersection of boxes ``a`` and ``b`` (xyxy) over the smaller one's area: 1.0 when one holds the other."""
    return float(nested_fraction(np.asarray(a)[None], np.asarray(b)[None])[0, 0])


class EventTracker:
    """Turns each frame's detections into ``("start"|"end", Event)`` transitions for one camera.

    Args:
        camera: Camera name, copied into every event.
        class_names: The model card's class names (index = class id).
        config: Hysteresis settings.
    """

    def __init__(self, camera: str, class_names: tuple[str, ...] | list[str], config: EventConfig) -> None:
        self.camera, self.class_names, self.config = camera, tuple(class_names), config
        self.tracks: list[_Track] = []
        self._ids = itertools.count()

    def update(self, detections: Detections, timestamp: float) -> list[tuple[str, Event, _Track]]:
        """Advance by one frame at ``timestamp`` (seconds); returns the events that started or ended."""
        cfg = self.config
        xyxy = np.asarray(detections.xyxy, np.float64).reshape(-1, 4)
        centers = (xyxy[:, :2] + xyxy[:, 2:]) / 2.0
        diagonals = np.hypot(xyxy[:, 2] - xyxy[:, 0], xyxy[:, 3] - xyxy[:, 1])
        unmatched = set(range(len(detections)))
        for track in self.tracks:
            track.hits.append(False)
        # Greedy: each track takes the nearest free detection of its class within match_distance diagonals
        # of where its velocity puts it now.
        pairs = []
        for t, track in enumerate(self.tracks):
            predicted = track.center + track.velocity * (timestamp - track.last_seen)
            for d in unmatched:
                if int(detections.class_id[d]) != track.class_id:
                    continue
                dist = float(np.linalg.norm(centers[d] - predicted))
                if dist <= cfg.match_distance * max(track.diagonal, float(diagonals[d]), 1.0):
                    pairs.append((dist, t, d))
        taken_tracks: set[int] = set()
        for _, t, d in sorted(pairs):
            if t in taken_tracks or d not in unmatched:
                continue
            taken_tracks.add(t)
            unmatched.discard(d)
            self._see(self.tracks[t], xyxy[d], float(detections.score[d]), timestamp)
        tracked = [d for d in range(len(detections)) if d not in unmatched]
        # Best first, so that of two boxes on one new object the better one starts the track.
        for d in sorted(unmatched, key=lambda i: -float(detections.score[i])):
            tracked_object = any(int(detections.class_id[e]) == int(detections.class_id[d])
                                 and overlap_of_smaller(xyxy[d], xyxy[e]) >= cfg.same_object_overlap for e in tracked)
            tracked.append(d)  # one object's boxes: a box mostly inside this one is that object too
            if tracked_object:
                continue  # a second box on an object that already has a track
            track = _Track(int(detections.class_id[d]), centers[d], 0.0, timestamp, deque(maxlen=cfg.window),
                           first_seen=timestamp)
            self._see(track, xyxy[d], float(detections.score[d]), timestamp, new=True)
            self.tracks.append(track)
        transitions = []
        kept = []
        for track in self.tracks:
            if track.event is None and sum(track.hits) >= cfg.min_hits:
                track.event = Event(f"{self.camera}-{uuid.uuid4().hex[:12]}", self.camera, self._name(track.class_id),
                                    track.first_seen, None, track.best_score, track.best_xyxy, track.seen)
                transitions.append(("start", track.event, track))
            gone = timestamp - track.last_seen >= cfg.end_after_s
            if gone:
                if track.event is not None:
                    track.event.end_time = track.last_seen
                    transitions.append(("end", track.event, track))
                continue
            if track.event is None and len(track.hits) == cfg.window and not any(track.hits):
                continue  # flicker that never became an event
            kept.append(track)
        self.tracks = kept
        return transitions

    def close(self) -> list[tuple[str, Event, _Track]]:
        """End every open event (the service is stopping)."""
        ended = []
        for track in self.tracks:
            if track.event is not None:
                track.event.end_time = track.last_seen
                ended.append(("end", track.event, track))
        self.tracks = []
        return ended

    def _see(self, track: _Track, box: np.ndarray, score: float, timestamp: float, new: bool = False) -> None:
        if new:
            track.hits.append(True)
        else:
            track.hits[-1] = True
        center = (box[:2] + box[2:]) / 2.0
        if not new and timestamp > track.last_seen:  # smoothed, so one shifted box does not fling the prediction
            step = (center - track.center) / (timestamp - track.last_seen)
            track.velocity = step if not track.velocity.any() else 0.5 * (track.velocity + step)
        track.center = center
        track.diagonal = float(np.hypot(box[2] - box[0], box[3] - box[1]))
        track.last_seen = timestamp
        track.seen += 1
        track.best_changed = score > track.best_score
        if track.best_changed:
            track.best_score, track.best_xyxy = score, tuple(float(v) for v in box)
        if track.event is not None:
            track.event.frames = track.seen
            track.event.best_score, track.event.best_xyxy = track.best_score, track.best_xyxy

    def _name(self, class_id: int) -> str:
        return self.class_names[class_id] if 0 <= class_id < len(self.class_names) else str(class_id)
