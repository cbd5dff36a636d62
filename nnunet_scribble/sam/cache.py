"""Stage A: frozen image-encoder embeddings of every slice, cached on disk once per dataset + configuration
+ backend checkpoint and shared by all folds (the encoder is never fine-tuned).

Layout: ``$nnUNet_preprocessed/<dataset>/sam_embeddings/<data identifier>/<backend>-<sha12>/``
with ``<case>.npy`` (float16, (slices, C, h, w)) and ``manifest.json``:

- ``backend``: name, full checkpoint SHA-256, encoder input size and normalisation;
- ``params``: slice axis, image channel, intensity percentiles, format version;
- ``cases``: per case the content hash of its preprocessed image, slice count and slice shape.

A case is reused only if its file exists and its image hash matches; a different backend/checkpoint
gives a different folder; different ``params`` (or a format change) empty the folder first. Each case
file is written to a temporary name and renamed (``os.replace``), the manifest after it, so a run killed
mid-way resumes with the finished cases. A file lock serialises the encoding of parallel jobs (e.g. five
fold jobs sharing ``nnUNet_preprocessed``): a job that needs uncached cases waits for the lock, then
encodes only what is still missing; a job whose cases are all cached does not wait.
"""
from __future__ import annotations

import json
import os
import time
from typing import Iterable, Optional

import numpy as np

from nnunet_scribble.files import atomic_write, atomic_write_json, locked
from nnunet_scribble.sam.data import PreprocessedDataset

CACHE_FORMAT = 1
DEFAULT_PERCENTILES = (0.5, 99.5)


def scale_slices(image: np.ndarray, percentiles=DEFAULT_PERCENTILES) -> np.ndarray:
    """Per-slice percentile scaling of (n, H, W) intensities to [0, 1] (constant slices -> 0)."""
    out = np.zeros(image.shape, np.float32)
    for i, sl in enumerate(image):
        lo, hi = np.percentile(sl, percentiles)
        if hi > lo:
            out[i] = np.clip((sl - lo) / (hi - lo), 0.0, 1.0)
    return out


def cache_folder_of(dataset: PreprocessedDataset, backend) -> str:
    return os.path.join(dataset.base, "sam_embeddings", dataset.data_identifier, backend.key)


