"""One fair loss comparison: the same backbone, data, schedule and seeds under each loss.

Usage (the issue's full setting; hours on a 2-core CPU)::

    nice -n 10 python -m benchmarks.loss_comparison --data ../shared/data/cifar10 --task cifar10 --task cifar3 \
        --arch smallcnn --epochs 30 --seeds 0,1

Tasks: ``cifar10`` (all 10 classes) and ``cifar3`` (the DisCNN subset automobile, bird, cat), scored by
test accuracy after the last epoch (no checkpoint is picked on the test set); ``n2o`` (DisCNN detection,
automobile vs bird + cat, scored by F1 at ``--threshold`` and the share of negatives exactly at the origin)
for the N2O negative-term ablation. Losses are ``NAME`` or ``NAME:key=value,...`` (loss options).

Each run trains through ``patchdet.training.train`` into ``--runs/<task>/<label>/seed<k>``; a finished run is
reused, an interrupted one resumed, so the command can be re-run until it completes. Results from every
task run so far are merged into ``<results>.json`` and rendered to ``<results>.md`` and ``<results>.png``
(test accuracy or F1 per epoch, mean over seeds). Numbers are copied from the runs, never typed by hand.
"""

from __future__ import annotations

import argparse
import json
import logging
import platform
import statistics
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from patchdet.runtime.atomic import atomic_output
from patchdet.training.config import TrainConfig

log = logging.getLogger("benchmarks.loss_comparison")

MULTICLASS_LOSSES = ("softmax", "center", "cosface", "arcface", "msl", "gini-kl", "cosine", "nac", "pod")
N2O_VARIANTS = ("n2o", "n2o:negative_term=modulus", "n2o:negative_term=l1", "n2o:negative_term=hinge")
TASKS: dict[str, dict[str, Any]] = {
    "cifar10": {"classes": (), "losses": MULTICLASS_LOSSES},
    "cifar3": {"classes": ("automobile", "bird", "cat"), "losses": MULTICLASS_LOSSES},
    "n2o": {"positive": "automobile", "negatives": ("bird", "cat"), "losses": N2O_VARIANTS},
}


def parse_loss(spec: str) -> tuple[str, dict[str, Any]]:
    """``name:key=value,key=value`` -> (name, options) with numbers parsed."""
    name, _, rest = spec.partition(":")
    options: dict[str, Any] = {}
    for item in filter(None, rest.split(",")):
        key, sep, value = item.partition("=")
        if not sep:
            raise ValueError(f"loss option {item!r} in {spec!r} is invalid: expected key=value")
        try:
            options[key] = int(value) if value.lstrip("-").isdigit() else float(value)
        except ValueError:
            options[key] = value
    return name, options


