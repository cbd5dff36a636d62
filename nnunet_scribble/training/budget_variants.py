"""nnU-Net-style training-budget variants generated for every trainer.

- ``<Trainer>_<N>epochs`` (``_1epoch``, ``_5epochs``, ...): ``N`` epochs of nnU-Net's default 250
  iterations, like nnU-Net's own ``nnUNetTrainer_5epochs``.
- ``<Trainer>_<N>it`` (``_3000it``, ``_1000it``): a fixed number of training iterations for
  benchmarks (``ITERATION_BUDGETS``: epochs x iterations per epoch), with 5 validation iterations per
  epoch (the per-epoch validation loss is only logged) and no final validation: a benchmark predicts
  its own test set. ``_3000it`` is the budget of the ``acdc-quick`` protocol; ``_1000it`` a reduced
  budget for a first look where 3000 iterations do not fit.
- ``<Trainer>_smoke``: 2 epochs x 5 iterations, 2 validation iterations, final validation kept: checks
  a whole pipeline (train all folds, validation, ``nnUNetv2_predict``) in minutes, e.g. on a CPU.
  Its predictions are meaningless.

Every trainer of this package (the plain ones too) writes ``checkpoint_latest.pth`` at least every 250
training iterations (every epoch; the ``_<N>it`` variants every 10 epochs of 25) instead of nnU-Net's
every 50 epochs, so ``nnUNetv2_train ... --c`` after a kill resumes from the last epoch or so, not from
``checkpoint_best.pth`` (nnU-Net's fallback when no ``checkpoint_latest`` exists). Checkpoints are
written to a temporary file and renamed, so a kill while saving leaves the previous one intact.

nnU-Net writes such variants out by hand; here one call per trainer creates them as module-level
classes (picklable, found by nnU-Net's trainer lookup through the module's attributes). Each variant
only sets class attributes; :class:`TrainingBudget` applies them after nnU-Net's ``__init__`` (whose
signature must stay nnU-Net's).
"""
from __future__ import annotations

from nnunet_scribble.files import atomic_write

EPOCH_BUDGETS = (1, 2, 5, 10, 20, 50, 100, 250, 500)
# name suffix -> (epochs, training iterations per epoch)
ITERATION_BUDGETS = {"3000it": (120, 25), "1000it": (40, 25)}
BENCHMARK_VAL_ITERATIONS = 5
# checkpoint_latest every this many epochs (nnU-Net: 50); both are 250 training iterations
SAVE_EVERY_EPOCHS = 1
BENCHMARK_SAVE_EVERY = 10
# the _smoke variant: epochs, training iterations per epoch, validation iterations per epoch
SMOKE_BUDGET = (2, 5, 2)


class TrainingBudget:
    """Mixin for nnUNetTrainer subclasses: applies the budget class attributes in ``__init__``."""

    budget_epochs: int | None = None
    budget_iterations_per_epoch: int | None = None
    budget_val_iterations_per_epoch: int | None = None
    budget_save_every: int | None = SAVE_EVERY_EPOCHS
    skip_final_validation: bool = False

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict, device=None):
        import torch

        super().__init__(plans, configuration, fold, dataset_json,
                         torch.device("cuda") if device is None else device)
        if self.budget_epochs is not None:
            self.num_epochs = self.budget_epochs
        if self.budget_iterations_per_epoch is not None:
            self.num_iterations_per_epoch = self.budget_iterations_per_epoch
        if self.budget_val_iterations_per_epoch is not None:
            self.num_val_iterations_per_epoch = self.budget_val_iterations_per_epoch
        if self.budget_save_every is not None:
            self.save_every = self.budget_save_every

    def save_checkpoint(self, filename: str) -> None:
        """nnU-Net's checkpoint, written atomically (``files.atomic_write``: a kill mid-write keeps the old file)."""
        if self.local_rank != 0 or self.disable_checkpointing:
            return super().save_checkpoint(filename)
        atomic_write(filename, super().save_checkpoint)

    def perform_actual_validation(self, save_probabilities: bool = False):
        if self.skip_final_validation:
            self.print_to_log_file("Final validation skipped (benchmark budget variant).")
            return
        super().perform_actual_validation(save_probabilities)


def budget_variant_name(trainer_name: str, epochs: int) -> str:
    return f"{trainer_name}_{epochs}epoch{'' if epochs == 1 else 's'}"


def _variant(trainer_cls: type, name: str, module_globals: dict, doc: str, attributes: dict) -> str:
    module_globals[name] = type(name, (trainer_cls,), {
        "__module__": module_globals["__name__"], "__qualname__": name, "__doc__": doc, **attributes})
    return name


def add_budget_variants(trainer_cls: type, module_globals: dict, budgets=EPOCH_BUDGETS,
                        iteration_budgets=ITERATION_BUDGETS, base_name: str | None = None) -> list[str]:
    """Create ``<base_name>_<N>epochs``, ``<base_name>_<N>it`` and ``<base_name>_smoke`` subclasses of
    ``trainer_cls`` in the calling module; return their names. ``base_name`` defaults to the class name.

    ``trainer_cls`` must derive from :class:`TrainingBudget`.
    """
    if not issubclass(trainer_cls, TrainingBudget):
        raise TypeError(f"{trainer_cls.__name__} must derive from TrainingBudget to get budget variants")
    base = base_name or trainer_cls.__name__
    names = [_variant(trainer_cls, budget_variant_name(base, e), module_globals,
                      f"{base} trained for {e} epoch(s).", {"budget_epochs": e}) for e in budgets]
    for suffix, (epochs, iterations) in iteration_budgets.items():
        names.append(_variant(
            trainer_cls, f"{base}_{suffix}", module_globals,
            f"{base} for {epochs} epochs x {iterations} iterations (benchmark budget, no final validation).",
            {"budget_epochs": epochs, "budget_iterations_per_epoch": iterations,
             "budget_val_iterations_per_epoch": BENCHMARK_VAL_ITERATIONS,
             "budget_save_every": BENCHMARK_SAVE_EVERY, "skip_final_validation": True}))
    epochs, iterations, val_iterations = SMOKE_BUDGET
    names.append(_variant(
        trainer_cls, f"{base}_smoke", module_globals,
        f"{base} for {epochs} epochs x {iterations} iterations: a smoke test of the pipeline, not a model.",
        {"budget_epochs": epochs, "budget_iterations_per_epoch": iterations,
         "budget_val_iterations_per_epoch": val_iterations, "budget_save_every": 1}))
    return names
