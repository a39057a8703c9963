"""Command line: ``provg demo`` and ``provg train CONFIG [--set key=value ...]``."""

from __future__ import annotations

import argparse
import sys

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


def _train(args: argparse.Namespace) -> int:
    from torch.utils.data import DataLoader

    from provg.data import collate, load_dataset
    from provg.engine import evaluate, load_config, train
    from provg.metrics import metric_table

    config = load_config(args.config, args.set)
    result = train(config, progress=not args.no_progress)
    model = result.model
    test_set = load_dataset(
        config.dataset,
        config.data_root,
        config.test_split,
        image_size=model.config.image_size,
        **config.dataset_options,
    )
    loader = DataLoader(test_set, batch_size=config.eval_batch_size, collate_fn=collate)
    device = next(model.parameters()).device
    metrics = evaluate(model, loader, device, config.gold_decompositions, not args.no_progress, "test")
    print(metric_table({f"ProVG {config.model}": metrics}))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="provg", description="ProVG remote-sensing visual grounding")
    commands = parser.add_subparsers(dest="command", required=True)

    demo = commands.add_parser(
        "demo", help="train and evaluate provg_tiny on generated synthrs (CPU, minutes)"
    )
    demo.add_argument("--out", default="runs/demo", help="output folder (data, predictions, metrics)")
    demo.add_argument("--max-minutes", type=float, default=8.0, help="training time cap (default 8)")
    demo.add_argument("--examples", type=int, default=16, help="prediction overlays to draw")
    demo.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config override")
    demo.add_argument("--no-progress", action="store_true", help="hide progress bars")
    demo.set_defaults(run=_demo)

    train = commands.add_parser("train", help="train from a YAML config, then evaluate on its test split")
    train.add_argument("config", help="YAML config (see configs/)")
    train.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config override")
    train.add_argument("--no-progress", action="store_true", help="hide progress bars")
    train.set_defaults(run=_train)

    args = parser.parse_args(argv)
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())
