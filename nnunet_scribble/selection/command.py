"""`nnunet-scribble find-best-configuration` and `nnunet-scribble export`."""
from __future__ import annotations


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "find-best-configuration",
        help="nnUNetv2_find_best_configuration scored against dense labels (or a scribble proxy)",
        description="Choose the best model or ensemble of the cross-validation and its postprocessing like "
                    "nnUNetv2_find_best_configuration, but scored against dense labels ($nnUNet_raw/DatasetXXX/"
                    "labelsTr_dense by default; only the cases that have one are scored) instead of nnU-Net's "
                    "scribble-voxel Dice. Without any dense label a scribble-only proxy decides. Writes nnU-Net's "
                    "files (inference_instructions.txt, inference_information.json, postprocessing.pkl), which "
                    "stock nnUNetv2_predict / nnUNetv2_ensemble / nnUNetv2_apply_postprocessing use.")
    p.add_argument("dataset", help="dataset id or DatasetXXX_Name")
    p.add_argument("-c", nargs="+", required=True, metavar="CONF", help="configurations, e.g. 2d 3d_fullres")
    p.add_argument("-tr", nargs="+", required=True, metavar="TRAINER", help="trainers, e.g. nnUNetTrainerPCE")
    p.add_argument("-p", nargs="+", default=["nnUNetPlans"], metavar="PLANS", help="plans identifiers")
    p.add_argument("-f", nargs="+", type=int, default=[0, 1, 2, 3, 4], metavar="FOLD", help="folds")
    p.add_argument("--dense", default=None, metavar="FOLDER",
                   help="dense reference labels of the training cases (default: $nnUNet_raw/DatasetXXX/"
                        "labelsTr_dense if it exists, else the scribble proxy decides)")
    p.add_argument("--no-ensembling", "--disable_ensembling", action="store_true",
                   help="do not try two-model ensembles (--disable_ensembling: nnU-Net's spelling)")
    p.add_argument("-np", type=int, default=1, metavar="N", help="processes for ensembling and scoring")
    p.set_defaults(func=_find_best)

    e = subparsers.add_parser(
        "export", help="a model zip (like nnUNetv2_export_model_to_zip) that stock nnU-Net predicts with",
        description="Write a model zip like nnUNetv2_export_model_to_zip, with the dense summaries, whose "
                    "checkpoints are rewritten for stock nnU-Net (trainer nnUNetTrainer, stock network weights "
                    "only): the receiver installs it with nnUNetv2_install_pretrained_model_from_zip and predicts "
                    "without the plugin. Trainers whose network is not nnU-Net's (AttenScribble) are refused "
                    "unless --keep-trainer.")
    e.add_argument("dataset", help="dataset id or DatasetXXX_Name")
    e.add_argument("-o", "--output", required=True, help="zip file to write")
    e.add_argument("-c", nargs="+", required=True, metavar="CONF", help="configurations to export")
    e.add_argument("-tr", required=True, metavar="TRAINER", help="trainer")
    e.add_argument("-p", default="nnUNetPlans", metavar="PLANS", help="plans identifier")
    e.add_argument("-f", nargs="+", default=None, metavar="FOLD", help="folds (default: 0 1 2 3 4; or all)")
    e.add_argument("-chk", default="checkpoint_final.pth", help="checkpoint file name")
    e.add_argument("--keep-trainer", action="store_true",
                   help="keep the checkpoints as they are (the receiver then needs the plugin)")
    e.set_defaults(func=_export)


def _find_best(args) -> int:
    from nnunet_scribble.selection.best_configuration import find_best_configuration, models_from_lists

    find_best_configuration(args.dataset, models_from_lists(args.tr, args.c, args.p), folds=args.f,
                            dense=args.dense, allow_ensembling=not args.no_ensembling, num_processes=args.np)
    return 0


def _export(args) -> int:
    from nnunet_scribble.selection.export import export_from_args

    export_from_args(args.dataset, args.output, args.c, args.tr, args.p, args.f, args.chk, args.keep_trainer)
    return 0
