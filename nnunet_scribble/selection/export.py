"""``nnunet-scribble export``: a model zip like ``nnUNetv2_export_model_to_zip`` that stock nnU-Net predicts with.

The zip holds what nnU-Net's export holds (checkpoints, ``plans.json``, ``dataset.json``,
``dataset_fingerprint.json``, ``progress.png``, ``debug.json``, each fold's ``validation/summary.json``, the
``crossval_results_folds_*`` summary and postprocessing files) plus each fold's ``validation/summary_dense.json``,
under the same paths relative to ``nnUNet_results``; ``nnUNetv2_install_pretrained_model_from_zip`` installs it.

Checkpoints are rewritten for a machine without this plugin: ``trainer_name`` becomes ``nnUNetTrainer`` and
``network_weights`` keeps only the weights of nnU-Net's stock network for the plans (a DMPLS/SAM-SP checkpoint
loses its ``aux_decoder.*``; training-only state such as MedCL's head, a Mean Teacher's teacher, optimizer
state is left out). Before that, the trainer's own network (in eval mode, as ``nnUNetv2_predict`` runs it) and
the stock network with the kept weights are run on the same random input; a trainer whose outputs differ, or
whose weights do not fit the stock network (AttenScribble's attention block), is refused: its models keep
needing the plugin (``--keep-trainer`` exports them unchanged). The model folder keeps its name
(``nnUNetTrainerPCE__nnUNetPlans__2d``), so ``nnUNetv2_predict -tr nnUNetTrainerPCE`` finds it.
"""
from __future__ import annotations

import io
import os
import zipfile
from typing import Callable, Optional, Sequence

from nnunet_scribble.errors import UserFacingError
from nnunet_scribble.files import atomic_write, require_writable

STOCK_TRAINER = "nnUNetTrainer"
KEPT_KEYS = ("init_args", "inference_allowed_mirroring_axes", "current_epoch", "_best_ema")
TOLERANCE = 1e-5


def _fold_folder(fold) -> str:
    return "fold_all" if str(fold) == "all" else f"fold_{int(fold)}"


def _probe_input(configuration_manager, num_input_channels: int):
    """A small random input the planned network accepts: twice the total downsampling per axis (the patch
    size when the strides are not in the plans)."""
    import numpy as np
    import torch

    kwargs = configuration_manager.network_arch_init_kwargs
    strides = kwargs.get("strides")
    if strides:
        size = [2 * int(np.prod([s if isinstance(s, int) else s[a] for s in strides]))
                for a in range(len(configuration_manager.patch_size))]
    else:
        size = list(configuration_manager.patch_size)
    return torch.randn((1, num_input_channels, *size), generator=torch.Generator().manual_seed(0))


def stock_checkpoint(checkpoint: dict, plans: dict, dataset_json: dict, source: str = "checkpoint") -> dict:
    """The checkpoint as stock nnU-Net's ``nnUNetTrainer`` would have written it for the same network weights;
    raises :class:`UserFacingError` when the trainer's inference network is not nnU-Net's stock network."""
    import torch
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
    from nnunetv2.utilities.find_objects import recursive_find_trainer_class_by_name
    from nnunetv2.utilities.label_handling.label_handling import determine_num_input_channels
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    trainer_name = checkpoint["trainer_name"]
    plans_manager = PlansManager(plans)
    cm = plans_manager.get_configuration(checkpoint["init_args"]["configuration"])
    n_in = determine_num_input_channels(plans_manager, cm, dataset_json)
    n_out = plans_manager.get_label_manager(dataset_json).num_segmentation_heads
    try:
        trainer_class = recursive_find_trainer_class_by_name(trainer_name)
    except RuntimeError:
        raise UserFacingError(f"{source}: trainer {trainer_name} is not found by nnU-Net. Set nnUNet_extTrainer="
                              "$(nnunet-scribble trainers-path) before exporting a plugin model.") from None
    refuse = (f"{source}: {trainer_name}'s inference network is not nnU-Net's stock network ({{why}}), so its "
              "models keep needing the plugin: install nnunet-scribble and set nnUNet_extTrainer where they are "
              "used, and export with --keep-trainer to ship the checkpoints unchanged.")
    own = trainer_class.build_network_architecture(plans_manager, cm, n_in, n_out, enable_deep_supervision=False)
    stock = nnUNetTrainer.build_network_architecture(plans_manager, cm, n_in, n_out, enable_deep_supervision=False)
    weights = checkpoint["network_weights"]
    stock_keys = stock.state_dict()
    unfit = [k for k, v in stock_keys.items() if k not in weights or tuple(weights[k].shape) != tuple(v.shape)]
    if unfit:
        raise UserFacingError(refuse.format(why=f"{len(unfit)} of the stock network's weights are missing or have "
                                                f"another shape, e.g. {unfit[0]}"))
    kept = {k: weights[k].detach().clone() for k in stock_keys}
    own.load_state_dict(weights)
    stock.load_state_dict(kept)
    own.eval()
    stock.eval()
    x = _probe_input(cm, n_in)
    with torch.no_grad():
        a, b = own(x), stock(x)
    if not (isinstance(a, torch.Tensor) and a.shape == b.shape):
        raise UserFacingError(refuse.format(why="its eval-mode output is not one tensor of the stock network's shape"))
    diff = float((a.float() - b.float()).abs().max())
    if diff > TOLERANCE * (1.0 + float(b.abs().max())):
        raise UserFacingError(refuse.format(why=f"with the stock network's weights it predicts differently "
                                                f"(max difference {diff:.3g} on a random input)"))
    out = {"network_weights": kept, "trainer_name": STOCK_TRAINER,
           "nnunet_scribble_trainer_name": trainer_name}
    out.update({k: checkpoint[k] for k in KEPT_KEYS if k in checkpoint})
    return out


