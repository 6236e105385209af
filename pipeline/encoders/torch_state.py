"""Read a PyTorch state dict saved in the legacy (pre-zip) format into numpy arrays, without torch.

A legacy `.pth` file is five pickles in a row (a magic number, the format version, system information, the
object, the list of its storages' keys) followed by each storage's raw bytes. Loading a pickle runs whatever
callables it names, so the object's pickle is read with an unpickler that maps exactly the globals a plain
state dict of float and integer tensors needs and refuses every other one. The file's sha256 is checked first.
"""

from __future__ import annotations

import hashlib
import io
import pickle
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from pipeline.common.errors import StageError

MAGIC_NUMBER = 0x1950A86A20F9469CFC6C
PROTOCOL_VERSION = 1001
STORAGE_TYPES = {"FloatStorage": np.dtype("<f4"), "LongStorage": np.dtype("<i8")}


class UnsafePickleError(StageError):
    """The file names a global that a plain state dict does not need: it is not read."""


@dataclass
class _Storage:
    """A storage the object pickle refers to; its bytes come after the pickles."""

    key: str
    dtype: np.dtype
    numel: int
    data: np.ndarray | None = None


@dataclass
class _TensorRef:
    """A tensor as a view of a storage, resolved once the storages are read."""

    storage: _Storage
    offset: int
    size: tuple[int, ...]
    stride: tuple[int, ...]

    def array(self) -> np.ndarray:
        if self.storage.data is None:
            raise StageError(f"storage {self.storage.key} was never read")
        itemsize = self.storage.dtype.itemsize
        if self.size and self.offset + sum((n - 1) * s for n, s in zip(self.size, self.stride, strict=True)) \
                >= self.storage.numel:
            raise StageError(f"a tensor reaches past the end of storage {self.storage.key}")
        view = np.lib.stride_tricks.as_strided(self.storage.data[self.offset:], shape=self.size,
                                               strides=tuple(s * itemsize for s in self.stride), writeable=False)
        return np.array(view)


def _rebuild_tensor_v2(storage: _Storage, offset: int, size: tuple, stride: tuple, requires_grad: bool,
                       hooks: Any, metadata: Any = None) -> _TensorRef:
    return _TensorRef(storage, int(offset), tuple(int(n) for n in size), tuple(int(s) for s in stride))


class _StorageType:
    """Stands in for `torch.FloatStorage` and its kin: only its name and dtype are used."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.dtype = STORAGE_TYPES[name]


ALLOWED_GLOBALS = {
    ("collections", "OrderedDict"): OrderedDict,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor_v2,
    **{("torch", name): _StorageType(name) for name in STORAGE_TYPES},
}


class _StateDictUnpickler(pickle.Unpickler):
    def __init__(self, file: BinaryIO, path: Path) -> None:
        super().__init__(file)
        self.path = path
        self.storages: dict[str, _Storage] = {}

    def find_class(self, module: str, name: str) -> Any:
        try:
            return ALLOWED_GLOBALS[(module, name)]
        except KeyError:
            raise UnsafePickleError(
                f"{self.path} names {module}.{name}, which a state dict of tensors does not need; it was not "
                f"loaded (allowed: {', '.join(f'{m}.{n}' for m, n in ALLOWED_GLOBALS)})") from None

    def persistent_load(self, pid: Any) -> _Storage:
        if not (isinstance(pid, tuple) and len(pid) >= 5 and pid[0] == "storage"
                and isinstance(pid[1], _StorageType)):
            raise StageError(f"{self.path}: unexpected persistent id {pid!r}")
        _, kind, key, _location, numel = pid[:5]
        if key not in self.storages:
            self.storages[key] = _Storage(str(key), kind.dtype, int(numel))
        return self.storages[key]


class _PlainUnpickler(pickle.Unpickler):
    """For the header pickles and the key list: no global at all."""

    def __init__(self, file: BinaryIO, path: Path) -> None:
        super().__init__(file)
        self.path = path

    def find_class(self, module: str, name: str) -> Any:
        raise UnsafePickleError(f"{self.path}: a header pickle names {module}.{name}; it was not loaded")


def sha256_file(path: Path) -> str:
    """The hex sha256 of a file."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def read_state_dict(path: Path, sha256: str | None = None) -> dict[str, np.ndarray]:
    """Read a legacy-format PyTorch state dict as {name: array}, refusing any pickle global but a plain state dict's.

    Args:
        path: the `.pth` file.
        sha256: the digest the file must have; None skips the check (tests that write their own files).

    Returns:
        The tensors by name, in file order, as float32 or int64 arrays.

    Raises:
        StageError: the digest differs, the file is not in the legacy format, or it is truncated.
        UnsafePickleError: it names a global outside `ALLOWED_GLOBALS`.
    """
    path = Path(path)
    if sha256 is not None and (found := sha256_file(path)) != sha256:
        raise StageError(f"{path}: sha256 {found} where {sha256} was expected; reinstall the package that ships it")
    with open(path, "rb") as handle:
        raw = handle.read()
    file = io.BytesIO(raw)
    try:
        magic = _PlainUnpickler(file, path).load()
        version = _PlainUnpickler(file, path).load()
        if magic != MAGIC_NUMBER or version != PROTOCOL_VERSION:
            raise StageError(f"{path} is not a PyTorch file in the legacy format (magic {magic!r}, version "
                             f"{version!r}); save it with torch.save(..., _use_new_zipfile_serialization=False)")
        info = _PlainUnpickler(file, path).load()
        if not (isinstance(info, dict) and info.get("little_endian", False)):
            raise StageError(f"{path}: only little-endian files are read (system info {info!r})")
        objects = _StateDictUnpickler(file, path)
        state = objects.load()
        keys = _PlainUnpickler(file, path).load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError) as exc:
        raise StageError(f"{path} is not a readable PyTorch state dict: {type(exc).__name__}: {exc}") from None
    if not isinstance(state, OrderedDict | dict):
        raise StageError(f"{path} holds a {type(state).__name__}, not a state dict")
    position = file.tell()
    for key in keys:
        storage = objects.storages.get(key)
        if storage is None:
            raise StageError(f"{path}: storage {key} is listed but no tensor uses it")
        (numel,) = np.frombuffer(raw, "<i8", 1, position)
        nbytes = int(numel) * storage.dtype.itemsize
        if int(numel) != storage.numel or position + 8 + nbytes > len(raw):
            raise StageError(f"{path}: storage {key} is truncated or its size disagrees")
        storage.data = np.frombuffer(raw, storage.dtype, int(numel), position + 8)
        position += 8 + nbytes
    tensors = {}
    for name, value in state.items():
        if not isinstance(value, _TensorRef):
            raise StageError(f"{path}: entry {name!r} is a {type(value).__name__}, not a tensor")
        tensors[str(name)] = value.array()
    return tensors
