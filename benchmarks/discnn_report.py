"""Turn DisCNN training runs + ``patchdet evaluate --json`` reports into a Markdown record.

Usage::

    python -m benchmarks.discnn_report --run runs/car_n2o --eval runs/car_n2o/eval_test.json \
        [--run runs/car_n2o_softmax --eval runs/car_n2o_softmax/eval_test.json] \
        [--graft runs/graft_car_bird/graft.json ...] --title "..." --command "..." --out benchmarks/results/X.md

Numbers are copied from the JSON files, never typed by hand.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

from patchdet.training.evaluate import threshold_rows


def _epoch_seconds(run: Path) -> list[float]:
    lines = (run / "metrics.jsonl").read_text(encoding="utf-8").splitlines()
    return [json.loads(line)["epoch_seconds"] for line in lines]


def _table(report: dict) -> list[str]:
    rows = ["| threshold | class | precision | recall | F1 | TP | FN | FP | TN |", "|---|---|---|---|---|---|---|---|---|"]
    for threshold, side, m, c in threshold_rows(report):
        counts = f"{c['tp']} | {c['fn']} | {c['fp']} | {c['tn']}" if c else " | | | "
        rows.append(f"| {threshold:g} | {side} | {m['precision']:.3f} | {m['recall']:.3f} | {m['f1']:.3f} | {counts} |")
    return rows


def _unseen(report: dict) -> list[str]:
    classes = list(report["counts"])
    rows = ["| class | images | at exactly 0 | median modulus | " + " | ".join(f"> {t['threshold']:g}" for t in
                                                                          report["thresholds"]) + " |",
            "|---|---|---|---|" + "---|" * len(report["thresholds"])]
    for name in classes:
        above = " | ".join(f"{t['per_class_above'][name]:.3f}" for t in report["thresholds"])
        role = "positive" if name == report["positive"] else "negative" if name in report["negatives"] else "unseen"
        rows.append(f"| {name} ({role}) | {report['counts'][name]} | {report['at_origin'][name]:.3f} | "
                    f"{report['score_median'][name]:.3f} | {above} |")
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", action="append", default=[], help="run folder (repeat, paired with --eval)")
    parser.add_argument("--eval", action="append", default=[], help="evaluate JSON for the matching --run")
    parser.add_argument("--graft", action="append", default=[], help="graft.json files")
    parser.add_argument("--title", required=True)
    parser.add_argument("--command", action="append", default=[], help="commands that produced the inputs")
    parser.add_argument("--note", action="append", default=[], help="free-text paragraphs")
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    if len(args.run) != len(args.eval):
        parser.error("give one --eval per --run")
    lines = [f"# {args.title}", ""]
    for note in args.note:
        lines += [note, ""]
    if args.command:
        lines += ["Commands:", "", "```bash", *args.command, "```", ""]
    summary = {"runs": []}
    for run_dir, eval_path in zip(args.run, args.eval, strict=True):
        run, report = Path(run_dir), json.loads(Path(eval_path).read_text(encoding="utf-8"))
        seconds = _epoch_seconds(run)
        config = (run / "config.yaml").read_text(encoding="utf-8")
        loss = next((line.split(":", 1)[1].strip() for line in config.splitlines() if line.startswith("loss:")), "?")
        lines += [f"## {run.name} (loss `{loss}`)", "",
                  f"- epochs: {len(seconds)}; wall time per epoch on this machine: median {statistics.median(seconds):.1f} s "
                  f"(min {min(seconds):.1f}, max {max(seconds):.1f}); total {sum(seconds) / 60:.1f} min",
                  f"- evaluated: `{report['model']}` on `{report['data']}`", ""]
        lines += _table(report) + [""]
        lines += ["Per class (fraction of images whose modulus is above each threshold):", ""] + _unseen(report) + [""]
        summary["runs"].append({"run": run_dir, "loss": loss, "epoch_seconds": seconds, "report": report})
    for graft_path in args.graft:
        graft = json.loads(Path(graft_path).read_text(encoding="utf-8"))
        classes = ", ".join(graft["config"]["classes"])
        lines += [f"## Grafting (Algorithm 1) on {{{classes}}}", "",
                  f"Source: `{graft['config']['model']}`; {graft['config']['epochs']} epochs; train counts "
                  f"{graft['train_counts']}; held-out {graft['heldout_counts']}.", "",
                  "| conv layers | first-epoch loss | last-epoch loss | held-out accuracy | converges |",
                  "|---|---|---|---|---|"]
        for name, result in graft["runs"].items():
            lines.append(f"| {name} | {result['first_epoch_loss']:.4f} | {result['last_epoch_loss']:.4f} | "
                         f"{result['heldout_accuracy']:.3f} | {'yes' if result['converged'] else 'no'} |")
        lines.append("")
        summary.setdefault("graft", []).append(graft)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(lines), encoding="utf-8")
    out.with_suffix(".json").write_text(json.dumps(summary, indent=1) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
