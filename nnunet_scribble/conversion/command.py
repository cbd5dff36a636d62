"""CLI: ``nnunet-scribble convert {acdc,wsl4mis,mscmr,folder}``, ``simulate-scribbles``, ``shrink-scribbles``,
``derive-mixed``."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from nnunet_scribble.arguments import HelpFormatter
from nnunet_scribble.errors import UserFacingError

PRESET_NAMES = ("acdc", "chaos", "myops", "nci-isbi")


def register(subparsers, script: tuple[str, int, str] | None = None) -> None:
    """Add the subcommands. ``script = (format, dataset_id, prog)``: the ``convert format`` parser is the one of a
    ``dataset_conversion/`` script, named ``prog``, whose dataset ID is set (``-d`` optional there)."""

    def format_parser(name: str, help: str):
        if script is None or script[0] != name:
            return formats.add_parser(name, help=help), None
        return formats.add_parser(name, help=help, prog=script[2], description=(
            f"{help}. Same as `nnunet-scribble convert {name} -d {script[1]}`.")), script[1]

    convert = subparsers.add_parser(
        "convert", help="convert a published scribble dataset into an nnU-Net raw dataset",
        description="Convert scribbles into $nnUNet_raw/DatasetNNN_Name: labelsTr = scribbles with the nnU-Net "
                    "ignore label, labelsTr_dense = dense labels (when available), test cases in imagesTs/labelsTs, "
                    "patient-grouped splits_final.json (also written to $nnUNet_preprocessed/DatasetNNN_Name/).")
    formats = convert.add_subparsers(dest="format", required=True, metavar="FORMAT")

    p, dataset_id = format_parser("acdc", "official ACDC layout + Valvano et al. scribbles")
    p.add_argument("-i", "--input", required=True, type=Path,
                   help="ACDC folder containing training/patientXXX/ (an official testing/ folder beside it goes "
                        "to imagesTs)")
    p.add_argument("-s", "--scribbles", required=True, type=Path,
                   help="folder with patientXXX_frameYY_scribble.nii.gz")
    _test_patients(p)
    g = p.add_argument_group("mixed labels (optional; the other training patients keep their scribbles)")
    g.add_argument("--dense-patients", nargs="+", metavar="SPEC",
                   help="training patients whose labelsTr is the ground truth: numbers, ranges like 1-10, "
                        "patientXXX, or random:N (N patients drawn with --seed)")
    g.add_argument("--unlabeled-patients", nargs="+", metavar="SPEC",
                   help="training patients whose labelsTr is ignore everywhere (same syntax; 'rest' = all others)")
    _mixed_args(g)
    _target_args(p, "ACDCScribble", dataset_id=dataset_id)
    p.set_defaults(func=_convert_acdc)

    p, dataset_id = format_parser("wsl4mis", "WSL4MIS h5 volumes (keys image, label, scribble)")
    p.add_argument("-i", "--input", required=True, type=Path, help="folder of patientXXX_frameYY.h5 volumes")
    p.add_argument("--spacing", nargs=3, type=float, metavar=("Z", "Y", "X"), default=None,
                   help="voxel spacing in mm, array order z y x, for every case (the h5 files store none; default: "
                        "ACDC's typical 10 1.5 1.5, with a warning)")
    _test_patients(p)
    _target_args(p, "WSL4MISScribble", dataset_id=dataset_id)
    p.set_defaults(func=_convert_wsl4mis)

    p, dataset_id = format_parser("mscmr", "MS-CMRSeg 2019 in the CycleMix layout (train/val/TestSet)")
    p.add_argument("-i", "--input", required=True, type=Path, help="folder containing train/, val/, TestSet/")
    _target_args(p, "MSCMRScribble", repair_geometry=True, dataset_id=dataset_id)
    p.set_defaults(func=_convert_mscmr)

    p = formats.add_parser(
        "folder", help="any folder of images + folder of scribbles (+ dense labels), 2D PNG or 3D",
        description="Pair files by name (minus the folder's suffix) and translate label values with a preset or "
                    "with --classes/--scribble-values/--unlabeled. Presets: "
                    + " ".join(f"{k}: {v.description}" for k, v in _presets().items()))
    p.add_argument("-i", "--images", required=True, type=Path, help="training images")
    p.add_argument("-s", "--scribbles", required=True, type=Path, help="scribble maps")
    p.add_argument("--dense", type=Path, help="dense labels of the training images (-> labelsTr_dense)")
    p.add_argument("--test-images", type=Path, help="test images (-> imagesTs)")
    p.add_argument("--test-labels", type=Path, help="dense labels of the test images (-> labelsTs)")
    for kind, example in (("image", "_img"), ("scribble", "_scribble"), ("dense", "_gt")):
        p.add_argument(f"--{kind}-suffix", default="", help=f"{kind} file name ending before the extension "
                                                            f"(e.g. {example}); default none")
    p.add_argument("--preset", choices=PRESET_NAMES, help="a documented label convention")
    p.add_argument("--classes", nargs="+", metavar="NAME",
                   help="class names, starting with 'background' (nnU-Net's name for class 0)")
    p.add_argument("--scribble-values", nargs="+", type=int, metavar="V",
                   help="value of each class in the scribble files (default 0 1 2 ...)")
    p.add_argument("--dense-values", nargs="+", type=int, metavar="V",
                   help="value of each class in the dense files (default: the scribble values)")
    p.add_argument("--unlabeled", metavar="V|max",
                   help="scribble value meaning unlabeled: a number (e.g. 255 or 0) or 'max' (one above the "
                        "highest class value)")
    p.add_argument("--channel-names", nargs="+", metavar="NAME",
                   help="nnU-Net channel name(s) (CT selects CT normalisation); default 'image' or R G B")
    _patient_pattern(p)
    _target_args(p, None)
    p.set_defaults(func=_convert_folder)

    p = subparsers.add_parser(
        "simulate-scribbles", help="simulate scribbles from dense labels (ScribbleBench protocol)",
        description="Per slice and class: one component chosen by area, one interior and one border scribble "
                    "(width 3), background included, everything else ignore. Dataset mode (-s/-d) writes a new "
                    "nnU-Net dataset with labelsTr = simulated scribbles and labelsTr_dense = the dense labels; "
                    "folder mode (-i/-o) writes one scribble file per dense file.")
    _derive_args(p)
    p.add_argument("--num-classes", type=int, help="folder mode: number of classes K (dense values 0..K-1)")
    p.add_argument("--width", type=int, default=3, help="scribble width in voxels, odd (default 3)")
    p.add_argument("--shrink", type=float, default=0.0, metavar="R",
                   help="then remove R %% of the scribble voxels (MaCo protocol)")
    p.set_defaults(func=_simulate)

    p = subparsers.add_parser(
        "shrink-scribbles", help="remove R %% of the scribble voxels per slice (MaCo data-sensitivity protocol)",
        description="Whole connected scribble components are removed in a seeded random order, then a contiguous "
                    "part of the last one, until R % of each slice's scribble voxels are ignore.")
    _derive_args(p)
    p.add_argument("--ratio", type=float, required=True, metavar="R", help="percent of scribble voxels to remove")
    p.add_argument("--ignore-label", type=int, help="folder mode: the ignore value K (classes are 0..K-1)")
    p.set_defaults(func=_shrink)

    p = subparsers.add_parser(
        "derive-mixed", help="new dataset mixing dense, scribbled and unlabeled training cases",
        formatter_class=_LinesFormatter,
        description="Write a new raw dataset from SOURCE in which the training cases chosen with --dense keep their "
                    "dense labels (from labelsTr_dense, or from labelsTr of a dense dataset), those chosen with "
                    "--scribbled keep their scribbles, and all others become unlabeled (labelsTr = ignore "
                    "everywhere). Test cases, labelsTr_dense and the source's splits_final.json are kept. A patient's "
                    "cases always get the same kind. SPEC: a list of patient or case ids (commas or spaces); "
                    "numbers and ranges (1-3,7) when the patient ids are a prefix plus a number (patient001); "
                    "random:N (N patients drawn with --seed); rest (all patients not chosen otherwise); none. "
                    "The counts of each kind, overall and per fold, are printed and stored in mixed_labels.json in "
                    "the new dataset.",
        epilog="example: nnunet-scribble derive-mixed -s 27 -d 127 -n ACDCMixed --dense random:5 --scribbled "
               "random:20 --seed 1   (5 dense and 20 scribbled ACDC patients, the other patients unlabeled)\n"
               "example: nnunet-scribble derive-mixed -s 27 -d 128 -n ACDCDense10 --dense 1-10 --scribbled rest")
    p.add_argument("-s", "--source", required=True, help="source dataset ID or name in nnUNet_raw")
    p.add_argument("--dense", nargs="+", metavar="SPEC", help="training patients that keep dense labels")
    p.add_argument("--scribbled", nargs="+", metavar="SPEC", help="training patients that keep scribbles")
    p.add_argument("--seed", type=int, default=0, help="seed of the random:N draws")
    p.add_argument("--patient-pattern", metavar="REGEX",
                   help="regular expression whose first group (or match) is the patient id of a case id; default: "
                        "patientNNN for ACDC-style ids patientNNN_frameNN, else every case is its own patient")
    _mixed_args(p, seed=False)
    _target_args(p, None, required_id=False)
    p.set_defaults(func=_derive_mixed)


def run(argv) -> int:
    """Run one of these subcommands the way ``nnunet-scribble`` does (used by ``dataset_conversion/`` scripts).

    Returns the exit code: 0, or 2 after printing a :class:`UserFacingError` to stderr.
    """
    return _run_parsed(argv)


def run_script(fmt: str, dataset_id: int, argv=None) -> int:
    """Entry point of a ``dataset_conversion/DatasetNNN_Name.py`` script: ``convert FMT -d DATASET_ID ARGV``."""
    argv = sys.argv[1:] if argv is None else argv
    return _run_parsed(["convert", fmt, *argv], script=(fmt, dataset_id, Path(sys.argv[0]).name))


def _run_parsed(argv, script=None) -> int:
    from nnunet_scribble.arguments import ArgumentParser

    parser = ArgumentParser(prog="nnunet-scribble")
    register(parser.add_subparsers(dest="command", required=True, metavar="COMMAND"), script)
    args = parser.parse_args([str(a) for a in argv])
    try:
        return int(args.func(args) or 0)
    except UserFacingError as e:
        print(f"nnunet-scribble {args.command}: error: {e}", file=sys.stderr)
        return 2


def _presets():
    from nnunet_scribble.conversion.labels import PRESETS

    return PRESETS


def _test_patients(p):
    p.add_argument("--test-patients", nargs="+", default=[], metavar="P",
                   help="patients for imagesTs/labelsTs (dense GT): numbers, ranges like 71-85, or patientXXX")


class _LinesFormatter(HelpFormatter):
    """The CLI's help formatter, keeping the line breaks of a description or epilog (each line filled alone)."""

    def _fill_text(self, text, width, indent):
        fill = super()._fill_text
        return "\n".join(fill(line, width, indent) for line in text.splitlines())


