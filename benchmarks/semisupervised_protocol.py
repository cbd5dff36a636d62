"""Semi-supervised ACDC quick protocol: a few densely labeled patients, all other training patients unlabeled.

    python benchmarks/semisupervised_protocol.py --work WORK --labeled 3 nnUNetTrainerMeanTeacher

- Data: WORK's Dataset027_ACDCScribble, the ACDC quick protocol's conversion (made here when missing; the
  same WORK folder can serve both protocols). ``nnunet-scribble derive-mixed --dense random:N --scribbled
  none --seed S`` keeps the dense labels of N patients drawn from 001-070 and makes every other training
  case unlabeled (ignore everywhere): ``Dataset(200+N)_ACDCSemiN``. Test: patients 071-085 against dense
  ground truth, as in the quick protocol.
- Lower bound: stock ``nnUNetTrainer`` on the N dense patients alone (``Dataset(300+N)_ACDCSemiNLabeled``:
  the same images and labels of those cases, no ignore label, no other case).
- The trainers named on the command line train on the mixed dataset. Everything else is the quick
  protocol's (``quick_protocol.py``): ``2d_quick``, batch 8, fold ``all``, ``--budget`` (3000it), CPU.
- Mean Teacher runs are evaluated twice: with the student (what the checkpoint's network is) and with the
  teacher (row ``[teacher]``): a copy of the model folder whose network weights are the EMA teacher stored
  in the same final checkpoint, predicted with stock ``nnUNetv2_predict``. No second training.
- Quoted for scale from ``acdc_quick.md`` (same test patients and budget, runs of another day): stock
  nnU-Net on all 70 dense patients (the upper bound, the "ratio to dense" column) and PCE on all 70
  scribbled patients.

Resumable like the quick protocol (finished steps are skipped). Results: WORK/results/acdc_semiN_*.json and
the table ``acdc_semisupervised_quick.md`` + plots in --out.
"""
from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path

import quick_protocol as quick
from results_file import write_generated_section

from nnunet_scribble.conversion.mixed import SUMMARY_FILE

STEM = "acdc_semisupervised_quick"
TITLE = "ACDC semi-supervised quick protocol (CPU)"
QUOTED = {"nnUNetTrainer_{budget}": "dense, all 70 patients (quoted)", "nnUNetTrainerPCE_{budget}": "scribbles, all 70 patients (quoted)"}
TEACHER_KEY = "mean_teacher"   # nnunet_scribble.training.mean_teacher.TEACHER_KEY


def semi_protocol(labeled: int) -> quick.Protocol:
    mixed = (200 + labeled, f"Dataset{200 + labeled:03d}_ACDCSemi{labeled}")
    alone = (300 + labeled, f"Dataset{300 + labeled:03d}_ACDCSemi{labeled}Labeled")
    return quick.Protocol(f"acdc_semi{labeled}", f"{TITLE}, {labeled} labeled patients", mixed, alone,
                          quick.SHARED_DATA / "ACDC", None)


def derive_datasets(work: Path, protocol: quick.Protocol, labeled: int, seed: int, env: dict) -> dict:
    """The mixed dataset (derive-mixed) and its labeled-only twin; returns the mixed dataset's summary."""
    raw = work / "nnUNet_raw"
    (mixed_id, mixed_name), (_, alone_name) = protocol.scribble, protocol.dense
    if not (raw / mixed_name / SUMMARY_FILE).is_file():
        quick.run(["nnunet-scribble", "derive-mixed", "-s", "27", "-d", str(mixed_id), "-n", mixed_name.split("_", 1)[1],
                   "--dense", f"random:{labeled}", "--scribbled", "none", "--seed", str(seed),
                   "--allow-unlabeled-folds", "-np", "2"], env, work / "logs" / f"derive_{mixed_id}.log")
    summary = json.loads((raw / mixed_name / SUMMARY_FILE).read_text())
    if not (raw / alone_name).is_dir():
        labeled_only_dataset(raw / mixed_name, raw / alone_name, sorted(c for c, k in summary["cases"].items() if k == "dense"))
    return summary


