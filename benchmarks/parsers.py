"""Compare expression-parsing strategies on gold decompositions: quality, speed and agreement.

    python benchmarks/parsers.py --gold benchmarks/data/parser_gold_dev.txt [--gold FILE ...]

For each gold file and each strategy (naive, nltk, spacy): token-level precision, recall and F1 for
spatial (S) and attribute (A) cues and the exact-match rate (`provg.parsers.scoring`); then the rate in
expressions per second of `parse_batch` over all gold expressions together (after one warm-up pass;
median of --repeat passes), next to the raw `nlp.pipe` rate of the spaCy components the spacy strategy
runs; then pairwise token agreement. ``--synthrs N`` adds the gold decompositions of N generated synthrs
expressions (seed 0) as one more set. Prints tables, appends rows to benchmarks/results/parsers_quality.csv
and parsers_speed.csv, and rewrites benchmarks/results/parsers.md.
"""

from __future__ import annotations

import argparse
import datetime
import statistics
import time
from pathlib import Path

from provg.parsers import Decomposition, get_parser
from provg.parsers.scoring import agreement, score

from common import RESULTS, append_csv, machine, print_table, versions

STRATEGIES = ("naive", "nltk", "spacy")


def load_gold(path: Path) -> list[Decomposition]:
    """One bracket-marked expression per line; '#' lines are comments."""
    lines = [line.rstrip("\n") for line in path.read_text(encoding="utf-8").splitlines()]
    return [Decomposition.from_marked(line) for line in lines if line.strip() and not line.startswith("#")]


def synthrs_gold(count: int) -> list[Decomposition]:
    """Gold decompositions of the first ``count`` synthrs test expressions (seed 0)."""
    import json
    import tempfile

    from provg.data.synthrs import generate

    with tempfile.TemporaryDirectory() as folder:
        root = generate(folder, sizes={"test": max(1, count // 2 + 1)}, seed=0, progress=False)
        marked = json.loads((root / "rrsisd" / "synthrs_gold.json").read_text())
    return [Decomposition.from_marked(line) for line in list(marked.values())[:count]]


def cold_rate(name: str, texts: list[str]) -> float:
    """Expressions per second of the first pass of a freshly built parser (its caches empty)."""
    fresh = get_parser(name)
    start = time.perf_counter()
    fresh.parse_batch(texts)
    return len(texts) / (time.perf_counter() - start)


def rate(function, texts: list[str], repeat: int) -> float:
    """Expressions per second: median over ``repeat`` timed passes, after one warm-up pass."""
    function(texts)
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        function(texts)
        times.append(time.perf_counter() - start)
    return len(texts) / statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gold", action="append", type=Path, default=[], help="gold file (repeatable)")
    parser.add_argument("--synthrs", type=int, default=0, metavar="N", help="add N synthrs gold expressions")
    parser.add_argument("--repeat", type=int, default=5, help="timed passes for the rates")
    parser.add_argument("--out", type=Path, default=RESULTS, help="folder for parsers.csv and parsers.md")
    args = parser.parse_args()

    golds = {path.stem: load_gold(path) for path in args.gold}
    if args.synthrs:
        golds["synthrs"] = synthrs_gold(args.synthrs)
    if not golds:
        parser.error("give at least one --gold FILE or --synthrs N")
    parsers = {name: get_parser(name) for name in STRATEGIES}
    predictions = {
        (name, set_name): parsers[name].parse_batch([g.text for g in gold])
        for name in STRATEGIES
        for set_name, gold in golds.items()
    }

    quality_header = ["gold", "parser", "n", "P(S)", "R(S)", "F1(S)", "P(A)", "R(A)", "F1(A)", "exact"]
    quality = []
    for set_name, gold in golds.items():
        for name in STRATEGIES:
            metrics = score(predictions[(name, set_name)], gold).as_dict()
            quality.append([set_name, name, len(gold)] + [f"{metrics[k]:.3f}" for k in quality_header[3:]])
    print_table(
        "Parser quality (token level; scored words exclude a, an, the, is, are, it, they, and, "
        "located, situated, positioned)",
        quality_header,
        quality,
    )

    texts = [g.text for gold in golds.values() for g in gold]
    speed_header = ["parser", "expressions", "expr/s", "vs raw nlp.pipe", "first pass expr/s"]
    raw = rate(parsers["spacy"].raw_pipe, texts, args.repeat)
    speed = []
    for name in STRATEGIES:
        value = rate(parsers[name].parse_batch, texts, args.repeat)
        relative = f"{value / raw:.0%}" if name == "spacy" else ""
        speed.append([name, len(texts), f"{value:.0f}", relative, f"{cold_rate(name, texts):.0f}"])
    pipeline = parsers["spacy"]
    components = ", ".join(n for n in pipeline.nlp.pipe_names if n != "provg_merge_phrases")
    speed.append([f"raw nlp.pipe ({pipeline.pipeline}: {components})", len(texts), f"{raw:.0f}", "100%", ""])
    print_table("Parser speed (parse_batch, one process)", speed_header, speed)

    agree_header = ["gold", "pair", "token agreement"]
    agree = []
    for set_name in golds:
        for i, first in enumerate(STRATEGIES):
            for second in STRATEGIES[i + 1 :]:
                value = agreement(predictions[(first, set_name)], predictions[(second, set_name)])
                agree.append([set_name, f"{first} / {second}", f"{value:.3f}"])
    print_table("Pairwise agreement", agree_header, agree)

    append_csv("parsers_quality", quality_header, quality)
    append_csv("parsers_speed", speed_header, speed)
    markdown = [f"# Parser comparison\n\nmachine: {machine()}; date: {datetime.date.today()}; {versions()}\n"]
    for title, header, rows in (
        ("Quality", quality_header, quality),
        ("Speed", speed_header, speed),
        ("Agreement", agree_header, agree),
    ):
        markdown.append(f"\n## {title}\n\n| " + " | ".join(header) + " |\n|" + "---|" * len(header) + "\n")
        markdown.extend("| " + " | ".join(str(x) for x in row) + " |\n" for row in rows)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "parsers.md").write_text("".join(markdown))
    print(f"\nwrote {args.out / 'parsers.md'}; rows appended to parsers_quality.csv and parsers_speed.csv")


if __name__ == "__main__":
    main()