def _mixed_args(p, seed=True):
    if seed:
        p.add_argument("--seed", type=int, default=0, help="seed of the random:N draws")
    p.add_argument("--allow-unlabeled-folds", action="store_true",
                   help="write the dataset even if the training part of a fold holds no dense or scribbled case "
                        "(a warning names the fold; do not train it); default: such a dataset is refused")


def _patient_pattern(p):
    p.add_argument("--patient-pattern", metavar="REGEX",
                   help="regular expression whose first group (or match) is the patient id of a case id, so that "
                        "cases of one patient share a fold; default: every case is its own patient")


def _target_args(p, default_name, required_id=True, repair_geometry=False, dataset_id=None):
    g = p.add_argument_group("output")
    if dataset_id is None:
        g.add_argument("-d", "--dataset-id", type=int, required=required_id, help="nnU-Net dataset ID (1-999)")
    else:
        g.add_argument("-d", "--dataset-id", type=int, default=dataset_id,
                       help="nnU-Net dataset ID (default: %(default)s, set by this script)")
    g.add_argument("-n", "--name", default=default_name, required=default_name is None and required_id,
                   help=f"dataset name (default {default_name})" if default_name else "dataset name")
    g.add_argument("--nnunet-raw", help="nnU-Net raw folder (default: $nnUNet_raw)")
    g.add_argument("--nnunet-preprocessed", help="where splits_final.json also goes (default: $nnUNet_preprocessed)")
    g.add_argument("--overwrite", action="store_true",
                   help="replace an existing output (dataset or -o folder) that nnunet-scribble wrote (it holds a "
                        ".nnunet-scribble-output file), once the new one is complete; other folders and outputs "
                        "overlapping an input are refused")
    g.add_argument("-np", "--num-processes", type=int, default=None,
                   help="parallel workers (default: the CPU count, at most $nnUNet_def_n_proc or 8)")
    g.add_argument("--split-seed", type=int, default=12345, help="seed of the patient-grouped 5-fold split")
    g.add_argument("--repair-geometry", action=argparse.BooleanOptionalAction, default=repair_geometry,
                   help="copy the image header onto a label whose origin/direction differ on the same voxel grid "
                        f"(default {'on' if repair_geometry else 'off: such files are errors'})")


