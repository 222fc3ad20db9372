"""A/B in one run: OpenVINO synchronous inference with and without ``share_inputs`` (interleaved rounds).

    nice -n 5 .venv/bin/python -m benchmarks.openvino_share_inputs ARTIFACT.xml

One 1080p frame of the built-in clip, 96x96 tiles every 96 px (240 tiles, a 26 MB float32 batch).
"""

from __future__ import annotations

import statistics
import sys
import time

from patchdet.runtime.bench import clip_frames
from patchdet.runtime.settings import DetectorSettings, load_detector


def main(path: str, rounds: int = 20) -> None:
    detector = load_detector(DetectorSettings(model=path, backend="openvino", tile=96, stride=96),
                             reuse_buffers=False)
    frames, _ = clip_frames(None, (1920, 1080), 1)
    batch = detector.preprocess(frames[0]).batch
    request = detector.backend._request
    runs = {"copy": lambda: request.infer({0: batch}),
            "share_inputs": lambda: request.infer({0: batch}, share_inputs=True)}
    for run in runs.values():
        run()
        run()
    times: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(rounds):
        for name, run in runs.items():
            start = time.perf_counter()
            run()
            times[name].append((time.perf_counter() - start) * 1e3)
    print(path, {name: round(statistics.median(t), 1) for name, t in times.items()}, f"median ms, {rounds} rounds")


if __name__ == "__main__":
    main(sys.argv[1])
