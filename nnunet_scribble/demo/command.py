"""`nnunet-scribble demo`: the whole pipeline on a small synthetic dataset, on CPU in minutes."""
from __future__ import annotations

from pathlib import Path


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "demo", help="synthetic scribble dataset -> nnU-Net plan/train/predict -> dense-label evaluation",
        description="Generate a small synthetic 2D scribble dataset, run stock nnU-Net planning and "
                    "preprocessing, train TRAINER, predict the held-out cases with nnUNetv2_predict and "
                    "print their Dice/HD95 against dense labels. Uses only folders under --output.")
    p.add_argument("-tr", "--trainer", default="nnUNetTrainerPCE_5epochs",
                   help="trainer class (any nnU-Net or nnunet-scribble trainer, see `nnunet-scribble trainers`; "
                        "default: %(default)s)")
    p.add_argument("--output", default="nnunet_scribble_demo", help="output folder (default: %(default)s)")
    p.add_argument("-f", "--fold", default="0", help="fold to train (0-4 or 'all'; default: %(default)s)")
    p.add_argument("--n-train", type=int, default=20, help="training cases (default: %(default)s)")
    p.add_argument("--n-test", type=int, default=6, help="held-out test cases (default: %(default)s)")
    p.add_argument("--seed", type=int, default=0,
                   help="seed of the synthetic images and scribbles (default: %(default)s)")
    p.add_argument("-device", "--device", default=None, help="cpu or cuda (default: cuda if available)")
    p.add_argument("-v", "--verbose", action="store_true", help="show nnU-Net's output")
    p.set_defaults(func=_run)


def _run(args) -> int:
    import torch

    from nnunet_scribble.demo.run import run_demo
    from nnunet_scribble.trainers import check_trainer_name

    check_trainer_name(args.trainer)  # before anything slow: nnU-Net would fail only after planning
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    run_demo(Path(args.output), args.trainer, args.fold, args.n_train, args.n_test, args.seed, device,
             verbose=args.verbose)
    return 0