def _derive_args(p):
    p.add_argument("-s", "--source", help="dataset mode: source dataset ID or name in nnUNet_raw")
    p.add_argument("-i", "--input", type=Path, help="folder mode: input label folder")
    p.add_argument("-o", "--output", type=Path, help="folder mode: output folder")
    p.add_argument("--axis", type=int, default=None,
                   help="slicing axis in array order (z=0); default: the axis of largest spacing")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    _patient_pattern(p)
    _target_args(p, None, required_id=False)


def _target(args, name=None):
    from nnunet_scribble.conversion.dataset import resolve_target

    if args.dataset_id is None:
        raise UserFacingError("give the target dataset ID with -d")
    return resolve_target(args.dataset_id, name or args.name, args.nnunet_raw, args.nnunet_preprocessed,
                          args.overwrite)


def _done(call) -> int:
    """Run ``call()``; print its warnings as 'warning: ...' lines and the folder it wrote."""
    import warnings

    from nnunet_scribble.conversion.dataset import ConversionWarning

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ConversionWarning)
        path = call()
    for w in caught:
        if issubclass(w.category, ConversionWarning):
            print(f"warning: {w.message}", file=sys.stderr)
        else:
            warnings.showwarning(w.message, w.category, w.filename, w.lineno)
    print(f"wrote {path}")
    _print_label_summary(Path(path))
    return 0


