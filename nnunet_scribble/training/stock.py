"""Stock ``nnUNetTrainer`` with this package's iteration budgets, for the dense-label reference runs.

``nnUNetTrainer_3000it`` is nnU-Net's own trainer, unchanged except for the budget, so benchmarks can
train the dense upper bound with exactly the iterations the scribble trainers get. (nnU-Net already
ships ``nnUNetTrainer_<N>epochs``; only the iteration budgets are added here.)
"""
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

from nnunet_scribble.training.budget_variants import TrainingBudget, add_budget_variants


class nnUNetTrainerStockBudget(TrainingBudget, nnUNetTrainer):
    """Stock nnUNetTrainer that honours the budget attributes (no behaviour of its own)."""


# named nnUNetTrainer_<budget>, like nnU-Net's own nnUNetTrainer_<N>epochs
__all__ = add_budget_variants(nnUNetTrainerStockBudget, globals(), budgets=(), base_name="nnUNetTrainer")
