"""Command line: ``provg demo``, ``provg train CONFIG [--set key=value ...] [--resume]``,
``provg eval CONFIG --checkpoint PATH``, ``provg predict`` / ``provg explain --checkpoint PATH --image
PATH --text TEXT``, ``provg parse TEXT``. ``train`` and ``eval`` run data-parallel under ``torchrun``."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

__all__ = ["main"]


def _demo(args: argparse.Namespace) -> int:
    from provg.engine.demo import run_demo

    run_demo(
        args.out,
        max_minutes=args.max_minutes,
        overrides=args.set,
        examples=args.examples,
        progress=not args.no_progress,
    )
    return 0


def _write_json(path: Path, document: dict) -> None:
    from provg.files import atomic_write_text

    atomic_write_text(path, json.dumps(document, indent=2) + "\n")


def _test_metrics(config, model, distributed, split: str, progress: bool) -> dict[str, float]:
    from provg.engine.trainer import evaluate_split, load_split

    dataset = load_split(config, split, model.config.image_size, evaluation=True)
    return evaluate_split(model, dataset, config, distributed, progress, split)


def _train(args: argparse.Namespace) -> int:
    from provg.engine import load_config, train
    from provg.engine.distributed import setup_distributed
    from provg.metrics import metric_table

    config = load_config(args.config, args.set)
    resume = None if args.resume is None else (args.resume or config.out_dir)
    result = train(config, progress=not args.no_progress, resume=resume)
    distributed = setup_distributed(config.device)
    metrics = _test_metrics(config, result.model, distributed, config.test_split, not args.no_progress)
    if distributed.main:
        print(f"test split '{config.test_split}', best epoch {result.best_epoch} ({config.out_dir}/best):")
        print(metric_table({f"ProVG {config.model}": metrics}))
        _write_json(Path(config.out_dir) / "test_metrics.json", {"split": config.test_split, **metrics})
    return 0


def _eval(args: argparse.Namespace) -> int:
    import torch

    from provg.engine import load_config
    from provg.engine.checkpoint import load_checkpoint_model
    from provg.engine.distributed import setup_distributed
    from provg.metrics import metric_table

    config = load_config(args.config, args.set)
    distributed = setup_distributed(config.device)
    if config.threads:
        torch.set_num_threads(config.threads)
    model = load_checkpoint_model(args.checkpoint, distributed.device)
    split = args.split or config.test_split
    metrics = _test_metrics(config, model, distributed, split, not args.no_progress)
    if distributed.main:
        print(f"{args.checkpoint} on {config.dataset} '{split}' ({config.eval_resolution} resolution):")
        print(metric_table({f"ProVG {model.config.backbone}": metrics}))
        if args.out:
            _write_json(Path(args.out), {"checkpoint": str(args.checkpoint), "split": split, **metrics})
    return 0


def _load_for_inference(args: argparse.Namespace):
    from provg.engine.checkpoint import load_checkpoint_model
    from provg.engine.trainer import resolve_device

    overrides = {"parser": args.parser} if args.parser else {}
    return load_checkpoint_model(args.checkpoint, resolve_device(args.device), **overrides)


def _predict(args: argparse.Namespace) -> int:
    from provg.engine.inference import predict_image, save_prediction_files

    model = _load_for_inference(args)
    prediction = predict_image(model, args.image, args.text, args.amp)
    document = save_prediction_files(prediction, args.out, str(args.image))
    print(json.dumps(document, indent=2))
    return 0


def _explain(args: argparse.Namespace) -> int:
    from provg.engine.explain import explain_image

    model = _load_for_inference(args)
    written = explain_image(model, args.image, args.text, args.out, args.amp)
    for name, path in written.items():
        print(f"{name}: {path}")
    return 0


_COLOURS = {"S": "\033[1;36m", "A": "\033[1;33m"}
_RESET = "\033[0m"


def highlight(decomposition, colour: bool) -> str:
    """The expression with its cues marked: ANSI colours (S cyan, A yellow) or ``{S:...}`` brackets."""
    if not colour:
        return decomposition.to_marked()
    cues = sorted(
        [(c, "S") for c in decomposition.spatial] + [(c, "A") for c in decomposition.attributes],
        key=lambda item: item[0].start,
    )
    text, out, position = decomposition.text, [], 0
    for cue, kind in cues:
        out += [text[position : cue.start], _COLOURS[kind], cue.text, _RESET]
        position = cue.end
    out.append(text[position:])
    return "".join(out)


def _parse(args: argparse.Namespace) -> int:
    from provg.parsers import get_parser, list_parsers

    names = list_parsers() if args.parser == "all" else [args.parser]
    colour = sys.stdout.isatty() and not args.no_colour
    for name in names:
        decomposition = get_parser(name).parse(args.text)
        prefix = f"{name:>6}: " if len(names) > 1 else ""
        print(prefix + highlight(decomposition, colour))
        if args.verbose:
            for kind, cues in (("S", decomposition.spatial), ("A", decomposition.attributes)):
                for cue in cues:
                    print(f"        {kind} [{cue.start:3d}, {cue.end:3d}) {cue.text!r}")
    if colour:
        print(f"({_COLOURS['S']}spatial{_RESET}, {_COLOURS['A']}attribute{_RESET})")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="provg", description="ProVG remote-sensing visual grounding")
    commands = parser.add_subparsers(dest="command", required=True)

    demo = commands.add_parser(
        "demo", help="train and evaluate provg_tiny on generated synthrs (CPU, minutes)"
    )
    demo.add_argument("--out", default="runs/demo", help="output folder (data, predictions, metrics)")
    demo.add_argument("--max-minutes", type=float, default=10.0, help="training time cap (default 10)")
    demo.add_argument("--examples", type=int, default=16, help="prediction overlays to draw")
    demo.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config override")
    demo.add_argument("--no-progress", action="store_true", help="hide progress bars")
    demo.set_defaults(run=_demo)

    train = commands.add_parser(
        "train", help="train from a YAML config, then evaluate its best checkpoint on the test split"
    )
    train.add_argument("config", help="YAML config (see configs/)")
    train.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config override")
    train.add_argument(
        "--resume",
        nargs="?",
        const="",
        metavar="PATH",
        help="continue from a checkpoint or run folder (default: the config's out_dir)",
    )
    train.add_argument("--no-progress", action="store_true", help="hide progress bars")
    train.set_defaults(run=_train)

    evaluate = commands.add_parser("eval", help="evaluate a checkpoint on a split of the config's dataset")
    evaluate.add_argument("config", help="YAML config naming the dataset (see configs/)")
    evaluate.add_argument(
        "--checkpoint", required=True, help="checkpoint, model directory or run folder (best)"
    )
    evaluate.add_argument("--split", help="split to evaluate (default: the config's test_split)")
    evaluate.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config override")
    evaluate.add_argument("--out", help="also write the metrics to this JSON file")
    evaluate.add_argument("--no-progress", action="store_true", help="hide progress bars")
    evaluate.set_defaults(run=_eval)

    for name, function, help_text in (
        ("predict", _predict, "ground an expression in an image: box JSON, mask PNG, overlay PNG"),
        ("explain", _explain, "render the survey, locate and verify maps of every stage (Fig. 3)"),
    ):
        command = commands.add_parser(name, help=help_text)
        command.add_argument(
            "--checkpoint", required=True, help="checkpoint, model directory or run folder (best)"
        )
        command.add_argument(
            "--image", required=True, help="image file (any size; resized to the model input)"
        )
        command.add_argument("--text", required=True, help="the referring expression")
        command.add_argument("--out", default=f"runs/{name}", help=f"output folder (default runs/{name})")
        command.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto (default)")
        command.add_argument("--parser", help="override the model's parser strategy (e.g. nltk)")
        command.add_argument(
            "--amp", default="none", choices=("none", "bf16", "fp16"), help="autocast (fp16: GPU only)"
        )
        command.set_defaults(run=function)

    parse = commands.add_parser("parse", help="decompose an expression into spatial and attribute cues")
    parse.add_argument("text", help="the referring expression")
    parse.add_argument("--parser", default="spacy", help="strategy name, or 'all' to compare (default spacy)")
    parse.add_argument("-v", "--verbose", action="store_true", help="list the cues with character offsets")
    parse.add_argument("--no-colour", action="store_true", help="bracket marks instead of colours")
    parse.set_defaults(run=_parse)

    args = parser.parse_args(argv)
    try:
        return args.run(args)
    finally:  # leave a torchrun process group cleanly (NCCL warns otherwise)
        distributed = sys.modules.get("torch.distributed")
        if distributed is not None and distributed.is_available() and distributed.is_initialized():
            distributed.destroy_process_group()


if __name__ == "__main__":
    sys.exit(main())
