"""Overlay PNGs: image + scribbles, and any of prediction / pseudo-label / dense labels, per case.

One PNG per case, ``<case>.png``: a few slices (rows) chosen where the labels are, one column per map.
The first column is the image with the scribbles: every class opaque (background too), drawn one pixel
thicker than it is so thin strokes survive the PNG's resolution, and the ignore value transparent
(nnU-Net's ``plot_overlay_pngs`` tints every ignore pixel, which covers a whole ACDC image and hides the
scribbles). The other columns tint the foreground classes of the prediction, pseudo-label and dense
labels over the image; background stays untinted. Slices are cut along the axis with the coarsest
spacing (the through-plane axis of cardiac MR), spread evenly over the slices with foreground
scribbles (without scribbles: with foreground in any map shown).

Files are read with the reader nnU-Net uses for the dataset (``dataset.json``'s ``file_ending``), so any
format nnU-Net reads works; every map must have its image's shape. PNGs are written to a temporary name
and renamed; an existing PNG is never replaced unless ``overwrite``.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from nnunet_scribble.errors import UserFacingError
from nnunet_scribble.files import atomic_write
from nnunet_scribble.geometry import display_slice_axis

# scribble colours: background, then one per foreground class (cycled); RGB in [0, 1]
PALETTE = np.array([[1.00, 0.85, 0.10], [0.90, 0.15, 0.15], [0.15, 0.80, 0.25], [0.20, 0.45, 1.00],
                    [0.85, 0.30, 0.90], [0.10, 0.85, 0.85], [1.00, 0.55, 0.10], [0.60, 0.40, 0.20]])
TINT_ALPHA = 0.5


def colour(c: int) -> np.ndarray:
    return PALETTE[0] if c == 0 else PALETTE[1 + (c - 1) % (len(PALETTE) - 1)]


@dataclass
class Dataset:
    """What the overlays need from an nnU-Net raw dataset folder."""
    folder: Path
    file_ending: str
    class_names: dict[int, str]          # label value -> name, background included, ignore excluded
    ignore: int | None
    dataset_json: dict

    @classmethod
    def open(cls, folder: Path) -> "Dataset":
        dataset_json = folder / "dataset.json"
        if not dataset_json.is_file():
            raise UserFacingError(f"{dataset_json} not found: -d must be an nnU-Net raw dataset folder "
                                  "(DatasetXXX_Name with dataset.json, imagesTr, labelsTr).")
        dj = json.loads(dataset_json.read_text())
        labels = dj.get("labels", {})
        ignore = labels.get("ignore")
        names = {}
        for name, value in labels.items():
            if name != "ignore":
                v = max(value) if isinstance(value, (list, tuple)) else int(value)   # regions: their top value
                names[v] = name
        return cls(folder, dj.get("file_ending", ".nii.gz"), dict(sorted(names.items())), ignore, dj)

    @property
    def num_classes(self) -> int:
        return max(self.class_names) + 1

    def cases(self, split: str = "Tr") -> list[str]:
        suffix = "_0000" + self.file_ending
        folder = self.folder / f"images{split}"
        return sorted(p.name[: -len(suffix)] for p in folder.glob("*" + suffix)) if folder.is_dir() else []

    def image_file(self, case: str) -> tuple[Path, str]:
        """(channel-0 image file, split "Tr"/"Ts") of ``case``."""
        for split in ("Tr", "Ts"):
            f = self.folder / f"images{split}" / f"{case}_0000{self.file_ending}"
            if f.is_file():
                return f, split
        raise UserFacingError(f"case {case!r}: no image {case}_0000{self.file_ending} in {self.folder / 'imagesTr'} "
                              f"or {self.folder / 'imagesTs'}. Check the case name (a file name without "
                              f"_0000{self.file_ending}).")

    def read(self, path: Path) -> tuple[np.ndarray, tuple]:
        """(3D array, spacing) of one file, as nnU-Net reads it."""
        from nnunetv2.imageio.reader_writer_registry import determine_reader_writer_from_dataset_json

        io = determine_reader_writer_from_dataset_json(self.dataset_json, str(path), verbose=False)()
        try:
            data, props = io.read_images((str(path),))
        except Exception as e:   # the readers raise anything from RuntimeError to OSError
            raise UserFacingError(f"{path}: cannot read it ({' '.join(str(e).split())[-200:]}).") from None
        return data[0], tuple(props["spacing"])


def choose_slices(maps: list[np.ndarray], axis: int, n: int, num_classes: int) -> list[int]:
    """``n`` slice indices along ``axis`` spread evenly over those where any map has foreground
    (classes 1..num_classes-1); without foreground, over the slices with any annotated class (a
    background scribble); without either, the middle slice."""
    def per_slice(condition) -> np.ndarray:
        other = tuple(a for a in range(maps[0].ndim) if a != axis)
        return np.flatnonzero(np.any([condition(m).any(axis=other) for m in maps], axis=0))

    found = per_slice(lambda m: (m > 0) & (m < num_classes))
    if not len(found):
        found = per_slice(lambda m: (m >= 0) & (m < num_classes))
    if not len(found):
        return [maps[0].shape[axis] // 2]
    picks = np.linspace(0, len(found) - 1, min(n, len(found))).round().astype(int)
    return sorted({int(found[i]) for i in picks})


def grey(image: np.ndarray) -> np.ndarray:
    """2D intensities scaled to [0, 1] between their 0.5 and 99.5 percentiles."""
    lo, hi = np.percentile(image, (0.5, 99.5))
    return np.clip((image - lo) / (hi - lo), 0, 1) if hi > lo else np.zeros(image.shape)


def thicken(scribble: np.ndarray, num_classes: int) -> np.ndarray:
    """Scribbles grown by one pixel into unannotated pixels, for display."""
    from scipy import ndimage

    out = scribble.copy()
    free = (scribble < 0) | (scribble >= num_classes)
    for c in range(num_classes):
        grown = ndimage.binary_dilation(scribble == c) & free
        out[grown] = c
        free &= ~grown
    return out


def draw_scribbles(image01: np.ndarray, scribble: np.ndarray, num_classes: int) -> np.ndarray:
    """RGB: the image with every scribbled class opaque (background included); anything else (the ignore
    value) shows the image."""
    rgb = np.repeat(image01[..., None], 3, axis=-1).astype(np.float32)
    shown = thicken(scribble, num_classes)
    for c in range(num_classes):
        rgb[shown == c] = colour(c)
    return rgb


def tint_labels(image01: np.ndarray, label: np.ndarray, num_classes: int, alpha: float = TINT_ALPHA) -> np.ndarray:
    """RGB: the image with foreground classes blended in at ``alpha``; background and anything else untinted."""
    rgb = np.repeat(image01[..., None], 3, axis=-1).astype(np.float32)
    for c in range(1, num_classes):
        m = label == c
        rgb[m] = (1 - alpha) * rgb[m] + alpha * colour(c)
    return rgb


def case_panels(ds: Dataset, case: str, maps: dict[str, Path], n_slices: int
                ) -> tuple[list[int], list[str], list[list[np.ndarray]]]:
    """(slice indices, column titles, rows of RGB panels) for one case; ``maps``: title -> label file,
    a title starting with "scribbles" drawn as scribbles, the others tinted."""
    image_file, _ = ds.image_file(case)
    image, spacing = ds.read(image_file)
    arrays = {}
    for title, path in maps.items():
        arr, _ = ds.read(path)
        if arr.shape != image.shape:
            raise UserFacingError(f"{path} has shape {arr.shape}, its image {image_file} {image.shape}: a label "
                                  "map must have its image's shape (is it a file of another case or geometry?).")
        arrays[title] = np.rint(arr).astype(np.int32)
    axis = display_slice_axis(spacing, image.shape)
    scribbles = [a for t, a in arrays.items() if t.startswith("scribbles")]
    slices = choose_slices(scribbles or list(arrays.values()) or [np.zeros(image.shape, np.int32)], axis,
                           n_slices, ds.num_classes)
    rows = []
    for z in slices:
        im = grey(np.take(image, z, axis=axis).astype(np.float64))
        row = [np.repeat(im[..., None], 3, axis=-1)] if not any(t.startswith("scribbles") for t in arrays) else []
        for title, arr in arrays.items():
            sl = np.take(arr, z, axis=axis)
            row.append(draw_scribbles(im, sl, ds.num_classes) if title.startswith("scribbles")
                       else tint_labels(im, sl, ds.num_classes))
        rows.append(row)
    titles = ([] if any(t.startswith("scribbles") for t in arrays) else ["image"]) + list(arrays)
    return slices, titles, rows


def write_case_png(path: Path, case: str, axis_name: str, slices: list[int], titles: list[str],
                   rows: list[list[np.ndarray]], class_names: dict[int, str], dpi: int = 80) -> Path:
    import matplotlib

    matplotlib.use("agg")
    import matplotlib.pyplot as plt

    h, w = rows[0][0].shape[:2]
    cell = 2.6
    fig, axes = plt.subplots(len(rows), len(titles), squeeze=False,
                             figsize=(cell * len(titles), cell * h / w * len(rows) + 0.9))
    for r, (z, row) in enumerate(zip(slices, rows)):
        for c, panel in enumerate(row):
            ax = axes[r][c]
            ax.imshow(panel, interpolation="nearest")
            ax.set_xticks([]), ax.set_yticks([])
            if r == 0:
                ax.set_title(titles[c], fontsize=8)
            if c == 0:
                ax.set_ylabel(f"{axis_name} {z}", fontsize=8)
    handles = [plt.Rectangle((0, 0), 1, 1, color=colour(v)) for v in class_names]
    labels = [f"{n} ({v})" for v, n in class_names.items()]
    fig.legend(handles, labels, loc="lower center", ncol=len(labels), fontsize=7, frameon=False,
               title="scribbles: all classes, one pixel thicker; unlabeled transparent. labels: foreground tinted",
               title_fontsize=7)
    fig.suptitle(case, fontsize=9)
    fig.tight_layout(rect=(0, 0.55 / fig.get_figheight(), 1, 1))
    try:
        atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=dpi))
    finally:
        plt.close(fig)
    return path


def write_overlays(dataset: Path, output: Path, cases: list[str] | None = None, pred: Path | None = None,
                   pseudo: Path | None = None, dense: Path | None = None, n_slices: int = 3,
                   overwrite: bool = False, echo=print) -> list[Path]:
    """``output/<case>.png`` for each case (default: the cases of ``pred``, else every training case).

    Per case: its scribbles (``labelsTr``, training cases), then the prediction (``pred``), the
    pseudo-label (``pseudo``) and the dense labels (``dense``, default ``labelsTr_dense`` for training
    and ``labelsTs`` for test cases, where the file exists)."""
    ds = Dataset.open(Path(dataset))
    ending = ds.file_ending
    for what, folder in (("--pred", pred), ("--pseudo", pseudo), ("--dense", dense)):
        if folder is not None and not Path(folder).is_dir():
            raise UserFacingError(f"{what} {folder}: not a folder.")
    if cases is None:
        cases = (sorted(p.name[: -len(ending)] for p in Path(pred).glob("*" + ending)) if pred is not None
                 else ds.cases("Tr"))
        if not cases:
            where = pred if pred is not None else ds.folder / "imagesTr"
            raise UserFacingError(f"no case files (*{ending}) in {where}.")
    jobs = []
    for case in cases:
        _, split = ds.image_file(case)
        maps: dict[str, Path] = {}
        if split == "Tr" and (ds.folder / "labelsTr" / f"{case}{ending}").is_file():
            maps["scribbles (labelsTr)"] = ds.folder / "labelsTr" / f"{case}{ending}"
        default_dense = ds.folder / ("labelsTr_dense" if split == "Tr" else "labelsTs")
        for title, folder, required in (("prediction", pred, True), ("pseudo-label", pseudo, True),
                                        ("dense labels", dense or default_dense, dense is not None)):
            f = Path(folder) / f"{case}{ending}" if folder is not None else None
            if f is not None and f.is_file():
                maps[f"{title} ({Path(folder).name})"] = f
            elif f is not None and required:
                raise UserFacingError(f"{f} not found: the {title} folder {folder} has no file for case {case}.")
        jobs.append((case, maps))
    output = Path(output)
    targets = [output / f"{case}.png" for case, _ in jobs]
    existing = [t for t in targets if t.exists()]
    if existing and not overwrite:
        raise UserFacingError(f"{existing[0]} already exists ({len(existing)} of the {len(targets)} PNGs do): "
                              "choose another -o folder, or pass --overwrite to replace them. Nothing was written.")
    output.mkdir(parents=True, exist_ok=True)
    written = []
    for (case, maps), target in zip(jobs, targets):
        slices, titles, rows = case_panels(ds, case, maps, n_slices)
        write_case_png(target, case, "slice", slices, titles, rows, ds.class_names)
        echo(f"{target}: {', '.join(titles)}; slices {', '.join(map(str, slices))}")
        written.append(target)
    return written
