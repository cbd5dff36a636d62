"""``nnUNetv2_find_best_configuration`` for scribble datasets: the same steps, scored against dense labels.

nnU-Net scores cross-validation predictions against ``labelsTr`` (``gt_segmentations``) with the ``ignore``
voxels left out, which for scribbles means on the scribbled voxels only: every model looks nearly perfect and
the choice of model, ensemble and postprocessing is arbitrary. Here the same nnU-Net functions run
(``accumulate_cv_results``, ``ensemble_crossvalidations``, ``compute_metrics_on_folder``,
``determine_postprocessing``, ``print_inference_instructions``), but the references they score against are
dense labels: ``$nnUNet_raw/<dataset>/labelsTr_dense`` by default. When only some cases have dense labels, only
those are scored (temporary folders of symbolic links to the predictions and references of those cases are
what nnU-Net's functions see). Without any dense reference a scribble-only proxy decides (:mod:`.proxy`).

What ends up in ``nnUNet_results`` is what nnU-Net's own command writes there, so stock ``nnUNetv2_predict``,
``nnUNetv2_ensemble`` and ``nnUNetv2_apply_postprocessing`` work with it:
``<model>/crossval_results_folds_<f>/`` (predictions; ``summary.json`` with the dense scores;
``postprocessing.pkl``/``.json`` and ``postprocessed/`` for the winner), ``ensembles/<name>/`` and
``inference_information.json`` / ``inference_instructions.txt`` (with an extra ``nnunet_scribble`` entry saying
what was scored). As with nnU-Net's command, the ``crossval_results_folds_*`` and ensemble folders are rebuilt.
"""
from __future__ import annotations

import copy
import os
import re
import shutil
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable, Iterable, Optional, Sequence

import numpy as np

from nnunet_scribble.errors import UserFacingError
from nnunet_scribble.files import atomic_write, atomic_write_json
from nnunet_scribble.selection import proxy

GEOMETRY_TOL = 1e-3


@dataclass(frozen=True)
class Model:
    """One trained model: ``<trainer>__<plans>__<configuration>`` under ``nnUNet_results/<dataset>``."""
    trainer: str
    plans: str
    configuration: str

    @property
    def identifier(self) -> str:
        return f"{self.trainer}__{self.plans}__{self.configuration}"

    def folder(self, dataset_name: str) -> str:
        from nnunetv2.utilities.file_path_utilities import get_output_folder

        return get_output_folder(dataset_name, self.trainer, self.plans, self.configuration)


def models_from_lists(trainers: Iterable[str], configurations: Iterable[str], plans: Iterable[str]) -> list[Model]:
    """Every trainer x configuration x plans combination (nnU-Net's order)."""
    return [Model(t, p, c) for t in trainers for c in configurations for p in plans]


def dataset_name_of(dataset: str | int) -> str:
    from nnunetv2.utilities.dataset_name_id_conversion import maybe_convert_to_dataset_name

    try:
        return maybe_convert_to_dataset_name(dataset)
    except (RuntimeError, ValueError) as e:
        raise UserFacingError(f"Dataset {dataset} not found ({e}). Give its id or DatasetXXX_Name as it appears "
                              "in $nnUNet_results and $nnUNet_preprocessed.") from None


def dataset_id_of(dataset_name: str) -> str:
    m = re.match(r"Dataset(\d+)_", dataset_name)
    return str(int(m.group(1))) if m else dataset_name


def _load_json(path: str) -> dict:
    import json

    with open(path) as f:
        return json.load(f)