def _print_label_summary(folder: Path) -> None:
    """The counts of a mixed-label dataset, from its mixed_labels.json."""
    import json

    from nnunet_scribble.conversion import mixed

    if (folder / mixed.SUMMARY_FILE).is_file():
        print("\n".join(mixed.describe(json.loads((folder / mixed.SUMMARY_FILE).read_text()))))
        print(f"(per case: {folder / mixed.SUMMARY_FILE})")


def _convert_acdc(args) -> int:
    from nnunet_scribble.conversion import acdc
    from nnunet_scribble.conversion.splits import expand_patients

    return _done(lambda: acdc.convert(args.input, args.scribbles, _target(args), expand_patients(args.test_patients),
                              args.num_processes, args.repair_geometry, args.split_seed,
                              dense_patients=_spec(args.dense_patients), unlabeled_patients=_spec(args.unlabeled_patients),
                              seed=args.seed, allow_unlabeled_folds=args.allow_unlabeled_folds))


def _spec(tokens) -> str | None:
    return None if tokens is None else " ".join(tokens)


def _derive_mixed(args) -> int:
    from nnunet_scribble.conversion import derive

    if args.dense is None and args.scribbled is None:
        raise UserFacingError("choose the labeled cases with --dense SPEC and/or --scribbled SPEC (the others become "
                              "unlabeled), e.g. --dense random:2 --scribbled rest")
    source = derive.find_dataset(args.source, args.nnunet_raw)
    target = _target(args, args.name or source.name.split("_", 1)[1] + "Mixed")
    return _done(lambda: derive.derive_mixed(source, target, _spec(args.dense), _spec(args.scribbled), seed=args.seed,
                                             patient_pattern=args.patient_pattern,
                                             allow_unlabeled_folds=args.allow_unlabeled_folds,
                                             num_processes=args.num_processes, split_seed=args.split_seed))


