"""CFR's SAM stages on the semi-supervised ACDC dataset: pseudo-label Dice against the dense ground truth of
the unlabeled training cases, and the cost of each stage, per variant (grid vs one slice per input,
LiteMedSAM at its native 256 input vs a larger build).

    python benchmarks/semisupervised_protocol.py --work WORK --labeled 3        # makes Dataset203_ACDCSemi3
    python benchmarks/cfr_pseudolabels.py --work WORK --labeled 3 --iterations 200 [--no-concatenate] [--input-size 512]

Runs ``run_cfr_pseudolabels`` (the code of ``nnunet-scribble cfr-pseudolabels``) on fold ``all`` of
``Dataset(200+N)_ACDCSemiN`` in 2d with LiteMedSAM, the fold the quick protocol trains: the N dense patients
fine-tune SAM, the pseudo-labels of the other 70 - N patients are scored against their dense labels
(``labelsTr_dense``). Resumable (the stages' own resume; "stage minutes" is the wall time of the invocation
that finished, so a resumed run counts only its own part). One JSON per variant in WORK/results/ and the
table ``cfr_pseudolabels.md`` (below its marker) in --out.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import time
from datetime import date
from pathlib import Path

import quick_protocol as quick
from results_file import write_generated_section
from semisupervised_protocol import semi_protocol

STEM = "cfr_pseudolabels"
TITLE = "CFR pseudo-labels on ACDC (CPU)"


def variant_name(labeled: int, iterations: int, concatenate: bool, input_size: int | None) -> str:
    return (f"cfr_semi{labeled}_{iterations}it" + ("" if concatenate else "_single")
            + (f"_in{input_size}" if input_size else ""))


def table(results: list[dict]) -> list[str]:
    classes = list(results[0]["dice"]["per_class"]) if results else []
    head = ["labeled patients", "fine-tuning iterations", "slices per input", "input size"] + \
           [f"PL Dice {c}" for c in classes] + ["PL mean Dice", "cases scored", "stage minutes", "date"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in results:
        d = r["dice"]
        lines.append("| " + " | ".join(
            [str(r["labeled"]), str(r["iterations"]), "grid" if r["concatenate"] else "1", str(r["input_size"])]
            + [f"{d['per_class'][c]:.3f}" if d["per_class"][c] is not None else "-" for c in classes]
            + [f"**{d['mean']:.3f}**", str(d["cases"]), f"{r['minutes']:.0f}", r["date"]]) + " |")
    return lines


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--work", type=Path, required=True, help="the semisupervised_protocol.py work folder")
    p.add_argument("--labeled", type=int, default=3)
    p.add_argument("--iterations", type=int, required=True, help="fine-tuning iterations (official: 6000)")
    p.add_argument("--no-concatenate", action="store_true", help="one slice per SAM input")
    p.add_argument("--input-size", type=int, default=None, help="LiteMedSAM input size (default 256)")
    p.add_argument("--out", type=Path, default=quick.HERE / "results")
    args = p.parse_args()
    work = args.work.resolve()
    os.environ.update({k: v for k, v in quick.nnunet_env(work).items() if k.startswith("nnUNet")})
    from nnunet_scribble.sam.cfr import CFRConfig, run_cfr_pseudolabels

    name = semi_protocol(args.labeled).scribble[1]
    config = CFRConfig(iterations=args.iterations, concatenate=not args.no_concatenate, input_size=args.input_size)
    start = time.time()
    result = run_cfr_pseudolabels(name, "2d", "all", backend="litemedsam", config=config)
    run = variant_name(args.labeled, args.iterations, config.concatenate, args.input_size)
    out_json = work / "results" / f"{run}.json"
    previous = json.loads(out_json.read_text()) if out_json.is_file() else {}
    record = {"labeled": args.labeled, "iterations": args.iterations, "concatenate": config.concatenate,
              "input_size": args.input_size or 256, "dice": result.dice,
              "minutes": previous.get("minutes", (time.time() - start) / 60), "folder": result.run_folder,
              "date": previous.get("date", date.today().isoformat()),
              "machine": f"{platform.machine()}, {os.cpu_count()} cores, CPU only"}
    out_json.write_text(json.dumps(record, indent=2))
    results = [json.loads(f.read_text()) for f in sorted((work / "results").glob("cfr_semi*.json"))]
    md = args.out / f"{STEM}.md"
    write_generated_section(str(md), quick.MARKER, "\n".join(table([r for r in results if r["dice"]])) + "\n",
                            f"# {TITLE}\n\n")
    print(md.read_text())


if __name__ == "__main__":
    main()