def check_cv_results(dataset_name: str, models: Sequence[Model], folds: Sequence[int], need_npz: bool) -> dict:
    """``{model: {fold: [case, ...]}}``: the validation cases of each fold; every missing piece is reported at
    once as a :class:`UserFacingError` naming the folder and the ``nnUNetv2_train`` command that makes it."""
    did = dataset_id_of(dataset_name)
    problems, cases = [], {}
    for m in models:
        folder = m.folder(dataset_name)
        train = f"nnUNetv2_train {did} {m.configuration} FOLD -tr {m.trainer} -p {m.plans}"
        if not os.path.isdir(folder):
            problems.append(f"{folder} does not exist: {m.identifier} is not trained. Train every requested fold "
                            f"({train.replace('FOLD', 'F')} --npz for F in {' '.join(map(str, folds))}).")
            continue
        absent = [n for n in ("plans.json", "dataset.json") if not os.path.isfile(os.path.join(folder, n))]
        if absent:
            problems.append(f"{folder} has no {absent[0]} (nnUNetv2_train writes it): is this an nnU-Net results "
                            "folder? Train the model again with nnUNetv2_train.")
            continue
        plans = _load_json(os.path.join(folder, "plans.json"))
        if m.configuration not in plans.get("configurations", {}):
            problems.append(f"{os.path.join(folder, 'plans.json')} has no configuration {m.configuration!r} "
                            f"(it has {', '.join(plans.get('configurations', {}))}).")
            continue
        ending = _load_json(os.path.join(folder, "dataset.json"))["file_ending"]
        cases[m] = {}
        for f in folds:
            validation = os.path.join(folder, f"fold_{f}", "validation")
            cmd = train.replace("FOLD", str(f))
            if not os.path.isdir(validation):
                problems.append(f"No cross-validation results of {m.identifier} fold {f}: {validation} is missing. "
                                f"Train the fold ({cmd} --npz), or if it is trained, run its validation ({cmd} "
                                "--val --npz).")
                continue
            names = sorted(n[: -len(ending)] for n in os.listdir(validation) if n.endswith(ending))
            if not names:
                problems.append(f"{validation} holds no predictions ({ending}): run the fold's validation "
                                f"({cmd} --val --npz).")
                continue
            if need_npz:
                missing = [n for n in names if not os.path.isfile(os.path.join(validation, n + ".npz"))]
                if missing:
                    problems.append(f"{validation} has no probabilities ({missing[0]}.npz{' ...' if len(missing) > 1 else ''}), "
                                    f"which ensembling needs: rerun the validation with {cmd} --val --npz, or pass "
                                    "--no-ensembling.")
            cases[m][f] = names
    if problems:
        raise UserFacingError("cannot choose a configuration:\n  " + "\n  ".join(problems))
    return cases


def _image_info(path: str):
    import SimpleITK as sitk

    reader = sitk.ImageFileReader()
    reader.SetFileName(path)
    reader.ReadImageInformation()
    return reader.GetSize(), reader.GetSpacing(), reader.GetOrigin()


def check_dense_geometry(dense: str, images: str, cases: Iterable[str], file_ending: str,
                         tol: float = GEOMETRY_TOL) -> None:
    """Raise :class:`UserFacingError` unless every dense reference has the shape, spacing and origin of its raw
    image ``<images>/<case>_0000<ending>`` (headers only)."""
    problems = []
    for case in cases:
        ref, image = os.path.join(dense, case + file_ending), os.path.join(images, f"{case}_0000{file_ending}")
        if not os.path.isfile(image):
            problems.append(f"{ref}: no raw image {image} to check its geometry against")
            continue
        try:
            a, b = _image_info(ref), _image_info(image)
        except RuntimeError as e:
            problems.append(f"cannot read the header of {ref} or {image}: {str(e).strip().splitlines()[-1]}")
            continue
        for what, x, y in zip(("shape", "spacing", "origin"), a, b):
            if len(x) != len(y) or not np.allclose(x, y, atol=tol, rtol=0):
                problems.append(f"{ref}: {what} {tuple(round(float(v), 4) for v in x)} differs from the raw image "
                                f"{image} {tuple(round(float(v), 4) for v in y)}")
    if problems:
        raise UserFacingError(
            f"the dense references in {dense} do not match the raw images:\n  " + "\n  ".join(problems) +
            "\nDense labels must be in the geometry of imagesTr (write them like the converters do: "
            "`nnunet-scribble convert` writes labelsTr_dense), or pass --dense with the right folder.")


