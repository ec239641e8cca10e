# SPDX-License-Identifier: Apache-2.0
"""A fast GGUF header parser with the slice of `gguf.GGUFReader`'s interface that io/gguf.py uses.

Why: `GGUFReader` builds numpy views for every part of every metadata field; for a 49k-token
vocabulary plus 49k merges that is ~250k small memmap slices and takes seconds (most of
SmolLM2's load time). Here the header is read with `struct` from one bytes object and the
tensor data are zero-copy numpy views of a memory map. Dequantization stays with
`gguf.quants`.

Format (GGUF v2/v3): magic, version u32, tensor_count u64, kv_count u64, then kv pairs
(key string, value type u32, value), then tensor infos (name, n_dims u32, dims u64[n],
ggml type u32, offset u64), then the data section aligned to `general.alignment` (32).
"""

from __future__ import annotations

import mmap
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from gguf.constants import GGML_QUANT_SIZES, GGMLQuantizationType, GGUFValueType

_SCALAR = {
    GGUFValueType.UINT8: "<B", GGUFValueType.INT8: "<b", GGUFValueType.UINT16: "<H",
    GGUFValueType.INT16: "<h", GGUFValueType.UINT32: "<I", GGUFValueType.INT32: "<i",
    GGUFValueType.FLOAT32: "<f", GGUFValueType.BOOL: "<?", GGUFValueType.UINT64: "<Q",
    GGUFValueType.INT64: "<q", GGUFValueType.FLOAT64: "<d",
}
_PLAIN_DTYPES = {
    GGMLQuantizationType.F32: np.float32, GGMLQuantizationType.F16: np.float16,
    GGMLQuantizationType.F64: np.float64, GGMLQuantizationType.I8: np.int8,
    GGMLQuantizationType.I16: np.int16, GGMLQuantizationType.I32: np.int32,
    GGMLQuantizationType.I64: np.int64,
}


class _FilenameArray(np.ndarray):
    """The raw file as uint8 with a `filename` attribute (GGUFReader's `reader.data` has one)."""

    filename: str


@dataclass
class Field:
    name: str
    types: list[GGUFValueType]
    value: Any

    @property
    def data(self) -> list[Any]:
        return self.value if isinstance(self.value, list) else [self.value]

    def contents(self) -> Any:
        return self.value


@dataclass
class TensorInfo:
    name: str
    shape: np.ndarray  # ggml order: ne0 (innermost) first, like GGUFReader
    tensor_type: GGMLQuantizationType
    data: np.ndarray  # zero-copy view; last dim in bytes for block-quantized types


class FastGGUF:
    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        with open(self.path, "rb") as f:
            self._mm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        buf = self._mm
        raw = np.frombuffer(buf, dtype=np.uint8).view(_FilenameArray)
        raw.filename = str(self.path)
        self.data = raw
        self._pos = 0
        magic = bytes(buf[0:4])
        if magic != b"GGUF":
            raise ValueError(f"bad magic {magic!r}")
        self._pos = 4
        version, n_tensors, n_kv = self._unpack("<I"), self._unpack("<Q"), self._unpack("<Q")
        if version not in (2, 3):
            raise ValueError(f"unsupported GGUF version {version}")
        self.fields: dict[str, Field] = {}
        for _ in range(n_kv):
            key = self._string()
            vtype = GGUFValueType(self._unpack("<I"))
            types, value = self._value(vtype)
            self.fields[key] = Field(key, types, value)
        infos = []
        for _ in range(n_tensors):
            name = self._string()
            n_dims = self._unpack("<I")
            dims = struct.unpack_from(f"<{n_dims}Q", buf, self._pos)
            self._pos += 8 * n_dims
            ttype = GGMLQuantizationType(self._unpack("<I"))
            offset = self._unpack("<Q")
            infos.append((name, dims, ttype, offset))
        align = int(self.fields["general.alignment"].value) if "general.alignment" in self.fields else 32
        start = self._pos + (-self._pos % align)
        self.tensors = [self._tensor(raw, start, *info) for info in infos]

    def _unpack(self, fmt: str) -> Any:
        (v,) = struct.unpack_from(fmt, self._mm, self._pos)
        self._pos += struct.calcsize(fmt)
        return v

    def _string(self) -> str:
        n = self._unpack("<Q")
        s = self._mm[self._pos : self._pos + n].decode("utf-8")
        self._pos += n
        return s

    def _value(self, vtype: GGUFValueType) -> tuple[list[GGUFValueType], Any]:
        if vtype == GGUFValueType.STRING:
            return [vtype], self._string()
        if vtype == GGUFValueType.ARRAY:
            itype = GGUFValueType(self._unpack("<I"))
            n = self._unpack("<Q")
            if itype in _SCALAR:  # numeric arrays in one unpack
                fmt = _SCALAR[itype]
                size = struct.calcsize(fmt)
                items = list(struct.unpack_from(f"<{n}{fmt[1]}", self._mm, self._pos))
                self._pos += size * n
                return [vtype, itype], items
            items, sub = [], [itype]
            for _ in range(n):
                sub, v = self._value(itype)
                items.append(v)
            return [vtype, *sub], items
        return [vtype], self._unpack(_SCALAR[vtype])

    @staticmethod
    def _tensor(raw: np.ndarray, start: int, name: str, dims: tuple[int, ...], ttype, offset: int) -> TensorInfo:
        rows = tuple(reversed(dims))  # torch order
        if ttype in _PLAIN_DTYPES:
            dt = np.dtype(_PLAIN_DTYPES[ttype])
            n = int(np.prod(dims)) * dt.itemsize
            arr = raw[start + offset : start + offset + n].view(dt).reshape(rows)
        else:
            block, type_size = GGML_QUANT_SIZES[ttype]
            row_bytes = dims[0] // block * type_size
            n = row_bytes * int(np.prod(dims[1:]))
            arr = raw[start + offset : start + offset + n].reshape(*rows[:-1], row_bytes)
        if arr.size * arr.itemsize != n:
            raise ValueError(f"tensor {name} runs past the end of the file")
        return TensorInfo(name, np.array(dims, dtype=np.uint64), ttype, arr)