def labeled_only_dataset(mixed: Path, target: Path, cases: list[str]) -> None:
    """``target``: the dense ``cases`` of ``mixed`` (images and labels symlinked) and its test set; no ignore label."""
    dataset_json = json.loads((mixed / "dataset.json").read_text())
    ending = dataset_json["file_ending"]
    tmp = target.with_name("." + target.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)   # our own leftover of an interrupted run
    for sub in ("imagesTr", "labelsTr", "imagesTs", "labelsTs"):
        (tmp / sub).mkdir(parents=True)
        for f in sorted((mixed / sub).iterdir()):
            case = f.name[:-len(ending)] if sub.startswith("labels") else f.name[:-len(ending) - 5]   # _0000
            if sub.endswith("Ts") or case in cases:
                (tmp / sub / f.name).symlink_to(f.resolve())
    dataset_json["labels"].pop("ignore")
    dataset_json["numTraining"] = len(cases)
    dataset_json["name"] = target.name
    dataset_json["description"] = f"the {len(cases)} densely labeled training cases of {mixed.name} alone (lower bound)"
    (tmp / "dataset.json").write_text(json.dumps(dataset_json, indent=2))
    os.replace(tmp, target)


def evaluate_teacher(work: Path, protocol: quick.Protocol, student: dict, env: dict) -> dict:
    """The Mean Teacher run ``student`` predicted and evaluated with its teacher's weights (see the docstring)."""
    (dataset_id, name), variant = protocol.scribble, student["variant"]
    model = f"{variant}__nnUNetPlans__{quick.CONFIG}"
    teacher_model_folder(Path(env["nnUNet_results"]) / name / model, work / "nnUNet_results_teacher" / name / model)
    run_name = f"{protocol.name}_{variant}_teacher"
    summary = quick.predict_and_evaluate(work, run_name, work / "nnUNet_raw" / name,
                                         ["-d", str(dataset_id), "-c", quick.CONFIG, "-f", "all", "-tr", variant,
                                          "-device", "cpu", "-npp", "1", "-nps", "1"],
                                         {**env, "nnUNet_results": str(work / "nnUNet_results_teacher")})
    result = {**student, "tag": "teacher", "per_class": summary["per_class"], "mean": summary["mean"],
              "command": student["command"] + " (the [teacher] row: same run, the teacher's weights)"}
    (work / "results" / f"{run_name}.json").write_text(json.dumps(result, indent=2))
    return result


def teacher_model_folder(src: Path, dst: Path, fold: str = "fold_all") -> None:
    """``dst``: the model folder ``src`` whose final checkpoint's network weights are the Mean Teacher's
    teacher (kept in the same checkpoint); made once."""
    import torch

    if (dst / fold / "checkpoint_final.pth").is_file():
        return
    (dst / fold).mkdir(parents=True, exist_ok=True)
    for f in ("plans.json", "dataset.json", "dataset_fingerprint.json"):
        shutil.copy(src / f, dst / f)
    checkpoint = torch.load(src / fold / "checkpoint_final.pth", map_location="cpu", weights_only=False)
    checkpoint["network_weights"] = checkpoint[TEACHER_KEY]
    tmp = dst / fold / ".checkpoint_final.pth.tmp"
    torch.save(checkpoint, tmp)
    os.replace(tmp, dst / fold / "checkpoint_final.pth")


def quoted_rows(budget: str) -> list[dict]:
    """Stock nnU-Net on all 70 dense and PCE on all 70 scribbled patients, from the committed acdc_quick.md."""
    runs = quick.results_from_table(quick.HERE / "results" / "acdc_quick.md").get(budget, [])
    rows = []
    for pattern, labels in QUOTED.items():
        row = next((r for r in runs if r["variant"] == pattern.format(budget=budget) and not r["tag"]), None)
        if row:
            rows.append({**row, "tag": "quoted", "labels": labels, "seconds_per_iteration": None})
    return rows