def scored_cases(dataset_name: str, cases: dict, folds: Sequence[int], dense: str, file_ending: str) -> list[str]:
    """The cross-validation cases that have a dense reference; every fold of every model needs one."""
    available = {n[: -len(file_ending)] for n in os.listdir(dense) if n.endswith(file_ending)}
    problems, scored = [], set()
    for m, per_fold in cases.items():
        for f in folds:
            have = [c for c in per_fold[f] if c in available]
            if not have:
                problems.append(f"fold {f} of {m.identifier}: none of its {len(per_fold[f])} validation cases in "
                                f"{os.path.join(m.folder(dataset_name), f'fold_{f}', 'validation')} has a dense "
                                f"reference in {dense}")
            scored.update(have)
    if problems:
        raise UserFacingError(
            "the dense references are too few to score every fold:\n  " + "\n  ".join(problems) +
            f"\nLabel at least one validation case of each fold densely (as {dense}/CASE{file_ending}), or choose "
            "the folds that have some with -f.")
    return sorted(scored)


@contextmanager
def _linked(pred_folder: str, ref_folder: str, cases: Sequence[str], file_ending: str):
    """Temporary ``(pred, ref)`` folders of symbolic links to the given cases' files (plus ``plans.json`` and
    ``dataset.json`` copied from ``pred_folder``): what nnU-Net's scoring functions are given."""
    tmp = tempfile.mkdtemp(prefix="nnunet_scribble_selection_")
    try:
        pred, ref = os.path.join(tmp, "pred"), os.path.join(tmp, "ref")
        os.makedirs(pred)
        os.makedirs(ref)
        for c in cases:
            os.symlink(os.path.abspath(os.path.join(pred_folder, c + file_ending)), os.path.join(pred, c + file_ending))
            os.symlink(os.path.abspath(os.path.join(ref_folder, c + file_ending)), os.path.join(ref, c + file_ending))
        for name in ("plans.json", "dataset.json"):
            shutil.copyfile(os.path.join(pred_folder, name), os.path.join(pred, name))
        yield pred, ref
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _copy_atomic(src: str, dst: str) -> None:
    os.makedirs(os.path.dirname(dst), exist_ok=True)
    atomic_write(dst, lambda tmp: shutil.copyfile(src, tmp))


def _label_setup(folder: str):
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    dataset_json = _load_json(os.path.join(folder, "dataset.json"))
    plans_manager = PlansManager(os.path.join(folder, "plans.json"))
    lm = plans_manager.get_label_manager(dataset_json)
    labels = lm.foreground_regions if lm.has_regions else lm.foreground_labels
    return dataset_json, plans_manager, lm, labels


def dense_summary(pred_folder: str, dense: str, cases: Sequence[str], num_processes: int) -> dict:
    """nnU-Net's ``compute_metrics_on_folder`` of the given cases against the dense references; written
    (atomically) as ``pred_folder/summary.json``, replacing nnU-Net's scribble-voxel scores."""
    from nnunetv2.evaluation.evaluate_predictions import compute_metrics_on_folder, load_summary_json

    dataset_json, plans_manager, lm, labels = _label_setup(pred_folder)
    with _linked(pred_folder, dense, cases, dataset_json["file_ending"]) as (pred, ref):
        out = os.path.join(pred, "summary.json")
        compute_metrics_on_folder(ref, pred, out, plans_manager.image_reader_writer_class(),
                                  dataset_json["file_ending"], labels, lm.ignore_label, num_processes)
        _copy_atomic(out, os.path.join(pred_folder, "summary.json"))
        return load_summary_json(out)


def dense_postprocessing(pred_folder: str, dense: str, cases: Sequence[str], num_processes: int) -> dict:
    """nnU-Net's ``determine_postprocessing`` on the given cases against the dense references; its outputs
    (``postprocessing.pkl``, ``postprocessing.json``, ``postprocessed/``) are copied into ``pred_folder``.
    Returns ``postprocessing.json``'s content."""
    from nnunetv2.postprocessing.remove_connected_components import determine_postprocessing

    dataset_json = _load_json(os.path.join(pred_folder, "dataset.json"))
    with _linked(pred_folder, dense, cases, dataset_json["file_ending"]) as (pred, ref):
        determine_postprocessing(pred, ref, os.path.join(pred, "plans.json"), os.path.join(pred, "dataset.json"),
                                 num_processes=num_processes, keep_postprocessed_files=True)
        post = os.path.join(pred, "postprocessed")
        for name in sorted(os.listdir(post)):
            if os.path.isfile(os.path.join(post, name)):
                _copy_atomic(os.path.join(post, name), os.path.join(pred_folder, "postprocessed", name))
        for name in ("postprocessing.json", "postprocessing.pkl"):
            _copy_atomic(os.path.join(pred, name), os.path.join(pred_folder, name))
        return _load_json(os.path.join(pred, "postprocessing.json"))