def default_options(name: str, epochs: int) -> dict[str, Any]:
    """Gini + KL starts at the same *fraction* of training as the paper's epoch 10 of 200."""
    return {"start_epoch": 1 + epochs // 20} if name == "gini-kl" else {}


def decode_once() -> None:
    """Decode each image set once per process, not once per run (dozens of runs read the same test set).

    The training loop only reads the arrays (subsets are copies), so sharing them between runs is safe.
    """
    import patchdet.training.run_data as loop

    original = loop.load_image_set
    cache: dict[tuple, Any] = {}

    def cached(source, class_names, *args):
        key = (source, tuple(class_names) if class_names else None, *args)
        if key not in cache:
            cache[key] = original(source, class_names, *args)
        return cache[key]

    loop.load_image_set = cached


def test_subset(test_dir: Path, per_class: int, root: Path) -> Path:
    """An ImageFolder of symlinks to the first ``per_class`` images (sorted names) of each test class."""
    subset = root / f"test_first{per_class}"
    for class_dir in sorted(p for p in test_dir.iterdir() if p.is_dir()):
        target = subset / class_dir.name
        target.mkdir(parents=True, exist_ok=True)
        for image in sorted(class_dir.iterdir())[:per_class]:
            link = target / image.name
            if not link.exists():
                link.symlink_to(image.resolve())
    return subset


def run_one(base: TrainConfig, task: str, spec: str, seed: int, runs: Path) -> dict[str, Any]:
    from patchdet.training.train import TrainingDiverged, train

    name, options = parse_loss(spec)
    options = {**default_options(name, base.epochs), **options}
    label = spec.replace(":", "_").replace("=", "-").replace(",", "_")
    out = runs / task / label / f"seed{seed}"
    spec_task = TASKS[task]
    cfg = replace(base, loss=name, loss_options=options, seed=seed, out=str(out),
                  classes=tuple(spec_task.get("classes", ())), positive=spec_task.get("positive"),
                  negatives=tuple(spec_task.get("negatives", ())), latent_dim=16 if task == "n2o" else None)
    _check_same_settings(out, cfg)
    metrics_path = out / "metrics.jsonl"
    history = _history(metrics_path)
    started = time.monotonic()
    status = "done"
    if len(history) < cfg.epochs:
        try:
            train(replace(cfg, resume=(out / "last.pt").exists()))
        except TrainingDiverged as exc:
            log.warning("%s %s seed %d diverged: %s", task, spec, seed, exc)
            status = "diverged"
        history = _history(metrics_path)
    else:
        log.info("reusing finished run %s", out)
    unseen = unseen_classes_report(out, Path(cfg.val_data)) if task == "n2o" and status == "done" else None
    return {"task": task, "loss": spec, "name": name, "options": options, "seed": seed, "run": str(out),
            "status": status, "unseen": unseen, "epochs": len(history), "wall_s_this_call": round(time.monotonic() - started, 1),
            "train_s": round(sum(r["epoch_seconds"] for r in history), 1), "history": [_epoch(task, r) for r in history]}


UNSEEN_POSITIVE, UNSEEN_NEGATIVES = "truck", ("deer", "frog", "horse")


def unseen_classes_report(run: Path, test_dir: Path, thresholds: tuple[float, ...] = (0.0, 1.0)
                          ) -> dict[str, Any] | None:
    """The DisCNN paper's Table 5 on the last checkpoint: the unseen truck as positive against the unseen
    deer/frog/horse as negatives, F1 of each side per threshold; plus the share of each class exactly at 0.
    ``None`` (logged) when the test folder lacks those classes."""
    from patchdet.training.evaluate import EvalConfig, evaluate

    missing = [n for n in (UNSEEN_POSITIVE, *UNSEEN_NEGATIVES) if not (test_dir / n).is_dir()]
    if missing:
        log.warning("no unseen-class check: %s has no %s", test_dir, ", ".join(missing))
        return None
    report = evaluate(EvalConfig(model=str(run / "last.pt"), data=str(test_dir), positive="automobile",
                                 negatives=("bird", "cat"), unseen=(UNSEEN_POSITIVE, *UNSEEN_NEGATIVES),
                                 thresholds=thresholds))
    counts = report["counts"]
    rows = {}
    for entry in report["thresholds"]:
        above = entry["unseen"]
        tp = above[UNSEEN_POSITIVE] * counts[UNSEEN_POSITIVE]
        fn = counts[UNSEEN_POSITIVE] - tp
        fp = sum(above[n] * counts[n] for n in UNSEEN_NEGATIVES)
        tn = sum(counts[n] for n in UNSEEN_NEGATIVES) - fp
        rows[f"{entry['threshold']:g}"] = {"positive_f1": _f1(tp, fp, fn), "negative_f1": _f1(tn, fn, fp),
                                            "known_positive_f1": entry["positive"]["f1"],
                                            "known_negative_f1": entry["negative"]["f1"]}
    return {"thresholds": rows, "at_origin": report["at_origin"]}


def _f1(tp: float, fp: float, fn: float) -> float:
    return 2 * tp / (2 * tp + fp + fn) if tp > 0 else 0.0


_SETTINGS = ("data", "val_data", "classes", "positive", "negatives", "max_per_class", "arch", "input_size", "loss",
             "loss_options", "epochs", "batch_size", "lr", "weight_decay", "optimizer", "scheduler", "seed")


def _check_same_settings(out: Path, cfg: TrainConfig) -> None:
    """A run folder is reused or resumed only if it was started with the same settings."""
    import yaml

    from patchdet.runtime.config import config_to_dict

    saved_path = out / "config.yaml"
    if not saved_path.exists():
        return
    saved = yaml.safe_load(saved_path.read_text(encoding="utf-8"))
    wanted = json.loads(json.dumps(config_to_dict(cfg)))  # tuples -> lists, as in the YAML
    changed = [k for k in _SETTINGS if saved.get(k) != wanted.get(k)]
    if changed:
        raise ValueError(f"run folder {out} was trained with other settings ({', '.join(changed)}): "
                         f"choose another --runs folder")


def _history(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def _epoch(task: str, record: dict[str, Any]) -> dict[str, Any]:
    val = record["val"]
    row = {"epoch": record["epoch"], "train_loss": record["train_loss"], "epoch_seconds": record["epoch_seconds"],
           "metric": val["val_metric"]}
    if task == "n2o":
        row.update(positive_f1=val["positive"]["f1"], negative_f1=val["negative"]["f1"], at_origin=val["at_origin"])
    return row


def _spread(values: list[float]) -> str:
    """Percent mean ± sample standard deviation over seeds, and the worst seed."""
    if not values:
        return "n/a"
    mean = statistics.fmean(values)
    if len(values) == 1:
        return f"{100 * mean:.2f}"
    return f"{100 * mean:.2f} ± {100 * statistics.stdev(values):.2f} (min {100 * min(values):.2f})"


def render(results: dict[str, Any]) -> str:
    lines = ["# Loss comparison", ""]
    for task, section in results["tasks"].items():
        s = section["settings"]
        lines += [f"## {task}: {section['description']}", "", section.get("note", ""), "",
                  "```bash", section["command"], "```", "",
                  f"Settings: arch `{s['arch']}`, input {s['input_size']} px, {s['epochs']} epochs, seeds "
                  f"{s['seeds']}, batch {s['batch_size']}, {s['optimizer']} lr {s['lr']} ({s['scheduler']}), "
                  f"weight decay {s['weight_decay']}, train images per class: {s['max_per_class'] or 'all'}, "
                  f"evaluated after each epoch on {s.get('test_per_class') or 'all'} test images per class of the "
                  f"task's classes; amp {s['amp']}, "
                  f"{s['threads']} thread(s). Machine: {section['machine']}.", ""]
        baseline = _final(section["runs"], "softmax" if task != "n2o" else "n2o")
        if task == "n2o":
            lines += ["| loss | mean F1 at threshold (mean ± sd over seeds) | positive F1 | negative F1 | "
                      "negatives exactly at the origin | unseen truck F1 / deer+frog+horse F1 (threshold 1) | "
                      "unseen deer/frog/horse exactly at the origin | train s/run | status |",
                      "|---|---|---|---|---|---|---|---|---|"]
        else:
            lines += ["| loss | final test accuracy % (mean ± sd over seeds) | vs softmax (pt) | best epoch acc % | "
                      "train s/run | status |", "|---|---|---|---|---|---|"]
        for spec in section["losses"]:
            runs = [r for r in section["runs"] if r["loss"] == spec and r["history"]]
            finals = [r["history"][-1]["metric"] for r in runs]
            seconds = statistics.fmean(r["train_s"] for r in runs) if runs else 0.0
            status = ", ".join(sorted({r["status"] for r in runs})) or "not run"
            if task == "n2o":
                pos = [r["history"][-1]["positive_f1"] for r in runs]
                neg = [r["history"][-1]["negative_f1"] for r in runs]
                origin = [statistics.fmean(v for k, v in r["history"][-1]["at_origin"].items() if k != "automobile")
                          for r in runs]
                unseen = [r["unseen"] for r in runs if r.get("unseen")]
                at_one = [u["thresholds"].get("1") for u in unseen if u["thresholds"].get("1")]
                truck = f"{_spread([u['positive_f1'] for u in at_one])} / {_spread([u['negative_f1'] for u in at_one])}" \
                    if at_one else "n/a"
                unseen_origin = _spread([statistics.fmean(u["at_origin"][n] for n in UNSEEN_NEGATIVES)
                                         for u in unseen]) + " %" if unseen else "n/a"
                lines.append(f"| `{spec}` | {_spread(finals)} | {_spread(pos)} | {_spread(neg)} | {_spread(origin)} % "
                             f"| {truck} | {unseen_origin} | {seconds:.0f} | {status} |")
                continue
            diff = f"{100 * (statistics.fmean(finals) - baseline):+.2f}" \
                if finals and baseline is not None and spec != "softmax" else ""
            best = _spread([max(e["metric"] for e in r["history"]) for r in runs])
            lines.append(f"| `{spec}` | {_spread(finals)} | {diff} | {best} | {seconds:.0f} | {status} |")
        lines += ["", f"Per-epoch curves: `{Path(results['plot']).name}`.", ""]
    return "\n".join(lines) + "\n"


def _final(runs: list[dict[str, Any]], spec: str) -> float | None:
    finals = [r["history"][-1]["metric"] for r in runs if r["loss"] == spec and r["history"]]
    return statistics.fmean(finals) if finals else None


def plot(results: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    tasks = list(results["tasks"].items())
    fig, axes = plt.subplots(1, len(tasks), figsize=(6 * len(tasks), 4.5), squeeze=False)
    for ax, (task, section) in zip(axes[0], tasks, strict=True):
        for spec in section["losses"]:
            curves = [[e["metric"] for e in r["history"]] for r in section["runs"] if r["loss"] == spec and r["history"]]
            if not curves:
                continue
            length = min(map(len, curves))
            mean = [100 * statistics.fmean(c[i] for c in curves) for i in range(length)]
            ax.plot(range(1, length + 1), mean, marker="o", label=spec)
        ax.set_title(f"{task}: {'mean F1' if task == 'n2o' else 'test accuracy'} per epoch (mean over seeds)")
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylabel("%")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    with atomic_output(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True, help="CIFAR-10 ImageFolder root with train/ and test/")
    parser.add_argument("--task", action="append", choices=sorted(TASKS), help="repeatable; default cifar10 and cifar3")
    parser.add_argument("--losses", help="comma-free list separated by ';' (default: the task's list)")
    parser.add_argument("--arch", default="smallcnn")
    parser.add_argument("--input-size", type=int, default=32)
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--seeds", default="0,1")
    parser.add_argument("--max-per-class", type=int, default=None, help="subsample the training set (small runs)")
    parser.add_argument("--max-test-per-class", type=int, default=None,
                        help="evaluate on the first N test images per class only (small runs)")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--lr", type=float, default=0.1)
    parser.add_argument("--optimizer", default="sgd")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--amp", default="off")
    parser.add_argument("--threshold", type=float, default=1.0, help="n2o task: decision threshold")
    parser.add_argument("--note", default="", help="a line saying what scale this is (recorded in the report)")
    parser.add_argument("--runs", default="runs/loss_comparison")
    parser.add_argument("--results", default="benchmarks/results/loss_comparison")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")

    decode_once()
    data = Path(args.data)
    seeds = [int(s) for s in args.seeds.split(",")]
    results_json = Path(args.results).with_suffix(".json")
    results = json.loads(results_json.read_text(encoding="utf-8")) if results_json.exists() else {"tasks": {}}
    command = "python -m benchmarks.loss_comparison " + " ".join(
        f"'{a}'" if ";" in a or " " in a else a for a in (sys.argv[1:] if argv is None else argv))
    results["plot"] = str(Path(args.results).with_suffix(".png"))
    for task in args.task or ["cifar10", "cifar3"]:
        losses = args.losses.split(";") if args.losses else list(TASKS[task]["losses"])
        test_dir = data / "test"
        if args.max_test_per_class:
            test_dir = test_subset(test_dir, args.max_test_per_class, Path(args.runs))
        base = TrainConfig(data=str(data / "train"), val_data=str(test_dir), arch=args.arch,
                           input_size=args.input_size,
                           epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, optimizer=args.optimizer,
                           max_per_class=args.max_per_class, threads=args.threads, amp=args.amp,
                           threshold=args.threshold, tensorboard=False, out=args.runs)
        runs = [run_one(base, task, spec, seed, Path(args.runs)) for spec in losses for seed in seeds]
        description = {"cifar10": "all 10 CIFAR-10 classes", "cifar3": "automobile, bird, cat (the DisCNN subset)",
                       "n2o": "N2O negative terms, automobile vs bird + cat"}[task]
        results["tasks"][task] = {
            "description": description, "note": args.note, "command": command, "losses": losses, "runs": runs,
            "machine": f"{platform.processor() or platform.machine()}, {platform.python_version()}",
            "settings": {"arch": base.arch, "input_size": base.input_size, "epochs": base.epochs, "seeds": seeds,
                         "batch_size": base.batch_size, "optimizer": base.optimizer, "lr": base.lr,
                         "scheduler": base.scheduler, "weight_decay": base.weight_decay,
                         "max_per_class": base.max_per_class, "test_per_class": args.max_test_per_class,
                         "amp": base.amp, "threads": base.threads,
                         "augment": "random-resized crop 0.8-1 + horizontal flip (the loop's default)"},
        }
        with atomic_output(results_json) as tmp:
            Path(tmp).write_text(json.dumps(results, indent=1) + "\n", encoding="utf-8")
        plot(results, Path(results["plot"]))
        with atomic_output(results_json.with_suffix(".md")) as tmp:
            Path(tmp).write_text(render(results), encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
