"""Stage A embedding cache on the tiny preprocessed dataset with the tiny SAM."""
from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pytest

from nnunet_scribble.sam.backends import load_backend
from nnunet_scribble.sam.cache import EmbeddingCache
from nnunet_scribble.sam.data import PreprocessedDataset
from nnunet_scribble.sam.testing import TINY_SPEC, write_tiny_sam


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _cache(name, ckpt, **kw):
    ds = PreprocessedDataset(name, "2d")
    return ds, EmbeddingCache(ds, load_backend("vit_b", ckpt, device="cpu"), **kw)


def test_cache_hit_and_resume_after_a_partial_write(tiny_copy):
    root, name = tiny_copy
    ckpt = write_tiny_sam(str(root / "tiny.pth"))
    ds, cache = _cache(name, ckpt)
    cases = ds.identifiers
    stats = cache.ensure(cases, progress=False, log=lambda m: None)
    assert stats["cases_encoded"] == len(cases) == 8 and stats["slices_encoded"] == 8
    grid = TINY_SPEC.image_size // TINY_SPEC.patch_size
    emb = cache.load(cases[0])
    assert emb.dtype == np.float16 and emb.shape == (1, TINY_SPEC.prompt_embed_dim, grid, grid)
    manifest = json.load(open(cache.manifest_file))
    assert manifest["backend"]["checkpoint_sha256"] == cache.backend.checkpoint_sha256
    assert manifest["params"]["slice_axis"] == 0 and set(manifest["cases"]) == set(cases)
    assert f"sam_embeddings{os.sep}nnUNetPlans_2d{os.sep}vit_b-" in cache.folder

    # hit: nothing encoded, files untouched
    mtimes = {c: os.stat(cache.case_file(c)).st_mtime_ns for c in cases}
    again = cache.ensure(cases, progress=False, log=lambda m: None)
    assert again["cases_encoded"] == 0 and again["cases_cached"] == 8
    assert all(os.stat(cache.case_file(c)).st_mtime_ns == mtimes[c] for c in cases)

    # a run killed while writing case 3: its temp file exists, the case is neither renamed nor in the manifest
    victim = cases[3]
    expected = np.array(cache.load(victim))
    os.remove(cache.case_file(victim))
    del manifest["cases"][victim]
    json.dump(manifest, open(cache.manifest_file, "w"))
    with open(os.path.join(cache.folder, f".{victim}.tmp999.npy"), "wb") as f:
        f.write(b"\x93NUMPY partial")
    _, fresh = _cache(name, ckpt)
    resumed = fresh.ensure(cases, progress=False, log=lambda m: None)
    assert resumed["cases_encoded"] == 1 and resumed["cases_cached"] == 7
    assert not [n for n in os.listdir(cache.folder) if ".tmp" in n]
    np.testing.assert_array_equal(np.array(fresh.load(victim)), expected)
    assert all(os.stat(cache.case_file(c)).st_mtime_ns == mtimes[c] for c in cases if c != victim)


def test_encoder_batch_defaults_to_one_slice_on_the_cpu_and_four_on_a_gpu(tiny_copy):
    """On the CPU batching made LiteMedSAM's encoder ~2x slower per slice (benchmarks/results)."""
    from types import SimpleNamespace

    root, name = tiny_copy
    ds, cache = _cache(name, write_tiny_sam(str(root / "tiny.pth")))
    assert cache.batch_size == 1
    gpu = SimpleNamespace(device="cuda:0", key="gpu-backend")
    assert EmbeddingCache(ds, gpu).batch_size == 4
    assert EmbeddingCache(ds, gpu, batch_size=2).batch_size == 2


