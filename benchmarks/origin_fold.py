"""``patchdet fold-origin`` measured: negatives exactly at the origin and F1, before and after, on CIFAR-10 test.

Each checkpoint is folded (``patchdet fold-origin``, fitted on its own validation split) at each target and
evaluated with ``patchdet evaluate`` on the test images (automobile vs bird + cat, unseen truck vs deer, frog,
horse: the DisCNN paper's Tables 4-5); the unfolded checkpoint is evaluated the same way. Writes
``<results>.json`` and ``<results>.md``; every number is read from the evaluation reports.

    python -m benchmarks.origin_fold --data ../shared/data/cifar10/test \
        --model paper=models/discnn8_automobile.pt --targets 0.9,0.95,0.98 \
        --model 'ablation n2o=runs/n2o_ablation/n2o/n2o/seed0' --runs runs/origin_fold
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from patchdet.runtime.atomic import atomic_write_json, atomic_write_text
from patchdet.runtime.metrics import precision_recall_f1

NEGATIVES = ("bird", "cat")
UNSEEN_NEGATIVES = ("deer", "frog", "horse")


def patchdet(*args: str) -> None:
    subprocess.run([str(Path(sys.executable).parent / "patchdet"), *args, "-q"], check=True,
                   stdout=subprocess.DEVNULL)


def evaluate(model: str, data: str, out: Path) -> dict[str, Any]:
    if not out.is_file():
        patchdet("evaluate", model, "--data", data, "--positive", "automobile", "--negative", ",".join(NEGATIVES),
                 "--unseen", "truck," + ",".join(UNSEEN_NEGATIVES), "--thresholds", "0,1", "--json", str(out))
    return json.loads(out.read_text(encoding="utf-8"))


def summarise(report: dict[str, Any]) -> dict[str, Any]:
    """The columns of one row from a ``patchdet evaluate`` report."""
    by_threshold = {row["threshold"]: row for row in report["thresholds"]}
    counts, at_origin = report["counts"], report["at_origin"]
    above = by_threshold[1.0]["per_class_above"]
    truck_tp = above["truck"] * counts["truck"]
    truck_fn = counts["truck"] - truck_tp
    unseen_fp = sum(above[c] * counts[c] for c in UNSEEN_NEGATIVES)
    unseen_tn = sum(counts[c] for c in UNSEEN_NEGATIVES) - unseen_fp
    return {
        "f1_at_1": [round(by_threshold[1.0]["positive"]["f1"], 4), round(by_threshold[1.0]["negative"]["f1"], 4)],
        "f1_at_0": [round(by_threshold[0.0]["positive"]["f1"], 4), round(by_threshold[0.0]["negative"]["f1"], 4)],
        "negatives_at_origin": round(sum(at_origin[c] * counts[c] for c in NEGATIVES)
                                     / sum(counts[c] for c in NEGATIVES), 4),
        "at_origin": at_origin,
        "unseen_f1_at_1": [round(precision_recall_f1(truck_tp, unseen_fp, truck_fn)["f1"], 4),
                           round(precision_recall_f1(unseen_tn, truck_fn, unseen_fp)["f1"], 4)],
        "unseen_negatives_at_origin": round(sum(at_origin[c] * counts[c] for c in UNSEEN_NEGATIVES)
                                            / sum(counts[c] for c in UNSEEN_NEGATIVES), 4),
    }


def render(rows: list[dict[str, Any]], command: str) -> str:
    lines = [
        "# N2O: negatives exactly on the origin by a last-layer fold (`patchdet fold-origin`, issue 14)",
        "",
        "Each DisCNN checkpoint is folded after training: the last FC layer's pre-activations are lowered by a "
        "margin delta (the target quantile of the validation negatives' largest pre-activation) and scaled by alpha "
        "(threshold 1 maps to the best validation threshold), both fitted on the run's own validation split "
        "(`training/origin_fold.py`). Evaluated on CIFAR-10 test, 1,000 images per class: automobile vs bird + cat "
        "(Table 4), unseen truck vs deer + frog + horse (Table 5).",
        "",
        "```bash",
        command,
        "```",
        "",
        "| model | fold target | delta / alpha | F1 car / not-car at 1 | F1 at 0 | bird + cat exactly at the origin "
        "| unseen truck F1 / deer+frog+horse F1 at 1 | deer+frog+horse at the origin |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        fit = row.get("fit")
        lines.append("| {} | {} | {} | {:.3f} / {:.3f} | {:.3f} / {:.3f} | {:.1f} % | {:.3f} / {:.3f} | {:.1f} % |".format(
            row["label"], row["target"] if fit else "none", f"{fit['delta']:.3f} / {fit['alpha']:.3f}" if fit else "-",
            *row["f1_at_1"], *row["f1_at_0"], 100 * row["negatives_at_origin"], *row["unseen_f1_at_1"],
            100 * row["unseen_negatives_at_origin"]))
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", required=True, help="CIFAR-10 test ImageFolder")
    parser.add_argument("--model", action="append", required=True, help="LABEL=CHECKPOINT (repeatable)")
    parser.add_argument("--targets", default="0.9", help="fold targets, comma separated")
    parser.add_argument("--runs", default="runs/origin_fold", help="folder for folded checkpoints and reports")
    parser.add_argument("--results", default="benchmarks/results/origin_fold")
    args = parser.parse_args()
    runs = Path(args.runs)
    rows = []
    for spec in args.model:
        label, _, checkpoint = spec.partition("=")
        slug = label.replace(" ", "_")
        folder = runs / slug
        folder.mkdir(parents=True, exist_ok=True)
        rows.append({"label": label, "checkpoint": checkpoint, "target": None,
                     **summarise(evaluate(checkpoint, args.data, folder / "unfolded.eval.json"))})
        for target in args.targets.split(","):
            out = folder / f"target{target}"
            if not (out / "best.pt").is_file():
                patchdet("fold-origin", checkpoint, "--target", target, "--out", str(out))
            fit = json.loads((out / "fold.json").read_text(encoding="utf-8"))["fit"]
            rows.append({"label": label, "checkpoint": checkpoint, "target": float(target), "fit": fit,
                         **summarise(evaluate(str(out), args.data, out / "eval.json"))})
    command = "python -m benchmarks.origin_fold " + " ".join(
        f"'{a}'" if " " in a else a for a in sys.argv[1:])
    results = Path(args.results)
    atomic_write_json(results.with_suffix(".json"), {"command": command, "rows": rows})
    atomic_write_text(results.with_suffix(".md"), render(rows, command))
    print(render(rows, command))
    return 0


if __name__ == "__main__":
    sys.exit(main())