def _files_of(results: str, folder: str, folds: Sequence, checkpoints: Sequence[str], crossval: str) -> list[str]:
    """What nnU-Net's export takes from one model folder (plus the dense summaries), existing files only."""
    files = []
    for fold in folds:
        ff = os.path.join(folder, _fold_folder(fold))
        files += [os.path.join(ff, c) for c in checkpoints]
        files += [os.path.join(ff, n) for n in ("debug.json", "progress.png", "network_architecture.pdf",
                                                  os.path.join("validation", "summary.json"),
                                                  os.path.join("validation", "summary_dense.json"))]
    files += [os.path.join(folder, crossval, n) for n in ("summary.json", "postprocessing.pkl", "postprocessing.json")]
    files += [os.path.join(folder, n) for n in ("plans.json", "dataset_fingerprint.json", "dataset.json")]
    return [f for f in files if os.path.isfile(f)]


def export_model(dataset: str | int, output_zip: str, configurations: Sequence[str], trainer: str,
                 plans: str = "nnUNetPlans", folds: Sequence = (0, 1, 2, 3, 4),
                 checkpoints: Sequence[str] = ("checkpoint_final.pth",), keep_trainer: bool = False,
                 log: Callable[[str], None] = print) -> str:
    """Write the model zip ``output_zip`` (atomically); see the module docstring. Returns its path."""
    import json

    import torch
    from nnunetv2.paths import nnUNet_results
    from nnunetv2.utilities.file_path_utilities import folds_tuple_to_string, get_output_folder

    from nnunet_scribble.selection.best_configuration import dataset_id_of, dataset_name_of

    dataset_name = dataset_name_of(dataset)
    results = os.fspath(nnUNet_results)
    require_writable(os.path.dirname(os.path.abspath(output_zip)), "the model zip")
    problems, members = [], []
    for c in configurations:
        folder = get_output_folder(dataset_name, trainer, plans, c)
        if not os.path.isdir(folder):
            problems.append(f"{folder} does not exist: train {trainer} {c} first (nnUNetv2_train "
                            f"{dataset_id_of(dataset_name)} {c} FOLD -tr {trainer} -p {plans}).")
            continue
        for fold in folds:
            for chk in checkpoints:
                path = os.path.join(folder, _fold_folder(fold), chk)
                if not os.path.isfile(path):
                    problems.append(f"{path} is missing: train fold {fold} (nnUNetv2_train {dataset_id_of(dataset_name)} "
                                    f"{c} {fold} -tr {trainer} -p {plans}), or choose the folds with -f.")
        for name in ("plans.json", "dataset.json"):
            if not os.path.isfile(os.path.join(folder, name)):
                problems.append(f"{os.path.join(folder, name)} is missing (nnUNetv2_train writes it).")
        crossval = f"crossval_results_folds_{folds_tuple_to_string([f for f in folds if str(f) != 'all'])}"
        members.append((folder, _files_of(results, folder, folds, checkpoints, crossval)))
    if problems:
        raise UserFacingError("cannot export:\n  " + "\n  ".join(problems))

    def write(tmp):
        with zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as zf:
            for folder, files in members:
                with open(os.path.join(folder, "plans.json")) as f:
                    plans_dict = json.load(f)
                with open(os.path.join(folder, "dataset.json")) as f:
                    dataset_json = json.load(f)
                for path in files:
                    arcname = os.path.relpath(path, results)
                    if path.endswith(".pth") and not keep_trainer:
                        checkpoint = torch.load(path, map_location="cpu", weights_only=False)
                        buffer = io.BytesIO()
                        torch.save(stock_checkpoint(checkpoint, plans_dict, dataset_json, source=path), buffer)
                        zf.writestr(arcname, buffer.getvalue())
                        log(f"{arcname}: {checkpoint['trainer_name']} -> {STOCK_TRAINER} (stock network weights only)")
                    else:
                        zf.write(path, arcname)
    atomic_write(os.path.abspath(output_zip), write)
    log(f"wrote {output_zip}" + ("" if keep_trainer else ": predicts with stock nnU-Net, no plugin needed "
                                 f"(nnUNetv2_install_pretrained_model_from_zip {output_zip}; nnUNetv2_predict ... "
                                 f"-tr {trainer})"))
    return output_zip


def export_from_args(dataset, output: str, configurations: Sequence[str], trainer: str, plans: str,
                     folds: Optional[Sequence[str]], checkpoint: str, keep_trainer: bool) -> str:
    folds = tuple(f if f == "all" else int(f) for f in (folds or (0, 1, 2, 3, 4)))
    return export_model(dataset, output, configurations, trainer, plans, folds, (checkpoint,), keep_trainer)