class EmbeddingCache:
    def __init__(self, dataset: PreprocessedDataset, backend, channel: int = 0,
                 percentiles=DEFAULT_PERCENTILES, batch_size: Optional[int] = None):
        self.dataset = dataset
        self.backend = backend
        # None: 4 slices per encoder call on a GPU, 1 on the CPU, where batching made LiteMedSAM's encoder
        # about 2x slower per slice (measured: 2.5-3.0 s single vs 4.8-5.0 s per slice in batches of 4)
        self.batch_size = batch_size or (4 if str(getattr(backend, "device", "cpu")).startswith("cuda") else 1)
        self.params = {"format": CACHE_FORMAT, "slice_axis": dataset.slice_axis, "channel": int(channel),
                       "percentiles": [float(p) for p in percentiles]}
        self.folder = cache_folder_of(dataset, backend)
        self.manifest_file = os.path.join(self.folder, "manifest.json")
        self._fingerprints: dict[str, str] = {}

    # ---- manifest ---------------------------------------------------------------------------
    def _empty_manifest(self) -> dict:
        return {"backend": self.backend.identity(), "checkpoint": self.backend.checkpoint,
                "dataset": self.dataset.name, "configuration": self.dataset.configuration,
                "data_identifier": self.dataset.data_identifier, "params": self.params, "cases": {}}

    def _raw_manifest(self) -> Optional[dict]:
        if not os.path.isfile(self.manifest_file):
            return None
        try:
            with open(self.manifest_file) as f:
                return json.load(f)
        except (OSError, ValueError):
            return None

    def _is_current(self, manifest: Optional[dict]) -> bool:
        return (manifest is not None and manifest.get("params") == self.params
                and manifest.get("backend") == self.backend.identity())

    def read_manifest(self) -> dict:
        """The manifest, or an empty one if there is none or it was made with other parameters/checkpoint."""
        m = self._raw_manifest()
        return m if self._is_current(m) else self._empty_manifest()

    def fingerprint(self, case: str) -> str:
        if case not in self._fingerprints:
            self._fingerprints[case] = self.dataset.image_fingerprint(case, self.params["channel"])
        return self._fingerprints[case]

    def case_file(self, case: str) -> str:
        return os.path.join(self.folder, case + ".npy")

    def is_cached(self, case: str, manifest: Optional[dict] = None) -> bool:
        manifest = manifest if manifest is not None else self.read_manifest()
        entry = manifest["cases"].get(case)
        return bool(entry) and entry.get("fingerprint") == self.fingerprint(case) and os.path.isfile(self.case_file(case))

    # ---- stage A ------------------------------------------------------------------------------
    def ensure(self, cases: Iterable[str], progress: bool = True, log=print) -> dict:
        """Encode every case of ``cases`` that is not cached yet; returns timing statistics."""
        from tqdm import tqdm

        cases = list(cases)
        os.makedirs(self.folder, exist_ok=True)
        manifest = self.read_manifest()       # fast path without the lock (the manifest is replaced atomically)
        if all(self.is_cached(c, manifest) for c in cases):
            return {"cases_cached": len(cases), "cases_encoded": 0, "slices_encoded": 0, "encode_seconds": 0.0}
        with locked(os.path.join(self.folder, ".lock"), f"the SAM embedding cache {self.folder}",
                    log=lambda m: log(f"[sam] {m}")):
            raw = self._raw_manifest()
            if raw is not None and not self._is_current(raw):
                log(f"[sam] embedding cache {self.folder}: made with other parameters, re-encoding everything")
                for name in os.listdir(self.folder):
                    if name.endswith(".npy"):
                        os.remove(os.path.join(self.folder, name))
                os.remove(self.manifest_file)
            manifest = self.read_manifest()
            for name in os.listdir(self.folder):      # leftovers of a killed run
                if ".tmp" in name:
                    os.remove(os.path.join(self.folder, name))
            todo = [c for c in cases if not self.is_cached(c, manifest)]
            stats = {"cases_cached": len(cases) - len(todo), "cases_encoded": len(todo), "slices_encoded": 0,
                     "encode_seconds": 0.0}
            if not todo:
                return stats
            n_slices = sum(self._n_slices(c) for c in todo)
            log(f"[sam] stage A: encoding {n_slices} slices of {len(todo)} case(s) with {self.backend.name} "
                f"-> {self.folder}")
            bar = tqdm(total=n_slices, unit="slice", desc="SAM embeddings", disable=not progress)
            start = time.time()
            for c in todo:
                cs = self.dataset.load_case(c, self.params["channel"])
                images = scale_slices(cs.image, self.params["percentiles"])
                parts = []
                for i in range(0, len(images), self.batch_size):
                    parts.append(self.backend.encode(images[i:i + self.batch_size]).numpy().astype(np.float16))
                    bar.update(len(images[i:i + self.batch_size]))
                emb = np.concatenate(parts)
                atomic_write(self.case_file(c), lambda tmp: np.save(tmp, emb))
                manifest["cases"][c] = {"fingerprint": self.fingerprint(c), "n_slices": int(len(images)),
                                        "slice_shape": list(images.shape[1:]), "embedding_shape": list(emb.shape[1:])}
                atomic_write_json(self.manifest_file, manifest)
                stats["slices_encoded"] += len(images)
            bar.close()
            stats["encode_seconds"] = time.time() - start
            return stats

    def _n_slices(self, case: str) -> int:
        ds = self.dataset.dataset_class(self.dataset.folder, [case])
        return int(ds.load_case(case)[0].shape[1 + self.dataset.slice_axis])

    def load(self, case: str) -> np.ndarray:
        """(slices, C, h, w) float16 embeddings of a cached case (memory-mapped)."""
        return np.load(self.case_file(case), mmap_mode="r")
