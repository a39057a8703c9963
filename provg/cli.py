"""Command line: ``provg demo``, ``provg train CONFIG [--set key=value ...]``, ``provg parse TEXT``."""

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

    parse = commands.add_parser("parse", help="decompose an expression into spatial and attribute cues")
    parse.add_argument("text", help="the referring expression")
    parse.add_argument("--parser", default="spacy", help="strategy name, or 'all' to compare (default spacy)")
    parse.add_argument("-v", "--verbose", action="store_true", help="list the cues with character offsets")
    parse.add_argument("--no-colour", action="store_true", help="bracket marks instead of colours")
    parse.set_defaults(run=_parse)

    args = parser.parse_args(argv)
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())
