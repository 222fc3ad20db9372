"""One import name, a light public API, and an import graph that points one way."""

from __future__ import annotations

import ast
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
STAGES = ("training", "export", "runtime")


def _imports(package_dir: Path) -> dict[str, set[str]]:
    """file -> every module it imports (absolute names), from the source text."""
    found: dict[str, set[str]] = {}
    for path in sorted(package_dir.rglob("*.py")):
        names: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                names.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names.add(node.module)
        found[str(path.relative_to(REPO))] = names
    return found


def _module_strings(package_dir: Path) -> set[str]:
    """Module names kept in strings ("pkg.module:attr" tables of backends, formats, commands)."""
    pattern = re.compile(r"[\"']((?:patchdet\.)?(?:runtime|export|training|benchmarks)\.[a-z_.]+)(?::[A-Za-z_]+)?[\"']")
    files = (".json", ".md", ".yaml", ".csv", ".png", ".onnx", ".xml", ".py")  # file names, not modules
    return {m for path in package_dir.rglob("*.py") for m in pattern.findall(path.read_text(encoding="utf-8"))
            if not m.endswith(files)}


def _top(name: str) -> str:
    return name.split(".")[0]


@pytest.mark.parametrize("folder", [*STAGES, "patchdet", "benchmarks"])
def test_no_top_level_stage_modules_are_imported(folder):
    for path, names in _imports(REPO / folder).items():
        bad = sorted(n for n in names if _top(n) in STAGES)
        assert not bad, f"{path} imports {bad}: use patchdet.{bad[0]}"
    for name in _module_strings(REPO / folder):
        assert name.startswith(("patchdet.", "benchmarks.")), f"{folder}: module string {name!r}"


def test_import_graph_points_one_way():
    rules = {
        "runtime": ("patchdet.training", "patchdet.export", "patchdet.cli", "benchmarks", "torch"),
        "export": ("patchdet.cli", "benchmarks"),
        "training": ("patchdet.export", "patchdet.cli", "benchmarks"),
        "patchdet": ("benchmarks",),
    }
    for folder, forbidden in rules.items():
        for path, names in _imports(REPO / folder).items():
            bad = sorted(n for n in names if any(n == f or n.startswith(f + ".") for f in forbidden))
            assert not bad, f"{path} imports {bad}, against the pipeline's direction"


def test_import_patchdet_is_light_and_exposes_the_api():
    code = ("import sys, patchdet\n"
            "names = ['Detector', 'Detections', 'ModelCard', 'open_source', 'detect', 'DetectConfig']\n"
            "assert all(getattr(patchdet, n) for n in names)\n"
            "assert 'torch' not in sys.modules, 'torch was imported'\n"
            "import importlib.util as u\n"
            "assert all(u.find_spec(n) is None for n in ('runtime', 'export', 'training', 'benchmarks'))\n")
    # Run from outside the checkout, so only the installed package can be found.
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO.parent if REPO.parent.exists() else "/")


def test_unknown_public_name_is_an_attribute_error():
    import patchdet

    with pytest.raises(AttributeError, match="no attribute 'Nope'"):
        patchdet.Nope  # noqa: B018


@pytest.mark.slow
def test_wheel_installs_exactly_one_top_level_package(tmp_path):
    import setuptools

    if int(setuptools.__version__.split(".")[0]) < 77:  # pyproject's SPDX license string needs 77
        pytest.skip(f"setuptools {setuptools.__version__} in this environment cannot build the wheel (needs >= 77)")
    source = tmp_path / "src"  # a copy, so the build leaves nothing in the checkout
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, source / name)
    for folder in ("patchdet", *STAGES, "benchmarks", "tests"):
        shutil.copytree(REPO / folder, source / folder, ignore=shutil.ignore_patterns("__pycache__"))
    proc = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                           "-w", str(tmp_path), str(source)], capture_output=True, text=True, timeout=300)
    if proc.returncode != 0 and "No module named" in proc.stderr:
        pytest.skip(f"cannot build a wheel here: {proc.stderr.strip().splitlines()[-1]}")
    assert proc.returncode == 0, proc.stderr[-2000:]
    (wheel,) = tmp_path.glob("patchdet-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    tops = {n.split("/")[0] for n in names}
    assert {t for t in tops if not t.endswith(".dist-info")} == {"patchdet"}, tops
    assert "patchdet/runtime/assets/discnn8_automobile.onnx" in names
    assert {"patchdet/training/train.py", "patchdet/export/onnx.py", "patchdet/runtime/detector.py"} <= set(names)
    assert not any(n.startswith("benchmarks") or "/tests/" in n for n in names)
