"""`nnunet-scribble trainers`: the trainer names ``-tr`` accepts, and a fast check of a name.

The list is what nnU-Net finds: the trainers re-exported by ``ext_trainers/`` (the folder
``nnUNet_extTrainer`` points at) plus the stock trainers under ``nnunetv2.training.nnUNetTrainer``.
Budget variants (``_5epochs``, ``_3000it``, ...) are grouped under their base trainer.
"""
from __future__ import annotations

import difflib
import importlib
import inspect
import pkgutil
import textwrap
from dataclasses import dataclass, field

from nnunet_scribble.errors import UserFacingError

STOCK_BASE = "nnUNetTrainer"


@dataclass
class TrainerGroup:
    name: str
    summary: str
    variants: list[str] = field(default_factory=list)  # name suffixes, e.g. "_5epochs"


def _is_budget_variant(cls) -> bool:
    """A variant made by ``add_budget_variants``: it only sets ``TrainingBudget`` attributes."""
    from nnunet_scribble.training.budget_variants import TrainingBudget

    budget_keys = set(TrainingBudget.__annotations__)
    return issubclass(cls, TrainingBudget) and bool(budget_keys & set(vars(cls)))


def _summary(cls) -> str:
    doc = inspect.getdoc(cls) if "__doc__" in vars(cls) else None
    return doc.split("\n\n")[0].replace("\n", " ").replace("``", "") if doc else ""


def plugin_trainers() -> dict:
    """name -> class of every trainer re-exported for nnU-Net's lookup."""
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

    module = importlib.import_module("nnunet_scribble.ext_trainers.nnunet_scribble_trainers")
    return {n: o for n, o in vars(module).items()
            if inspect.isclass(o) and issubclass(o, nnUNetTrainer) and o is not nnUNetTrainer}


def stock_trainer_names() -> set[str]:
    """Trainer classes defined in nnU-Net itself (imports every module there, as nnU-Net's lookup does)."""
    import nnunetv2.training.nnUNetTrainer as package
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

    names = set()
    for info in pkgutil.walk_packages(package.__path__, package.__name__ + "."):
        try:
            module = importlib.import_module(info.name)
        except Exception:  # nnU-Net's lookup skips such modules too  # noqa: BLE001
            continue
        names.update(n for n, o in vars(module).items()
                     if inspect.isclass(o) and issubclass(o, nnUNetTrainer) and o.__module__ == module.__name__)
    return names


def trainer_groups() -> list[TrainerGroup]:
    """The plugin's trainers, one group per base trainer with its budget-variant suffixes."""
    trainers = plugin_trainers()
    groups = {n: TrainerGroup(n, _summary(c)) for n, c in trainers.items() if not _is_budget_variant(c)}
    for name, cls in trainers.items():
        if _is_budget_variant(cls):
            base, suffix = name.rsplit("_", 1)
            if base not in groups:  # e.g. budget variants of stock nnUNetTrainer
                groups[base] = TrainerGroup(base, "stock nnU-Net trainer (for dense labels: the reference)"
                                            if base == STOCK_BASE else "")
            groups[base].variants.append("_" + suffix)
    return list(groups.values())


def format_listing(groups: list[TrainerGroup]) -> str:
    width = max(len(g.name) for g in groups)
    lines = ["Trainers for -tr / --trainer (nnUNetv2_train needs: export nnUNet_extTrainer=$(nnunet-scribble "
             "trainers-path)). Append a variant suffix for a training budget, e.g. nnUNetTrainerPCE_5epochs.", ""]
    for g in groups:
        lines.append(f"{g.name:<{width}}  {textwrap.shorten(g.summary, 100, placeholder=' ...')}".rstrip())
        if g.variants:
            lines.append(f"{'':<{width}}  variants: {' '.join(g.variants)}")
    lines += ["", "Every stock nnU-Net trainer works as well (nnUNetTrainer, nnUNetTrainer_5epochs, ...). "
                  "Which one to start with: README.md, section 'Which trainer'."]
    return "\n".join(lines)


def check_trainer_name(name: str) -> None:
    """Raise a :class:`UserFacingError` with close matches if nnU-Net would not find trainer ``name``."""
    known = set(plugin_trainers())
    if name in known:
        return
    known |= stock_trainer_names()
    if name in known:
        return
    by_lower = {}
    for k in sorted(known):
        by_lower.setdefault(k.lower(), k)
    if name.lower() in by_lower:  # only the case is wrong
        close = [by_lower[name.lower()]]
    else:
        close = [by_lower[m] for m in difflib.get_close_matches(name.lower(), list(by_lower), n=3, cutoff=0.75)]
    hint = f"did you mean {' or '.join(close)}? " if close else ""
    raise UserFacingError(f"unknown trainer {name!r}: {hint}`nnunet-scribble trainers` lists the trainers "
                          "(trainer names are case-sensitive).")


def register(subparsers) -> None:
    subparsers.add_parser(
        "trainers", help="list the trainers (one line each, with their budget variants)",
        description="List the trainers of nnunet-scribble with a one-line summary and their budget variants.",
    ).set_defaults(func=_run)


def _run(_args) -> int:
    print(format_listing(trainer_groups()))
    return 0
