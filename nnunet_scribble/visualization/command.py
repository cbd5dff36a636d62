"""`nnunet-scribble overlay`: PNGs of images with their scribbles, predictions, pseudo-labels, dense labels."""
from __future__ import annotations


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "overlay", help="PNGs: image + scribbles (+ prediction, pseudo-label, dense labels) per case",
        description="Write one PNG per case into -o: a few slices chosen where the labels are, the image with "
                    "its scribbles (unlabeled pixels transparent), and beside it the prediction (--pred), "
                    "pseudo-label (--pseudo) and dense labels (labelsTr_dense / labelsTs, or --dense) tinted "
                    "over the image. Cases: --cases, else those in --pred, else every training case. "
                    "Existing PNGs are not replaced unless --overwrite.")
    p.add_argument("-d", "--dataset", required=True,
                   help="nnU-Net raw dataset folder (DatasetXXX_Name), or its ID or name under $nnUNet_raw")
    p.add_argument("-o", "--output", required=True, help="folder for the PNGs (<case>.png)")
    p.add_argument("--cases", nargs="+", default=None, metavar="CASE",
                   help="case names (file names without _0000 and ending; a file with one per line: @FILE)")
    p.add_argument("--pred", default=None, help="folder of predicted label maps (e.g. nnUNetv2_predict's -o)")
    p.add_argument("--pseudo", default=None,
                   help="folder of pseudo-label maps in the images' geometry (same file names and ending)")
    p.add_argument("--dense", default=None,
                   help="folder of dense labels (default: labelsTr_dense for training, labelsTs for test cases)")
    p.add_argument("--slices", type=int, default=3, help="slices per case (default: %(default)s)")
    p.add_argument("--overwrite", action="store_true", help="replace PNGs of the same names in -o")
    p.set_defaults(func=_run)


def _run(args) -> int:
    from pathlib import Path

    from nnunet_scribble.errors import UserFacingError
    from nnunet_scribble.visualization.overlay import write_overlays

    if args.slices < 1:
        raise UserFacingError(f"--slices must be at least 1 (got {args.slices}).")
    cases = args.cases
    if cases and len(cases) == 1 and cases[0].startswith("@"):
        listing = Path(cases[0][1:])
        if not listing.is_file():
            raise UserFacingError(f"--cases {cases[0]}: {listing} not found (a text file with one case name a line).")
        cases = [line.strip() for line in listing.read_text().splitlines() if line.strip()]
    written = write_overlays(_dataset_folder(args.dataset), Path(args.output), cases=cases,
                             pred=Path(args.pred) if args.pred else None,
                             pseudo=Path(args.pseudo) if args.pseudo else None,
                             dense=Path(args.dense) if args.dense else None, n_slices=args.slices,
                             overwrite=args.overwrite)
    print(f"{len(written)} PNG(s) in {args.output}")
    return 0


def _dataset_folder(text: str):
    """A raw dataset folder from a path, or from an ID / name under $nnUNet_raw."""
    import os
    from pathlib import Path

    from nnunet_scribble.errors import UserFacingError

    if Path(text).is_dir():
        return Path(text)
    raw = os.environ.get("nnUNet_raw")
    if raw and Path(raw).is_dir():
        prefix = f"Dataset{int(text):03d}_" if text.isdigit() else None
        for folder in sorted(Path(raw).iterdir()):
            if folder.is_dir() and (folder.name == text or (prefix and folder.name.startswith(prefix))):
                return folder
    raise UserFacingError(f"-d {text}: not a folder, nor a dataset ID or name under $nnUNet_raw "
                          f"({raw or 'not set'}). Give the path of the raw dataset folder (DatasetXXX_Name).")
