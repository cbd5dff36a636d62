"""Redraw the plots of benchmark results files from their Markdown tables, without rerunning anything:

    python benchmarks/replot.py benchmarks/results/acdc_quick.md benchmarks/results/mscmr_quick.md

For recorded runs whose per-run JSONs (WORK/results/) are not at hand. A table holds per-class Dice,
mean Dice and mean HD95 only, so these plots have no error bars and show HD95 as the mean over
classes; plots drawn by the protocols from the JSONs add both.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from quick_protocol import plot, results_from_table


def replot(md: Path) -> list[Path]:
    """Write ``<stem>_<budget>.png`` beside ``md`` (the names its tables link) for each budget table."""
    written = []
    for budget, runs in results_from_table(md).items():
        if runs:
            path = md.with_name(f"{md.stem}_{budget}.png")
            plot(runs, next((r for r in runs if r["labels"] == "dense"), None), path)
            written.append(path)
    return written


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("results", nargs="+", type=Path, help="results Markdown files written by the protocol scripts")
    for md in p.parse_args().results:
        for path in replot(md) or p.error(f"{md}: no generated budget table found"):
            print(path)


if __name__ == "__main__":
    main()