# ---- the scribble proxy (no dense reference) ---------------------------------------------------------
def _read_pairs(pred_folder: str, scribbles: str, cases: Sequence[str]):
    dataset_json, plans_manager, lm, labels = _label_setup(pred_folder)
    rw = plans_manager.image_reader_writer_class()
    ending = dataset_json["file_ending"]
    for c in cases:
        pred, _ = rw.read_seg(os.path.join(pred_folder, c + ending))
        scribble, props = rw.read_seg(os.path.join(scribbles, c + ending))
        yield c, pred[0], scribble[0], props


def _proxy_of(pairs, labels, ignore_label, transform=None) -> tuple[dict, dict]:
    per_case = {}
    for c, pred, scribble, props in pairs:
        if transform is not None:
            pred = transform(pred)
        axis = proxy.slice_axis(props["spacing"])
        per_case[c] = proxy.case_proxy(pred, scribble, labels, ignore_label, axis)
    return proxy.proxy_score(per_case), per_case


def proxy_summary(pred_folder: str, scribbles: str, cases: Sequence[str]) -> dict:
    """The scribble proxy (:func:`proxy.proxy_score`) of the given cases' predictions."""
    _, _, lm, labels = _label_setup(pred_folder)
    if lm.has_regions:
        raise UserFacingError(f"{pred_folder}: the scribble proxy needs label maps, this dataset is region-based. "
                              "Give dense references (--dense) instead.")
    return _proxy_of(_read_pairs(pred_folder, scribbles, cases), labels, lm.ignore_label)[0]


def proxy_postprocessing(pred_folder: str, scribbles: str, cases: Sequence[str]) -> dict:
    """nnU-Net's postprocessing search (largest foreground component, then the largest component per class,
    each kept only if it helps and no class gets worse) with the proxy score as the judge; writes
    ``postprocessing.pkl`` (nnU-Net's format: functions and their keyword arguments) and ``postprocessing.json``
    into ``pred_folder``."""
    from batchgenerators.utilities.file_and_folder_operations import save_pickle
    from nnunetv2.utilities.json_export import recursive_fix_for_json_export
    from nnunetv2.postprocessing.remove_connected_components import (
        apply_postprocessing, remove_all_but_largest_component_from_segmentation as keep_largest)

    _, _, lm, labels = _label_setup(pred_folder)
    labels = [int(v) for v in labels]
    pairs = list(_read_pairs(pred_folder, scribbles, cases))

    def score(fns, kwargs):
        return _proxy_of(pairs, labels, lm.ignore_label, lambda p: apply_postprocessing(p, fns, kwargs))

    fns, kwargs = [], []
    base, base_cases = score(fns, kwargs)
    first = base
    candidates = [{"labels_or_regions": list(labels)}] + ([{"labels_or_regions": c} for c in labels]
                                                            if len(labels) > 1 else [])
    for kw in candidates:
        trial, trial_cases = score(fns + [keep_largest], kwargs + [kw])
        if trial["score"] > base["score"]:
            fns, kwargs, base, base_cases = fns + [keep_largest], kwargs + [kw], trial, trial_cases
    save = lambda tmp: save_pickle((fns, kwargs), tmp)   # noqa: E731
    atomic_write(os.path.join(pred_folder, "postprocessing.pkl"), save)
    result = {"criterion": proxy.CRITERION, "input_folder": first, "postprocessed": base,
              "postprocessing_fns": [f.__name__ for f in fns], "postprocessing_kwargs": copy.deepcopy(kwargs)}
    recursive_fix_for_json_export(result)
    atomic_write_json(os.path.join(pred_folder, "postprocessing.json"), result)
    return result


