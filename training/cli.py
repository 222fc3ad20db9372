"""``patchdet train``, ``patchdet evaluate``, ``patchdet graft`` and ``patchdet adapt``: argument parsing only.

No heavy imports at module level: ``patchdet evaluate --help`` must not load torch.
"""

from __future__ import annotations

import argparse
import json
import logging

from patchdet.training.loss_heads import LOSS_HEADS

log = logging.getLogger(__name__)


def _names(text: str | None) -> tuple[str, ...] | None:
    if text is None:
        return None
    names = tuple(n.strip() for n in text.split(",") if n.strip())
    if not names:
        raise ValueError(f"class list {text!r} is empty: expected NAME[,NAME...]")
    return names


def _floats(text: str) -> tuple[float, ...]:
    try:
        return tuple(float(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise ValueError(f"thresholds {text!r} are invalid: expected numbers like 0,1,2") from None


# -- train -----------------------------------------------------------------------


def configure_train(parser: argparse.ArgumentParser) -> None:
    parser.epilog = (
        "Example (the DisCNN paper's protocol on CIFAR-10): patchdet train --data cifar10/train "
        "--positive automobile --negatives bird,cat --arch discnn8 --epochs 12 --amp bf16 --out runs/car"
    )
    parser.add_argument("--config", help="YAML file with TrainConfig keys; command-line flags override it")
    data = parser.add_argument_group("data")
    data.add_argument("--data", help="ImageFolder tree (one folder per class) or torchvision:CIFAR10|STL10")
    data.add_argument("--val-data", help="validation ImageFolder tree (default: a held-out split of --data)")
    data.add_argument("--val-fraction", type=float, help="held-out fraction when no --val-data")
    data.add_argument("--positive", help="positive class name (DisCNN / N2O)")
    data.add_argument("--negatives", help="negative class names, comma separated (DisCNN / N2O)")
    data.add_argument("--classes", help="class names for multi-class heads (default: all class folders)")
    data.add_argument("--max-per-class", type=int, help="sub-sample at most this many images per class")
    data.add_argument("--split", choices=["random", "blocks"],
                      help="held-out validation: random (seeded, stratified; default) or blocks (the last "
                           "--val-fraction of every source folder in file-index order, exact duplicates dropped; "
                           "for video frames)")
    data.add_argument("--extra-negatives", metavar="DIR",
                      help="second ImageFolder tree whose --extra-negative-classes are added as negatives")
    data.add_argument("--extra-negative-classes", help="classes of --extra-negatives, comma separated")
    data.add_argument("--extra-positives", metavar="DIR",
                      help="ImageFolder tree whose --extra-positive-classes are added to the positive class "
                           "(e.g. CIFAR-10 automobile for side and front views)")
    data.add_argument("--extra-positive-classes", help="classes of --extra-positives, comma separated")
    data.add_argument("--max-extra-per-class", type=int, help="sub-sample at most this many extra negatives per class")
    data.add_argument("--max-extra-positives-per-class", type=int,
                      help="sub-sample at most this many extra positives per class")
    data.add_argument("--data-terms", metavar="TEXT",
                      help="license / terms of use of the training data, copied into the model card")
    data.add_argument("--augment", choices=["standard", "tiles", "none"],
                      help="standard (flip + small crops; default), tiles (crops made to look like runtime tiles: "
                           "off-centre, cut and pasted cars, car slivers as negatives, photometric noise) or none; "
                           "other augment settings come from --config")
    model = parser.add_argument_group("model and loss")
    model.add_argument("--arch", help="registered architecture (see --list-models)")
    model.add_argument("--input-size", type=int, help="square input side in pixels")
    model.add_argument("--loss", choices=sorted(LOSS_HEADS), metavar="NAME",
                       help=f"loss, one of: {', '.join(sorted(LOSS_HEADS))} (--list-losses gives heads)")
    model.add_argument("--loss-option", action="append", metavar="KEY=VALUE", help="loss option, repeatable")
    model.add_argument("--latent-dim", type=int, help="latent dimension for POD/softmax heads (unset: Table III of the POD paper, "
                       "256 for up to 30 classes)")
    opt = parser.add_argument_group("optimisation")
    opt.add_argument("--epochs", type=int, help="passes over the training data")
    opt.add_argument("--batch-size", type=int, help="images per optimisation step")
    opt.add_argument("--lr", type=float, help="peak learning rate (onecycle) or initial one (cosine, constant)")
    opt.add_argument("--weight-decay", type=float, help="weight decay of the optimizer")
    opt.add_argument("--optimizer", choices=["adamw", "sgd"], help="optimizer")
    opt.add_argument("--scheduler", choices=["onecycle", "cosine", "constant"], help="learning-rate schedule")
    opt.add_argument("--seed", type=int, help="seed of the split, the initialisation and the data order")
    opt.add_argument("--threshold", type=float, help="decision threshold for validation and the model card")
    run = parser.add_argument_group("run")
    run.add_argument("--device", help="auto (CUDA > MPS > CPU), cpu, cuda, cuda:1, mps")
    run.add_argument("--amp", choices=["auto", "off", "bf16", "fp16"],
                     help="mixed precision (auto: on for CUDA, off on CPU; bf16 is ~2x faster on AVX-512 CPUs)")
    run.add_argument("--workers", type=int, help="DataLoader worker processes")
    run.add_argument("--threads", type=int, help="torch intra-op threads (unset: torch's default)")
    run.add_argument("--out", help="run folder (checkpoints, metrics, plots)")
    run.add_argument("--resume", action="store_true", default=None, help="continue the run in --out from last.pt")
    parser.add_argument("--list-models", action="store_true", help="print registered architectures and exit")
    parser.add_argument("--list-losses", action="store_true", help="print known losses and exit")


def help_defaults_train() -> dict:
    """The effective defaults shown by ``patchdet train --help`` (``TrainConfig``'s, which ``config.yaml`` records)."""
    from patchdet.runtime.config import field_defaults
    from patchdet.training.config import TrainConfig

    return field_defaults(TrainConfig)


def run_train(args: argparse.Namespace) -> int:
    if args.list_models:
        from patchdet.training.models import list_models

        print("\n".join(list_models()))
        return 0
    if args.list_losses:
        print("\n".join(f"{name}\t{head}" for name, head in sorted(LOSS_HEADS.items())))
        return 0
    from patchdet.runtime.config import build_config, parse_key_values
    from patchdet.training.config import TrainConfig
    from patchdet.training.train import train

    augment = None
    if args.augment is not None:  # keep the YAML file's other augment settings
        import yaml

        loaded = yaml.safe_load(open(args.config, encoding="utf-8")) if args.config else None
        base = loaded.get("augment") if isinstance(loaded, dict) else None
        augment = {**(base if isinstance(base, dict) else {}), "kind": args.augment}
    cfg = build_config(
        TrainConfig,
        args.config,
        data=args.data,
        val_data=args.val_data,
        val_fraction=args.val_fraction,
        positive=args.positive,
        negatives=_names(args.negatives),
        classes=_names(args.classes),
        max_per_class=args.max_per_class,
        split=args.split,
        extra_negatives=args.extra_negatives,
        extra_negative_classes=_names(args.extra_negative_classes),
        max_extra_per_class=args.max_extra_per_class,
        extra_positives=args.extra_positives,
        extra_positive_classes=_names(args.extra_positive_classes),
        max_extra_positives_per_class=args.max_extra_positives_per_class,
        augment=augment,
        data_terms=args.data_terms,
        arch=args.arch,
        input_size=args.input_size,
        loss=args.loss,
        loss_options=parse_key_values(args.loss_option) or None,
        latent_dim=args.latent_dim,
        epochs=args.epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        weight_decay=args.weight_decay,
        optimizer=args.optimizer,
        scheduler=args.scheduler,
        seed=args.seed,
        threshold=args.threshold,
        device=args.device,
        amp=args.amp,
        workers=args.workers,
        threads=args.threads,
        out=args.out,
        resume=args.resume,
    )
    result = train(cfg)
    print(f"best checkpoint: {result.best_checkpoint} (val metric {result.best_metric:.4f}, {result.epochs_run} epochs)")
    return 0


# -- evaluate ----------------------------------------------------------------------


def configure_evaluate(parser: argparse.ArgumentParser) -> None:
    from patchdet.runtime.cli import add_evaluate_detections_args

    parser.epilog = ("Patch classification: patchdet evaluate MODEL --data FOLDER. Detection on labelled frames "
                     "(no torch needed): patchdet evaluate [ARTIFACT] --labels SET.json --json OUT.json")
    parser.add_argument("model", nargs="?", help="checkpoint (.pt), run folder, or exported artifact (.onnx, .xml, "
                        ".engine); with --labels an artifact, default: the built-in car model")
    parser.add_argument("--data", help="ImageFolder tree to evaluate on (patch classification)")
    parser.add_argument("--positive", help="positive class (default: the model's)")
    parser.add_argument("--negative", "--negatives", dest="negative", help="negative classes, comma separated")
    parser.add_argument("--unseen", help="classes never seen in training, comma separated (Table 5)")
    parser.add_argument("--classes", help="classes for multi-class heads (default: the model's)")
    parser.add_argument("--thresholds", default="0,1,2", help="thresholds to report")
    parser.add_argument("--backend", default="auto", help="runtime backend for exported artifacts")
    parser.add_argument("--batch-size", type=int, default=256, help="patches per inference batch")
    parser.add_argument("--json", help="write the full report as JSON here")
    add_evaluate_detections_args(parser)


def run_evaluate(args: argparse.Namespace) -> int:
    if args.labels is not None:  # detection metrics: the runtime alone, before anything imports torch
        if args.data is not None:
            raise ValueError("--labels and --data are exclusive: expected a labelled frame set or a patch folder")
        from patchdet.runtime.cli import run_evaluate_detections

        return run_evaluate_detections(args)
    if args.model is None or args.data is None:
        raise ValueError("patch evaluation needs MODEL and --data FOLDER (or --labels SET.json for detection)")
    from patchdet.training.evaluate import EvalConfig, evaluate, format_report

    cfg = EvalConfig(
        model=args.model,
        data=args.data,
        positive=args.positive,
        negatives=_names(args.negative) or (),
        unseen=_names(args.unseen) or (),
        classes=_names(args.classes) or (),
        thresholds=_floats(args.thresholds),
        backend=args.backend,
        batch_size=args.batch_size,
    )
    report = evaluate(cfg)
    print(format_report(report))
    if args.json:
        from pathlib import Path

        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    return 0


# -- graft ---------------------------------------------------------------------------


def configure_graft(parser: argparse.ArgumentParser) -> None:
    parser.description = (
        "The DisCNN paper's Algorithm 1 (feature determination): copy and freeze the conv layers of a trained "
        "DisCNN, attach fresh FC layers and a 2-way softmax, train only the FC layers on two classes, and report "
        "whether the loss converges."
    )
    parser.add_argument("model", help="trained DisCNN checkpoint or run folder")
    parser.add_argument("--data", required=True, help="ImageFolder tree holding the two classes")
    parser.add_argument("--classes", required=True, help="the two classes, e.g. automobile,bird")
    parser.add_argument("--epochs", type=int, default=5, help="epochs of training the fresh FC layers")
    parser.add_argument("--batch-size", type=int, default=128, help="images per optimisation step")
    parser.add_argument("--lr", type=float, default=1e-3, help="learning rate (Adam)")
    parser.add_argument("--max-per-class", type=int, default=None, help="sub-sample at most this many images per class")
    parser.add_argument("--control", action="store_true",
                        help="also run the same with randomly initialised frozen conv layers, for comparison")
    parser.add_argument("--seed", type=int, default=0, help="seed of the split and the initialisation")
    parser.add_argument("--amp", choices=["auto", "off", "bf16", "fp16"], default="auto", help="mixed precision")
    parser.add_argument("--out", required=True, help="folder for the loss curve PNG and graft.json")


def run_graft(args: argparse.Namespace) -> int:
    from patchdet.training.graft import GraftConfig, graft

    classes = _names(args.classes)
    if classes is None or len(classes) != 2:
        raise ValueError(f"--classes {args.classes!r} must name exactly two classes")
    cfg = GraftConfig(model=args.model, data=args.data, classes=classes, epochs=args.epochs,
                      batch_size=args.batch_size, lr=args.lr, max_per_class=args.max_per_class,
                      control=args.control, seed=args.seed, amp=args.amp, out=args.out)
    result = graft(cfg)
    for name, run in result["runs"].items():
        verdict = "converges" if run["converged"] else "does not converge"
        print(f"{name}: {verdict} (loss {run['first_epoch_loss']:.4f} -> {run['last_epoch_loss']:.4f}, "
              f"held-out accuracy {run['heldout_accuracy']:.3f})")
    return 0


# -- adapt ---------------------------------------------------------------------------


def configure_adapt(parser: argparse.ArgumentParser) -> None:
    parser.description = (
        "Fine-tune a DisCNN's FC head on one fixed camera's background: the background plates of its footage, "
        "cut into tiles as the detector cuts frames, become negatives; the conv layers stay as trained. Then "
        "export the result and calibrate it on the same footage."
    )
    parser.epilog = ("Example: patchdet adapt models/discnn8_car64.pt --video cam.mp4 --out runs/cam_adapted && "
                     "patchdet export runs/cam_adapted --dense --name cam && patchdet calibrate --model "
                     "exports/cam_dense.onnx --video cam.mp4 --out cam.card.json")
    parser.add_argument("model", help="DisCNN checkpoint trained with the N2O loss, or its run folder")
    parser.add_argument("--video", required=True, help="footage of the fixed camera (traffic included, no labels)")
    parser.add_argument("--out", required=True, help="folder for best.pt (the adapted checkpoint) and adapt.json")
    parser.add_argument("--card", help="model card whose tiling cuts the plates (default: the built-in model's)")
    parser.add_argument("--data", help="the run's training data (default: the path in the checkpoint)")
    parser.add_argument("--plates", type=int, default=3, help="plates from this many stretches of the video")
    parser.add_argument("--steps", type=int, default=300, help="optimisation steps of the head")
    parser.add_argument("--plate-share", type=float, default=0.25, help="share of each batch from plate tiles")
    parser.add_argument("--lr", type=float, default=1e-3, help="learning rate of the head (AdamW)")
    parser.add_argument("--seed", type=int, default=0, help="seed of sampling and synthesis")
    parser.add_argument("--force", action="store_true", help="replace an earlier run's best.pt and adapt.json in --out")


def run_adapt(args: argparse.Namespace) -> int:
    from pathlib import Path

    from patchdet.training.adapt import AdaptConfig, adapt

    cfg = AdaptConfig(checkpoint=args.model, video=args.video, out=args.out, card=args.card, data=args.data,
                      plates=args.plates, steps=args.steps, plate_share=args.plate_share, lr=args.lr, seed=args.seed,
                      force=args.force)
    report = adapt(cfg)
    before, after = report["before"], report["after"]
    print(f"adapted {report['plate_tiles']} plate tiles: plate max score {before['plate_max_score']} -> "
          f"{after['plate_max_score']}; held-out car recall at the card threshold "
          f"{before['card']['heldout_car_recall']} -> {after['card']['heldout_car_recall']}; wrote "
          f"{Path(args.out) / 'best.pt'}")
    return 0


# -- fold-origin ---------------------------------------------------------------------


def configure_fold_origin(parser: argparse.ArgumentParser) -> None:
    parser.description = (
        "After training: lower the last FC layer's pre-activations of an N2O DisCNN by a margin, so that a chosen "
        "share of the run's validation negatives lands exactly on the origin (the paper's threshold-0 rule), and "
        "rescale it so that the checkpoint's threshold keeps its best validation F1. Fitted on the run's own "
        "validation split; writes an ordinary checkpoint."
    )
    parser.epilog = ("Example: patchdet fold-origin models/discnn8_automobile.pt --target 0.9 --out runs/car_folded && "
                     "patchdet evaluate runs/car_folded --data ../shared/data/cifar10/test --thresholds 0,1")
    parser.add_argument("model", help="DisCNN checkpoint trained with an N2O loss, or its run folder")
    parser.add_argument("--out", required=True, help="folder for best.pt (the folded checkpoint) and fold.json")
    parser.add_argument("--target", type=float, default=0.9,
                        help="share of the validation negatives to land exactly on the origin")
    parser.add_argument("--data", help="the run's training data (default: the path in the checkpoint)")
    parser.add_argument("--force", action="store_true", help="replace an earlier fold's best.pt and fold.json in --out")


def run_fold_origin(args: argparse.Namespace) -> int:
    from pathlib import Path

    from patchdet.training.origin_fold import FoldConfig, fold_origin

    report = fold_origin(FoldConfig(checkpoint=args.model, out=args.out, target=args.target, data=args.data,
                                     force=args.force))
    before, after, fit = report["before"], report["after"], report["fit"]
    print(f"folded delta {fit['delta']:.4g}, alpha {fit['alpha']:.4g}: validation negatives at the origin "
          f"{before['negatives_at_origin']:.3f} -> {after['negatives_at_origin']:.3f}, mean F1 at threshold "
          f"{fit['threshold']:g} {before['mean_f1_at_threshold']:.4f} -> {after['mean_f1_at_threshold']:.4f}; wrote "
          f"{Path(args.out) / 'best.pt'}")
    return 0
