"""Safe loaders: a file's bytes -> its tensors, without running any pickle code. A file that cannot be
loaded raises `BadFile`, whose message is the reason (one line, for the ingest metrics or the error)."""

from __future__ import annotations

import io
import json
import pickle
import struct
import warnings
from typing import Any

import torch
from safetensors import SafetensorError

from weightvae import tensorfile

#: What `torch.load` raises for a truncated or corrupt file (measured on fuzzed files: the zip reader's
#: RuntimeError, the unpickler's errors on garbage). Anything else (a MemoryError, an OSError, a bug) is not the
#: file's fault: it propagates with its traceback instead of becoming "corrupt?".
CORRUPT = (pickle.UnpicklingError, EOFError, RuntimeError, ValueError, IndexError, KeyError, TypeError,
           AssertionError, OverflowError, struct.error)
#: likewise for a safetensors file (the library's error; our own checks of its metadata)
CORRUPT_SAFETENSORS = (SafetensorError, ValueError, TypeError)


class BadFile(Exception):
    """A file is rejected; the message is the reason."""


def first_line(e: BaseException) -> str:
    text = str(e).strip()
    return f"{type(e).__name__}: {text.splitlines()[0] if text else ''}"[:300]


def load_torch(data: bytes) -> Any:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        msg = str(e)
        if "Unsupported" in msg:
            what = msg.split("WeightsUnpickler error:")[-1].strip().splitlines()[0].split(". ")[0]
            need = "needs arbitrary pickle code to load" if "Unsupported global" in what else \
                "uses pickle instructions that safe loading (weights_only=True) refuses"
            raise BadFile(f"{need} ({what}); refused, none of it was run. Re-save it with tensors and plain "
                       "Python values only, e.g. torch.save({'state_dict': model.state_dict(), "
                       "'model_properties': {...}}, path)") from e
        raise BadFile(f"cannot be unpickled (truncated or corrupt?): {first_line(e)}") from e
    except CORRUPT as e:
        raise BadFile(f"cannot be read as a torch file (truncated or corrupt?): {first_line(e)}") from e


def load_safetensors(data: bytes) -> Any:
    """Tensors in the order the file records (weightvae's exports), else by name: the same in every process."""
    try:
        tensors, meta = tensorfile.load(data)
    except CORRUPT_SAFETENSORS as e:
        raise BadFile(f"cannot be read as safetensors (truncated or corrupt?): {first_line(e)}") from e
    if "model_properties" in meta:  # optional: our schema's properties as a JSON string in the header
        try:
            return {"state_dict": tensors, "model_properties": json.loads(meta["model_properties"])}
        except json.JSONDecodeError as e:
            raise BadFile(f"metadata 'model_properties' is not valid JSON: {e}") from e
    return tensors
