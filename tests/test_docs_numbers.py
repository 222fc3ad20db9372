"""Numbers quoted in the README and the benchmark docstrings agree with the measured results and the code."""

from __future__ import annotations

import json
import re
from pathlib import Path

from patchdet.runtime.tiling import tile_grid

ROOT = Path(__file__).resolve().parents[1]


def test_soak_tiles_per_frame_agree_everywhere():
    result = json.loads((ROOT / "benchmarks/results/soak.json").read_text())
    frame_wh = tuple(result["frame_wh"])
    tiles = len(tile_grid(frame_wh, 96, 96))
    assert result["tiles_per_frame"] == tiles
    readme = (ROOT / "README.md").read_text()
    quoted = re.search(r"soak\.md`: .*?\((\d+)x(\d+), (\d+) tiles", readme, re.S)
    assert quoted and (int(quoted[1]), int(quoted[2])) == frame_wh and int(quoted[3]) == tiles
    soak = (ROOT / "benchmarks/soak.py").read_text()
    default = re.search(r'"--size", default="(\d+)x(\d+)"', soak)
    assert default and (int(default[1]), int(default[2])) == frame_wh
    assert f"({tiles}\ntiles per frame" in soak or f"({tiles} tiles per frame" in soak
    assert f"({tiles} tiles per frame" in (ROOT / "benchmarks/results/soak.md").read_text()
