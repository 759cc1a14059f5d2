"""Mail parsing + classification rate against bare mail-parser, on the sample mail.

DESIGN.md's mail budget: catching up on 10,000 messages must take no more than 1.2x a
bare imapclient fetch + mail-parser parse, and parsing dominates that baseline (Dovecot
fetch 16,300 msg/s vs mail-parser 1,790 msg/s). This measures, in one process, over the
same messages (sample_mail/*.eml cycled):

  baseline   mailparser.parse_from_bytes
  parse      seftpilot.adapters.mailparse.parse_message
  parse+cls  parse_message + classify with the default rules
  headers    parse_headers (header-first triage)

Usage: uv run python benchmarks/bench_parse.py [--messages N] (default 3,000; --full = 10,000)
"""

from __future__ import annotations

import argparse
import gc
import itertools
import time
from collections.abc import Callable
from pathlib import Path

import mailparser

from seftpilot.adapters.mailparse import parse_headers, parse_message
from seftpilot.adapters.rules_files import default_rules_path, load_rules
from seftpilot.core.rules import classify

ROOT = Path(__file__).resolve().parent.parent


def measure(
    variants: dict[str, Callable[[bytes], object]], corpus: list[bytes]
) -> dict[str, float]:
    """msg/s per variant, measured in interleaved rounds of 500 messages.

    The machine is shared and its load drifts; interleaving puts every variant under the
    same drift, so the ratios stay meaningful even when absolute rates do not.
    """
    spent = dict.fromkeys(variants, 0.0)
    for start in range(0, len(corpus), 500):
        chunk = corpus[start : start + 500]
        for label, work in variants.items():
            gc.collect()
            began = time.perf_counter()
            for raw in chunk:
                work(raw)
            spent[label] += time.perf_counter() - began
    rates = {label: len(corpus) / seconds for label, seconds in spent.items()}
    for label, per_s in rates.items():
        print(f"{label:<12} {len(corpus):>6} msgs  {spent[label]:7.2f} s  {per_s:8.0f} msg/s")
    return rates


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--messages", type=int, default=3000)
    parser.add_argument("--full", action="store_true", help="10,000 messages (DESIGN's backlog)")
    args = parser.parse_args()
    count = 10_000 if args.full else args.messages
    samples = [p.read_bytes() for p in sorted((ROOT / "sample_mail").glob("*.eml"))]
    corpus = list(itertools.islice(itertools.cycle(samples), count))
    rules = load_rules([default_rules_path()])
    for raw in samples:  # warm imports and caches
        mailparser.parse_from_bytes(raw)
        classify(parse_message(raw), rules)

    rates = measure(
        {
            "mail-parser": mailparser.parse_from_bytes,
            "parse": parse_message,
            "parse+cls": lambda raw: classify(parse_message(raw), rules),
            "headers": parse_headers,
        },
        corpus,
    )
    base, ours, full, head = (rates[k] for k in ("mail-parser", "parse", "parse+cls", "headers"))
    print()
    print(f"parse     / mail-parser speed: {ours / base:5.2f}x")
    print(f"parse+cls / mail-parser speed: {full / base:5.2f}x")
    print(f"headers   / mail-parser speed: {head / base:5.2f}x")
    # The catch-up budget with DESIGN's measured fetch rate: time per message relative
    # to fetch + mail-parser, assuming fetch costs the same in both (same server).
    fetch = 16_300.0
    budget = (1 / fetch + 1 / base) * 1.2
    ours_total = 1 / fetch + 1 / full
    print(
        f"fetch(16,300/s) + parse+cls vs fetch + mail-parser: "
        f"{ours_total / (1 / fetch + 1 / base):4.2f}x (budget 1.2x, {budget * 1e3:.3f} ms/msg)"
    )


if __name__ == "__main__":
    main()
