"""Command line: `python -m train {fit,export,sample,evaluate,classifier}`; user errors: one line, exit 2;
Ctrl-C or SIGTERM: one line, exit 130."""

from __future__ import annotations

import argparse
import shlex
import signal
import sys
import threading
from dataclasses import fields
from pathlib import Path

from train.config import TrainConfig
from train.errors import TrainError

DEFAULTS = TrainConfig()


def parse_seeds(text: str) -> list[int]:
    """'0-15' or '1,2,3' or '4,10-12' -> a list of seeds."""
    seeds: list[int] = []
    try:
        for part in text.split(","):
            if "-" in part.strip()[1:]:
                lo, hi = part.split("-", 1)
                seeds.extend(range(int(lo), int(hi) + 1))
            else:
                seeds.append(int(part))
    except ValueError:
        raise argparse.ArgumentTypeError(f"seeds must look like '0-15' or '1,2,3', got {text!r}") from None
    if not seeds:
        raise argparse.ArgumentTypeError("no seeds given")
    return seeds


def add_fit(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "fit", help="train a GAN", formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    p.add_argument("--dataset", default=DEFAULTS.dataset,
                   choices=["mnist", "fashion-mnist", "folder", "arrays"])
    p.add_argument("--data", help="IDX directory (mnist, fashion-mnist), image folder, or .npy/.npz file")
    p.add_argument("--download", action="store_true",
                   help="download mnist/fashion-mnist into --data from the official mirrors (md5-checked)")
    p.add_argument("--image-size", type=int, default=DEFAULTS.image_size,
                   help="folder images are resized to this")
    p.add_argument("--channels", type=int, default=DEFAULTS.channels, choices=[1, 3],
                   help="folder images: 1 grayscale, 3 RGB")
    p.add_argument("--arch", default=DEFAULTS.arch, choices=["mlp", "dcgan"])
    p.add_argument("--latent-size", type=int, default=DEFAULTS.latent_size)
    p.add_argument("--width", type=int, default=DEFAULTS.width, help="dcgan base feature maps")
    p.add_argument("--d-depth", type=int, default=DEFAULTS.d_depth, choices=[2, 3],
                   help="dcgan discriminator's strided convolutions (3: the reference DCGAN's depth)")
    p.add_argument("--d-projection", default=DEFAULTS.d_projection, choices=["flat", "pooled"],
                   help="conditional dcgan: the discriminator's class term on its flattened maps, "
                        "or on the maps summed over space")
    p.add_argument("--d-batch-std", action=argparse.BooleanOptionalAction, default=DEFAULTS.d_batch_std,
                   help="dcgan: give the discriminator its batch's feature spread (minibatch std)")
    p.add_argument("--conditional", action="store_true", help="class-conditional (labels in)")
    p.add_argument("--spectral-norm", action=argparse.BooleanOptionalAction, default=DEFAULTS.spectral_norm,
                   help="spectral norm in the discriminator")
    p.add_argument("--loss", default=DEFAULTS.loss, choices=["bce", "hinge"])
    p.add_argument("--label-smoothing", type=float, default=DEFAULTS.label_smoothing,
                   help="one-sided: real targets are 1 - this")
    p.add_argument("--mode-seeking", type=float, default=DEFAULTS.mode_seeking, metavar="WEIGHT",
                   help="weight of the mode-seeking term: pairs of samples with one label are "
                        "pushed apart in proportion to their noise's distance (0: off)")
    p.add_argument("--class-loss", type=float, default=DEFAULTS.class_loss, metavar="WEIGHT",
                   help="conditional: weight of a class loss on the generated images, judged by a "
                        "class head the discriminator learns on real images (0: off)")
    p.add_argument("--class-margin", type=float, default=DEFAULTS.class_margin, metavar="M",
                   help="the generator's class loss: 0 for cross-entropy, or M > 0 for a hinge that "
                        "pushes only samples whose asked class does not lead the other logits by M")
    p.add_argument("--ema", type=float, default=DEFAULTS.ema,
                   help="decay of the generator weight average (exported when > 0); 0 turns it off")
    p.add_argument("--epochs", type=int, default=DEFAULTS.epochs)
    p.add_argument("--steps", type=int, default=None, help="total steps (overrides --epochs)")
    p.add_argument("--batch-size", type=int, default=DEFAULTS.batch_size)
    p.add_argument("--lr-g", type=float, default=DEFAULTS.lr_g)
    p.add_argument("--lr-d", type=float, default=DEFAULTS.lr_d)
    p.add_argument("--beta1", type=float, default=DEFAULTS.beta1)
    p.add_argument("--beta2", type=float, default=DEFAULTS.beta2)
    p.add_argument("--seed", type=int, default=DEFAULTS.seed)
    p.add_argument("--device", default=DEFAULTS.device, choices=["auto", "cpu", "cuda"])
    p.add_argument("--out", default=DEFAULTS.out, help="run directory")
    p.add_argument("--log-every", type=int, default=DEFAULTS.log_every)
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its checkpoint")
    p.add_argument("--dry-run", action="store_true", help="one step on random data (smoke test)")
    p.add_argument("--no-progress", action="store_true")


def add_export(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("export", help="export a run's generator to the model repository")
    p.add_argument("run", type=Path, help="run directory (or checkpoint file)")
    p.add_argument("--name", required=True, help="model name, e.g. mnist-dcgan")
    p.add_argument("--models-dir", type=Path, default=Path("models"))
    p.add_argument("--version", type=int, help="version number (default: next integer)")
    p.add_argument("--opset", type=int, default=17)
    p.add_argument("--tolerance", type=float, default=1e-4,
                   help="max abs difference torch vs onnxruntime allowed")
    p.add_argument("--metrics", type=Path, help="evaluation JSON to record in model.json")
    p.add_argument("--temperature", type=float, default=1.0,
                   help="sample z at this spread: the model computes G(T * z) (default 1; above 1 "
                        "trades precision for recall, below 1 the reverse)")


def add_sample(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("sample", help="write a PNG grid for seeds")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--checkpoint", type=Path, help="run directory or checkpoint file")
    src.add_argument("--model", type=Path, help="models/<name> (latest) or models/<name>/<version>")
    p.add_argument("--seeds", type=parse_seeds, default=parse_seeds("0-15"), help="'0-15' or '1,2,3'")
    p.add_argument("--labels", type=parse_seeds, help="class labels (conditional models), one or per seed")
    p.add_argument("--out", type=Path, default=Path("samples.png"))


def add_evaluate(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("evaluate", help="score a generator: FID, IS, precision/recall, class shares")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--checkpoint", type=Path, help="run directory or checkpoint file")
    src.add_argument("--model", type=Path, help="models/<name> (latest) or models/<name>/<version>")
    p.add_argument("--dataset", choices=["mnist", "fashion-mnist", "folder", "arrays"],
                   help="default: the one the generator was trained on")
    p.add_argument("--data", type=Path,
                   help="training data (IDX directory: both splits); default: the one recorded at training")
    p.add_argument("--test-data", type=Path, help="held-out images for folder and arrays datasets")
    p.add_argument("--classifier", type=Path,
                   help="classifier weights (default: train/classifier_weights/<dataset>.pt)")
    p.add_argument("--samples", type=int, default=10000, help="generated samples (seeds 0..N-1)")
    p.add_argument("--raw", action="store_true",
                   help="with --checkpoint: score the trained generator, not its weight average")
    p.add_argument("--temperature", type=float,
                   help="with --checkpoint: score G(T * z), as `export --temperature T` would publish")
    p.add_argument("--json", type=Path, help="also write the report here (for `export --metrics`)")


def add_classifier(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("classifier", help="train the evaluation classifier on a dataset's train split")
    p.add_argument("--dataset", default="mnist", choices=["mnist", "fashion-mnist", "folder", "arrays"])
    p.add_argument("--data", type=Path, help="IDX directory (both splits), image folder or .npy/.npz file")
    p.add_argument("--test-data", type=Path, help="held-out images for folder and arrays datasets")
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, help="weights file (default: train/classifier_weights/<dataset>.pt)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m train", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    add_fit(sub)
    add_export(sub)
    add_sample(sub)
    add_evaluate(sub)
    add_classifier(sub)
    return parser


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    names = [f.name for f in fields(TrainConfig) if hasattr(args, f.name)]
    return TrainConfig(**{name: getattr(args, name) for name in names})


def run_command(args: argparse.Namespace) -> int:
    if args.command == "fit":
        from train.loop import Interrupted, fit

        cfg = config_from_args(args)
        if args.dry_run:
            from train.loop import dry_run

            print(dry_run(cfg))
            return 0
        from train import distributed

        # Under torchrun: this process's rank in a process group; else the plain single process.
        shard = distributed.start(cfg.device)
        launcher = ["torchrun", "--nproc-per-node", str(shard.world)] if shard.distributed else ["python"]
        try:
            command = shlex.join([*launcher, "-m", "train", *sys.argv[1:]])
            out = fit(cfg, resume=args.resume, progress=not args.no_progress, command=command, shard=shard)
        except Interrupted as e:
            print(e, file=sys.stderr)
            return 130
        except RuntimeError as e:  # a collective of DDP's, in a backward pass
            if not (shard.distributed and distributed.is_peer_failure(e)):
                raise
            raise distributed.PeerFailed(distributed.peer_failed_message(e)) from None
        distributed.stop(shard)
        if not shard.writes:
            return 0
        print(f"run written to {out} (checkpoint.pt, samples/, metrics.csv, loss.png)")
    elif args.command == "export":
        from train.export import export

        path = export(args.run, args.models_dir, args.name, args.version, args.opset,
                      args.tolerance, args.metrics, args.temperature)
        print(f"exported {path}")
    elif args.command == "sample":
        from train.sample import sample

        print(f"wrote {sample(args.checkpoint, args.model, args.seeds, args.labels, args.out)}")
    elif args.command == "evaluate":
        import json
        import time

        from train.evaluate import evaluate, format_report

        started = time.perf_counter()
        report = evaluate(args.checkpoint, args.model, args.dataset, args.data, args.test_data,
                          args.classifier, args.samples, args.raw, args.temperature)
        print(format_report(report))
        print(f"evaluated in {time.perf_counter() - started:.0f} s")
        if args.json:
            args.json.write_text(json.dumps(report, indent=2) + "\n")
            print(f"wrote {args.json}")
    elif args.command == "classifier":
        from train.classifier import fit_classifier

        command = shlex.join(["python", "-m", "train", *sys.argv[1:]])
        info = fit_classifier(args.dataset, args.data, args.test_data, args.out, args.epochs, args.seed,
                              args.batch_size, command)
        print(f"test accuracy {info['test_accuracy']:.4f}; wrote {info['path']} and its .json")
    return 0


def interrupt(signum: int, frame: object) -> None:
    """SIGTERM as Ctrl-C, so that what a command was writing is cleaned up as it stops."""
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    in_main_thread = threading.current_thread() is threading.main_thread()  # signals go there only
    previous = signal.signal(signal.SIGTERM, interrupt) if in_main_thread else None
    try:
        return run_command(args)
    except TrainError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # outside a training loop, which says itself what it saved
        print("interrupted", file=sys.stderr)
        return 130
    except OSError as e:
        print(f"error: {e.strerror or e}: {e.filename or ''}".rstrip(": "), file=sys.stderr)
        return 2
    finally:
        if in_main_thread:
            signal.signal(signal.SIGTERM, signal.SIG_DFL if previous is None else previous)