def test_cache_invalidation(tiny_copy):
    root, name = tiny_copy
    ckpt = write_tiny_sam(str(root / "tiny.pth"))
    ds, cache = _cache(name, ckpt)
    cases = ds.identifiers
    cache.ensure(cases, progress=False, log=lambda m: None)

    # another checkpoint: its own cache (keyed by content hash), encoded from scratch
    _, other = _cache(name, write_tiny_sam(str(root / "tiny2.pth"), seed=1))
    assert other.folder != cache.folder
    assert other.ensure(cases, progress=False, log=lambda m: None)["cases_encoded"] == 8
    # the same checkpoint content under another file name: the same cache
    shutil.copy(ckpt, root / "copy.pth")
    _, same = _cache(name, str(root / "copy.pth"))
    assert same.folder == cache.folder and same.ensure(cases, progress=False, log=lambda m: None)["cases_encoded"] == 0

    # other encoding parameters: everything re-encoded, in place
    messages = []
    _, pct = _cache(name, ckpt, percentiles=(1.0, 99.0))
    assert pct.folder == cache.folder
    assert pct.ensure(cases, progress=False, log=messages.append)["cases_encoded"] == 8
    assert any("re-encoding everything" in m for m in messages)

    # preprocessing changed for one case: only that case is re-encoded
    import blosc2

    path = os.path.join(ds.folder, cases[2] + ".b2nd")
    data = blosc2.open(urlpath=path, mode="r")[:]
    os.remove(path)
    blosc2.asarray(np.ascontiguousarray(data[..., ::-1]), urlpath=path)
    _, changed = _cache(name, ckpt, percentiles=(1.0, 99.0))
    stats = changed.ensure(cases, progress=False, log=lambda m: None)
    assert stats["cases_encoded"] == 1 and stats["cases_cached"] == 7


def test_label_maps_round_trip_along_any_slice_axis(tiny_copy):
    """3D configurations slice along the largest-spacing axis; PLs are stacked back into the volume."""
    import blosc2

    root, name = tiny_copy
    ds = PreprocessedDataset(name, "2d")
    case = ds.identifiers[0]
    spatial = ds.load_case(case).spatial_shape
    out = root / "pl"
    out.mkdir()
    for axis in (0, 1, 2):
        ds.slice_axis = axis
        cs = ds.load_case(case)
        assert cs.image.shape == (spatial[axis],) + tuple(s for i, s in enumerate(spatial) if i != axis)
        slices = (np.arange(cs.scribbles.size) % 4).reshape(cs.scribbles.shape).astype(np.int16)
        path = ds.write_label_map(str(out), case, slices)
        stored = blosc2.open(urlpath=path, mode="r")[:]
        assert stored.shape == tuple(spatial) and stored.dtype == np.int16
        np.testing.assert_array_equal(ds.read_label_map(str(out), case), slices)
        np.testing.assert_array_equal(np.moveaxis(stored, axis, 0), slices)
    assert not [n for n in os.listdir(out) if ".tmp" in n]


def test_a_job_waiting_for_the_cache_lock_says_who_holds_it(tiny_copy):
    """Waiting for another process's SAM lock used to print nothing for minutes."""
    import socket
    import threading
    import time

    from nnunet_scribble.files import locked

    root, name = tiny_copy
    ds, cache = _cache(name, write_tiny_sam(str(root / "tiny.pth")))
    entered, release = threading.Event(), threading.Event()

    def hold():
        with locked(os.path.join(cache.folder, ".lock"), "test", log=lambda m: None):
            entered.set()
            release.wait(60)

    holder = threading.Thread(target=hold)
    holder.start()
    assert entered.wait(30)
    messages = []
    threading.Timer(3.0, release.set).start()
    start = time.time()
    stats = cache.ensure(ds.identifiers, progress=False, log=messages.append)
    holder.join()
    assert time.time() - start >= 2.5 and stats["cases_encoded"] == 8
    waits = [m for m in messages if "waiting for the lock" in m]
    assert len(waits) == 1, messages
    assert waits[0].startswith("[sam] waiting for the lock on the SAM embedding cache")
    assert f"held by pid {os.getpid()} on host {socket.gethostname()} since" in waits[0]