def _convert_wsl4mis(args) -> int:
    from nnunet_scribble.conversion import wsl4mis
    from nnunet_scribble.conversion.splits import expand_patients

    return _done(lambda: wsl4mis.convert(args.input, _target(args), args.spacing, expand_patients(args.test_patients),
                                 args.num_processes, args.split_seed))


def _convert_mscmr(args) -> int:
    from nnunet_scribble.conversion import mscmr

    return _done(lambda: mscmr.convert(args.input, _target(args), args.num_processes, args.repair_geometry, args.split_seed))


def _convert_folder(args) -> int:
    from nnunet_scribble.conversion import folder
    from nnunet_scribble.conversion.labels import PRESETS, custom_spec

    if args.preset and (args.classes or args.scribble_values or args.unlabeled or args.dense_values):
        raise UserFacingError("give either --preset or --classes/--scribble-values/--dense-values/--unlabeled")
    if args.preset:
        spec = PRESETS[args.preset]
    elif args.classes and args.unlabeled is not None:
        spec = custom_spec(args.classes, args.scribble_values, args.unlabeled, args.dense_values)
    else:
        raise UserFacingError("give --preset, or --classes and --unlabeled (with --scribble-values if they are not "
                              "0 1 2 ...)")
    channel_names = dict(enumerate(args.channel_names)) if args.channel_names else None
    return _done(lambda: folder.convert(
        args.images, args.scribbles, _target(args), spec, dense_dir=args.dense, test_images_dir=args.test_images,
        test_labels_dir=args.test_labels, image_suffix=args.image_suffix, scribble_suffix=args.scribble_suffix,
        dense_suffix=args.dense_suffix, patient_pattern=args.patient_pattern, channel_names=channel_names,
        repair_geometry=args.repair_geometry, num_processes=args.num_processes, split_seed=args.split_seed))


def _derive(args, mode: str, make_hook, folder_classes, name_suffix: str) -> int:
    """Shared driver of simulate-scribbles / shrink-scribbles in dataset or folder mode."""
    from nnunet_scribble.conversion import derive
    from nnunet_scribble.conversion.dataset import default_num_processes

    num_processes = default_num_processes() if args.num_processes is None else args.num_processes
    if (args.input is None) == (args.source is None):
        raise UserFacingError("give either -s SOURCE -d ID (dataset mode) or -i IN -o OUT (folder mode)")
    if args.input is not None:
        if args.output is None or folder_classes is None:
            raise UserFacingError(f"folder mode needs -o OUT and "
                                  f"{'--num-classes' if mode == 'simulate' else '--ignore-label'}")
        return _done(lambda: derive.transform_folder(args.input, args.output, folder_classes, mode, make_hook(folder_classes),
                                             overwrite=args.overwrite, num_processes=num_processes))
    import json

    source = derive.find_dataset(args.source, args.nnunet_raw)
    labels = json.loads((source / "dataset.json").read_text())["labels"]
    num_classes = len([k for k in labels if k != "ignore"])
    target = _target(args, args.name or source.name.split("_", 1)[1] + name_suffix)
    return _done(lambda: derive.derive_dataset(source, target, mode, make_hook(num_classes),
                                       patient_pattern=args.patient_pattern, num_processes=num_processes,
                                       split_seed=args.split_seed))


def _simulate(args) -> int:
    from nnunet_scribble.conversion.simulate import SimulateHook

    return _derive(args, "simulate",
                   lambda k: SimulateHook(k, seed=args.seed, axis=args.axis, width=args.width, shrink=args.shrink),
                   args.num_classes, "Simulated")


def _shrink(args) -> int:
    from nnunet_scribble.conversion.shrink import ShrinkHook

    return _derive(args, "shrink", lambda k: ShrinkHook(k, args.ratio, seed=args.seed, axis=args.axis),
                   args.ignore_label, f"Shrink{args.ratio:g}")
