"""Reading weight files without running code from them.

`torch.load(weights_only=True)` refuses a whole file when one object in it is of a class outside
torch's allow-list, as the hyper-parameters a Lightning trainer saves beside the weights often
are (a TAO spec object, say). `read_weights_only` reads such files too: each foreign class is
replaced by an inert placeholder, so nothing but tensors and plain containers is rebuilt and no
foreign code runs.

detectron2's own `.pkl` weight files (Mask2Former's model zoo: a pickled dict of numpy arrays) are
read by an unpickler that knows nothing but numpy arrays and plain containers.
"""

from __future__ import annotations

import importlib
import pickle
from pathlib import Path

import numpy as np
import torch

from oneseg.errors import CheckpointError


class Placeholder:
    """Stands for an object of a class this program does not load: takes anything, does nothing."""

    def __new__(cls, *args, **kwargs):
        return object.__new__(cls)

    def __init__(self, *args, **kwargs):
        pass

    def __setstate__(self, state):
        pass

    def __repr__(self) -> str:
        return f"<{type(self).__name__}>"


def read_weights_only(path: str | Path):
    """The object saved in a torch file (or the tensors of a .safetensors file), weights-only."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"weights not found: {path}")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    if path.suffix == ".pkl":
        return read_numpy_pickle(path)
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except (OSError, MemoryError):
        raise
    except pickle.UnpicklingError as err:
        try:
            foreign = torch.serialization.get_unsafe_globals_in_checkpoint(path)
        except Exception:  # noqa: BLE001 - not a zip checkpoint: report the first error
            foreign = []
        if not foreign:
            # torch's message opens with advice on weights_only; the cause follows this mark
            _, found, cause = str(err).partition("WeightsUnpickler error:")
            lines = [line.strip() for line in (cause if found else str(err)).splitlines()]
            reason = next((line for line in lines if line), "unpickling failed")
            raise CheckpointError(
                f"{path}: not a weights file torch can read weights-only ({reason})"
            ) from None
    except Exception as err:  # noqa: BLE001 - arbitrary bytes fail anywhere in the unpickler
        raise CheckpointError(
            f"{path}: not a weights file torch can read weights-only ({type(err).__name__}: {err})"
        ) from None
    stand_ins = [(type(f"Placeholder[{name}]", (Placeholder,), {}), name) for name in foreign]
    with torch.serialization.safe_globals(stand_ins):
        return torch.load(path, map_location="cpu", weights_only=True)


# What a detectron2 `.pkl` may hold: numpy arrays (and scalars) in plain containers.
_NUMPY_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"),
    ("numpy._core.multiarray", "scalar"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("_codecs", "encode"),
    ("collections", "OrderedDict"),
}


class _NumpyUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str):
        if (module, name) not in _NUMPY_GLOBALS:
            raise pickle.UnpicklingError(f"{module}.{name} has no place in a weights file")
        if module.startswith("numpy.core."):  # numpy 1 names, numpy 2 module
            module = "numpy._core." + module[len("numpy.core.") :]
        return getattr(importlib.import_module(module), name)


def read_numpy_pickle(path: Path) -> dict:
    """A detectron2 `.pkl` ({"model": {name: array}, ...}) with its arrays as tensors."""
    try:
        with open(path, "rb") as file:
            obj = _NumpyUnpickler(file, encoding="latin1").load()
    except (OSError, MemoryError):
        raise
    except Exception as err:  # noqa: BLE001 - arbitrary bytes fail anywhere in the unpickler
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise CheckpointError(f"{path}: not a detectron2 weights pickle ({reason})") from None

    def tensors(value):
        if isinstance(value, dict):
            return {k: tensors(v) for k, v in value.items()}
        if isinstance(value, np.ndarray):
            return torch.from_numpy(np.ascontiguousarray(value))
        return value

    return tensors(obj)


def unwrap_state_dict(obj, origin: str) -> dict[str, torch.Tensor]:
    """The tensors of a checkpoint that may wrap them in 'state_dict', 'model' or 'module'."""
    for wrapper in ("state_dict", "model", "module"):
        if isinstance(obj, dict) and isinstance(obj.get(wrapper), dict):
            obj = obj[wrapper]
    if not isinstance(obj, dict) or not any(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CheckpointError(f"{origin}: no state dict of tensors found")
    return {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}