def write_tables(work: Path, out: Path) -> Path:
    results = [json.loads(f.read_text()) for f in sorted((work / "results").glob("acdc_semi*.json"))]
    sections = []
    for key in sorted({(r["protocol"], r["budget"]) for r in results}):
        runs = [r for r in results if (r["protocol"], r["budget"]) == key]
        runs.sort(key=lambda r: (r["trainer"] != quick.STOCK, r["trainer"], r.get("tag") or ""))
        runs = [{**r, "tag": "labeled only"} if r["trainer"] == quick.STOCK else r for r in runs]
        stock = next((r for r in runs if r["trainer"] == quick.STOCK), None)
        quoted = quoted_rows(key[1])
        bound = next((r for r in quoted if r["variant"].startswith(quick.STOCK + "_")), None)
        labeled = key[0][len("acdc_semi"):]
        sections += [f"### {labeled} labeled patients, budget {key[1]}", ""]
        sections += quick.budget_table(runs + quoted, bound, stock["seconds_per_iteration"] if stock else None) + [""]
        stem = f"{STEM}_{labeled}labeled_{key[1]}"
        quick.plot(runs + quoted, bound, out / f"{stem}.png")
        sections += [f"![{TITLE} {labeled} labeled, {key[1]}]({stem}.png)", ""]
    sections += ["| run | date | machine | command |", "|---|---|---|---|"]
    sections += [f"| {quick.run_label(r)} ({r['labels']}) | {r['date']} | {r['machine']} | `{r['command']}` |"
                 for r in results]
    md = out / f"{STEM}.md"
    write_generated_section(str(md), quick.MARKER, "\n".join(sections) + "\n", f"# {TITLE}\n\n")
    return md


def main() -> None:
    p = quick.protocol_arguments(__doc__)
    p.add_argument("--labeled", type=int, default=3, help="densely labeled patients drawn from 001-070 (default 3)")
    p.add_argument("--seed", type=int, default=1, help="seed of the draw (default 1)")
    p.add_argument("--budget", default="3000it", help="iteration budget variant (3000it = the protocol; 1000it)")
    p.add_argument("--no-lower-bound", action="store_true", help="skip the stock run on the labeled patients alone")
    args = p.parse_args()
    if args.dataset or args.dense or args.protocol != "acdc":
        p.error("this protocol is ACDC's: --dataset, --dense and --protocol do not apply")
    work, _, env, _ = quick.prepare(p, args)          # Dataset027_ACDCScribble, converted and planned
    protocol = semi_protocol(args.labeled)
    summary = derive_datasets(work, protocol, args.labeled, args.seed, env)
    quick.plan_datasets(work, [protocol.scribble, protocol.dense], quick.QUICK_BATCH, "2d", env)
    n_dense = summary["training_cases"]["dense"]
    command = f"python benchmarks/semisupervised_protocol.py --work WORK --labeled {args.labeled} --seed {args.seed} " \
              f"--budget {args.budget} "
    if not args.no_lower_bound:
        quick.run_trainer(work, protocol, quick.STOCK, True, args.budget, env,
                          labels=f"dense, {args.labeled} patients ({n_dense} cases) alone",
                          command=command + "(lower bound: stock nnUNetTrainer)")
    for trainer in args.trainers:
        result = quick.run_trainer(work, protocol, trainer, False, args.budget, env,
                                   labels=f"{args.labeled} dense + {70 - args.labeled} unlabeled patients",
                                   command=command + trainer)
        if trainer.startswith("nnUNetTrainerMeanTeacher") or trainer.startswith("nnUNetTrainerCFR"):
            evaluate_teacher(work, protocol, result, env)
    print(write_tables(work, args.out).read_text())


if __name__ == "__main__":
    sys.exit(main())