# ---- the command's work ---------------------------------------------------------------------------
def resolve_reference(dataset_name: str, dense: Optional[str]) -> Optional[str]:
    """The dense reference folder: ``dense`` if given (it must exist), else ``$nnUNet_raw/<dataset>/labelsTr_dense``
    if it exists, else None (the proxy decides)."""
    from nnunetv2.paths import nnUNet_raw

    if dense is not None:
        if not os.path.isdir(dense):
            raise UserFacingError(f"--dense {dense} is not a folder. Give the folder of dense labels of the training "
                                  "cases (CASE + file ending, e.g. labelsTr_dense).")
        if os.path.basename(os.path.normpath(dense)) == "labelsTr":
            raise UserFacingError(f"--dense {dense} is labelsTr, which holds the scribbles; give the dense labels "
                                  "(e.g. labelsTr_dense).")
        return os.path.abspath(dense)
    if nnUNet_raw.is_set():
        default = os.path.join(os.fspath(nnUNet_raw), dataset_name, "labelsTr_dense")
        if os.path.isdir(default):
            return default
    return None


def find_best_configuration(dataset: str | int, models: Sequence[Model], folds: Sequence[int] = (0, 1, 2, 3, 4),
                            dense: Optional[str] = None, allow_ensembling: bool = True, num_processes: int = 1,
                            log: Callable[[str], None] = print) -> dict:
    """Choose the best model or two-model ensemble of the cross-validation like nnU-Net, scored against dense
    references (or the scribble proxy without any); determine its postprocessing; write nnU-Net's
    ``inference_information.json`` and ``inference_instructions.txt``. Returns the information dict."""
    from nnunetv2.ensembling.ensemble import ensemble_crossvalidations
    from nnunetv2.evaluation.accumulate_cv_results import accumulate_cv_results
    from nnunetv2.evaluation.evaluate_predictions import load_summary_json
    from nnunetv2.evaluation.find_best_configuration import print_inference_instructions
    from nnunetv2.paths import nnUNet_raw, nnUNet_results, nnUNet_preprocessed
    from nnunetv2.utilities.file_path_utilities import folds_tuple_to_string, get_ensemble_name
    from nnunetv2.utilities.json_export import recursive_fix_for_json_export

    if not models:
        raise UserFacingError("no models given: name at least one trainer (-tr) and configuration (-c).")
    dataset_name = dataset_name_of(dataset)
    folds = tuple(int(f) for f in folds)
    ensembling = allow_ensembling and len(models) > 1
    cases = check_cv_results(dataset_name, models, folds, need_npz=ensembling)
    first_folder = models[0].folder(dataset_name)
    ending = _load_json(os.path.join(first_folder, "dataset.json"))["file_ending"]
    all_cases = sorted({c for per_fold in cases.values() for names in per_fold.values() for c in names})

    reference = resolve_reference(dataset_name, dense)
    if reference is not None:
        scored = scored_cases(dataset_name, cases, folds, reference, ending)
        check_dense_geometry(reference, os.path.join(os.fspath(nnUNet_raw), dataset_name, "imagesTr"), scored, ending)
        criterion = "dense Dice (nnU-Net's foreground mean) against " + reference
        log(f"Scoring against dense references in {reference}: {len(scored)} of the {len(all_cases)} "
            f"cross-validation cases have one{' (only those are scored)' if len(scored) < len(all_cases) else ''}.")
    else:
        scribbles = os.path.join(os.fspath(nnUNet_raw), dataset_name, "labelsTr")
        if not os.path.isdir(scribbles):
            scribbles = os.path.join(os.fspath(nnUNet_preprocessed), dataset_name, "gt_segmentations")
        scored = all_cases
        criterion = proxy.CRITERION
        log(f"No dense references (no labelsTr_dense in $nnUNet_raw/{dataset_name}, no --dense): choosing by the "
            f"{criterion}, on all {len(scored)} cross-validation cases against the scribbles in {scribbles}. "
            "This proxy's agreement with dense Dice is not measured yet; label a few validation cases densely "
            "(labelsTr_dense) for a real score.")

    def score(folder: str) -> dict:
        if reference is not None:
            summary = dense_summary(folder, reference, scored, num_processes)
            return {"result": float(summary["foreground_mean"]["Dice"]),
                    "per_class": {str(k): float(v["Dice"]) for k, v in summary["mean"].items()}}
        summary = proxy_summary(folder, scribbles, scored)
        return {"result": summary["score"], "proxy": summary}

    results = {}
    for m in models:
        folder = m.folder(dataset_name)
        merged = os.path.join(folder, f"crossval_results_folds_{folds_tuple_to_string(folds)}")
        accumulate_cv_results(folder, merged, folds, num_processes, True)
        scribble_dice = float(load_summary_json(os.path.join(merged, "summary.json"))["foreground_mean"]["Dice"])
        results[m.identifier] = {"source": merged, "nnunet_scribble_voxel_dice": scribble_dice, **score(merged)}
    if ensembling:
        for i in range(len(models)):
            for j in range(i + 1, len(models)):
                f1, f2 = models[i].folder(dataset_name), models[j].folder(dataset_name)
                name = get_ensemble_name(f1, f2, folds)
                out = os.path.join(os.fspath(nnUNet_results), dataset_name, "ensembles", name)
                ensemble_crossvalidations([f1, f2], out, folds, num_processes, overwrite=True)
                results[name] = {"source": out, **score(out)}

    log("\nAll results (" + criterion + "):")
    for k, v in results.items():
        extra = (f"   (nnU-Net's scribble-voxel Dice: {v['nnunet_scribble_voxel_dice']:.4f})"
                 if "nnunet_scribble_voxel_dice" in v else "")
        log(f"  {k}: {v['result']:.4f}{extra}")
    best_key = max(results, key=lambda k: results[k]["result"])   # first of ties: single models before ensembles
    best = results[best_key]
    log(f"\n*Best*: {best_key}: {best['result']:.4f}\n\nDetermining postprocessing for the best model/ensemble")
    if reference is not None:
        post = dense_postprocessing(best["source"], reference, scored, num_processes)
        post_result = float(post["postprocessed"]["foreground_mean"]["Dice"])
    else:
        post = proxy_postprocessing(best["source"], scribbles, scored)
        post_result = float(post["postprocessed"]["score"])
    log(f"postprocessing: {post['postprocessing_fns'] or 'none'} {post['postprocessing_kwargs'] or ''}; "
        f"{best['result']:.4f} -> {post_result:.4f}")

    if best_key.startswith("ensemble___"):
        selected = [dict(zip(("trainer", "plans_identifier", "configuration"), part.split("__")))
                    for part in best_key.split("___")[1:3]]
    else:
        selected = [dict(zip(("trainer", "plans_identifier", "configuration"), best_key.split("__")))]
    info = {
        "folds": list(folds),
        "dataset_name_or_id": dataset_name,
        "considered_models": [{"plans": m.plans, "configuration": m.configuration, "trainer": m.trainer}
                              for m in models],
        "ensembling_allowed": allow_ensembling,
        "all_results": {k: v["result"] for k, v in results.items()},
        "best_model_or_ensemble": {
            "result_on_crossval_pre_pp": best["result"],
            "result_on_crossval_post_pp": post_result,
            "postprocessing_file": os.path.join(best["source"], "postprocessing.pkl"),
            "some_plans_file": os.path.join(best["source"], "plans.json"),
            "selected_model_or_models": [{"configuration": s["configuration"], "trainer": s["trainer"],
                                          "plans_identifier": s["plans_identifier"]} for s in selected],
        },
        "nnunet_scribble": {
            "criterion": criterion,
            "reference_folder": reference,
            "n_cases_scored": len(scored),
            "n_cases_crossval": len(all_cases),
            "cases_scored": list(scored),
            "results": {k: {kk: vv for kk, vv in v.items() if kk != "source"} for k, v in results.items()},
        },
    }
    recursive_fix_for_json_export(info)
    root = os.path.join(os.fspath(nnUNet_results), dataset_name)
    atomic_write_json(os.path.join(root, "inference_information.json"), info)
    atomic_write(os.path.join(root, "inference_instructions.txt"),
                 lambda tmp: print_inference_instructions(info, instructions_file=tmp))
    return info
