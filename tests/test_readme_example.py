"""The README's Python example runs as written and gives the same detections as the CLI on the same input."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from patchdet.runtime.builtin import BUILTIN_CLIP, BUILTIN_MODEL

REPO = Path(__file__).resolve().parents[1]


def _readme_python_example() -> str:
    text = (REPO / "README.md").read_text(encoding="utf-8")
    section = text.split("## Python API", 1)[1]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


@pytest.mark.skipif(not BUILTIN_MODEL.is_file() or not BUILTIN_CLIP.is_file(), reason="no built-in model or clip")
def test_readme_example_matches_the_cli(tmp_path):
    shutil.copy(BUILTIN_CLIP, tmp_path / "street.mp4")
    env = {"PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "2"}
    python = subprocess.run([sys.executable, "-c", _readme_python_example()], cwd=tmp_path, capture_output=True,
                            text=True, timeout=600, env=env, check=True)
    lines = [re.fullmatch(r"(\d+) (\[.*\]) (\[.*\])", line) for line in python.stdout.splitlines()]
    from_python = {int(m.group(1)): json.loads(m.group(2)) for m in lines}
    cli = subprocess.run([sys.executable, "-m", "patchdet", "detect", "--source", "street.mp4", "--jsonl", "out.jsonl",
                          "--log-every", "0"], cwd=tmp_path, capture_output=True, text=True, timeout=600, env=env)
    assert cli.returncode == 0, cli.stderr[-2000:]
    from_cli = {r["frame"]: [[round(v) for v in box] for box in r["boxes"]]
                for r in map(json.loads, (tmp_path / "out.jsonl").read_text().splitlines())}
    assert len(from_python) == len(from_cli) > 0
    assert from_python == from_cli
    assert sum(map(len, from_cli.values())) > 0  # the example finds something, not two empty lists
