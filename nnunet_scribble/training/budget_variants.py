"""nnU-Net-style epoch-budget variants (``<Trainer>_5epochs`` ...) generated for every trainer.

nnU-Net writes such variants out by hand; here one call per trainer creates them as module-level
classes (picklable, found by nnU-Net's trainer lookup through the module's attributes).
"""
from __future__ import annotations

EPOCH_BUDGETS = (1, 2, 5, 10, 20, 50, 100, 250, 500)


def budget_variant_name(trainer_name: str, epochs: int) -> str:
    return f"{trainer_name}_{epochs}epoch{'' if epochs == 1 else 's'}"


def add_budget_variants(trainer_cls: type, module_globals: dict, budgets=EPOCH_BUDGETS) -> list[str]:
    """Create ``<trainer>_<N>epochs`` subclasses in the calling module; return their names.

    Each variant only sets the class attribute ``budget_epochs``; the scribble trainer base applies it
    to ``num_epochs`` in ``__init__`` (so ``__init__``'s signature stays nnU-Net's).
    """
    names = []
    for epochs in budgets:
        name = budget_variant_name(trainer_cls.__name__, epochs)
        module_globals[name] = type(name, (trainer_cls,), {
            "__module__": module_globals["__name__"],
            "__qualname__": name,
            "__doc__": f"{trainer_cls.__name__} trained for {epochs} epoch(s).",
            "budget_epochs": epochs,
        })
        names.append(name)
    return names
