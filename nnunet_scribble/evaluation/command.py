"""`nnunet-scribble evaluate`: dense-label Dice/HD95 of a prediction folder."""
from __future__ import annotations


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "evaluate", help="Dice and HD95 (mm) of predictions against dense reference labels",
        description="Evaluate predicted label maps against dense reference labels (files paired by name). "
                    "Prints a Markdown table; writes per-case and per-class results as JSON with -o.")
    p.add_argument("-pred", required=True, help="folder with predicted label maps")
    p.add_argument("-gt", required=True, help="folder with dense reference label maps (e.g. labelsTs, labelsTr_dense)")
    p.add_argument("-o", "--output", default=None, help="summary JSON to write")
    p.add_argument("-l", "--labels", type=int, nargs="+", default=None,
                   help="class values to evaluate (default: from dataset.json in -pred or next to -gt, "
                        "else every non-zero value in the references)")
    p.add_argument("--allow-missing-predictions", "--chill", action="store_true",
                   help="evaluate only the predicted cases when the reference folder holds more "
                        "(--chill: nnU-Net's spelling)")
    p.add_argument("-np", "--num-processes", type=int, default=2,
                   help="parallel worker processes (default: %(default)s)")
    p.set_defaults(func=_run)


def _run(args) -> int:
    from pathlib import Path

    from nnunet_scribble.evaluation.evaluate_folder import (check_writable, evaluate_folders, markdown_table,
                                                            save_summary)

    output = Path(args.output) if args.output else None
    if output is not None:
        check_writable(output)  # before the work
    summary = evaluate_folders(args.pred, args.gt, classes=args.labels,
                               allow_missing_predictions=args.allow_missing_predictions,
                               num_processes=args.num_processes)
    print(markdown_table(summary), flush=True)  # before writing, so a failing write loses nothing
    if output is not None:
        save_summary(summary, output, table_printed=True)
        print(f"\nper-case results: {output}")
    return 0
