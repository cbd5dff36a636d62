"""No module imports upward (docs/architecture.md): each package of ``nnunet_scribble`` imports only from
lower layers and from itself, lazy imports inside functions included."""
import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "nnunet_scribble"

# bottom to top; the packages of one layer do not import each other (except in the base and entry layers)
LAYERS = [
    ("base", {"errors", "files", "image_io", "volume", "geometry", "crop_marks", "arguments", "__init__"}),
    ("tools", {"conversion", "evaluation", "visualization", "selection"}),
    ("blocks", {"losses", "networks", "targets"}),
    ("stages", {"sam"}),
    ("training", {"training"}),
    ("entry", {"trainers", "ext_trainers", "cli", "demo"}),
]
LAYER_OF = {unit: i for i, (_, units) in enumerate(LAYERS) for unit in units}
PEERS_MAY_IMPORT_EACH_OTHER = {"base", "entry"}


def unit_of(module: str) -> str:
    """``nnunet_scribble.sam.data`` -> ``sam``; ``nnunet_scribble`` and its attributes (``__version__``) ->
    ``__init__``."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[1] in LAYER_OF else "__init__"


def imports(path: Path):
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("nnunet_scribble"):
            if node.module == "nnunet_scribble":
                yield from (f"nnunet_scribble.{a.name}" for a in node.names)
            else:
                yield node.module
        elif isinstance(node, ast.Import):
            yield from (a.name for a in node.names if a.name.startswith("nnunet_scribble"))


def test_every_package_is_in_a_layer():
    units = {p.stem if p.is_file() else p.name for p in PACKAGE.iterdir()
             if (p.suffix == ".py" or (p.is_dir() and (p / "__init__.py").exists()))}
    assert units - set(LAYER_OF) == set(), "add the new package to LAYERS (and docs/architecture.md)"


def test_no_module_imports_upward_or_sideways():
    wrong = []
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE)
        src = rel.parts[0] if len(rel.parts) > 1 else rel.stem
        for module in imports(path):
            dst = unit_of(module)
            if dst == src:
                continue
            ls, ld = LAYER_OF[src], LAYER_OF[dst]
            if ld > ls or (ld == ls and LAYERS[ls][0] not in PEERS_MAY_IMPORT_EACH_OTHER):
                wrong.append(f"{rel} ({LAYERS[ls][0]}) imports {module} ({LAYERS[ld][0]})")
    assert wrong == []
