"""Minimal safetensors reader/writer (stdlib + numpy), so the reference tests need no extra package.

Format: 8-byte little-endian header length N, then N bytes of JSON
{name: {"dtype", "shape", "data_offsets": [begin, end]}, "__metadata__": {str: str}},
then the raw little-endian tensor bytes; offsets are relative to the start of that data block.
scmoe stores each tensor's CRC-32 in the metadata as "crc32:<name>" (8 hex digits, zlib's crc32 of the
tensor's bytes): read() verifies it when present (and leaves it out of the metadata it returns),
write() always stores it.
"""

import json
import struct
import zlib

import numpy as np

# Explicit little-endian dtypes: the format is little-endian whatever the host is.
_NP_OF = {
    "F64": np.dtype("<f8"),
    "F32": np.dtype("<f4"),
    "F16": np.dtype("<f2"),
    "I64": np.dtype("<i8"),
    "I32": np.dtype("<i4"),
    "I16": np.dtype("<i2"),
    "I8": np.dtype("i1"),
    "U64": np.dtype("<u8"),
    "U32": np.dtype("<u4"),
    "U16": np.dtype("<u2"),
    "U8": np.dtype("u1"),
    "BOOL": np.dtype("?"),
}
_ST_OF = {dt: name for name, dt in _NP_OF.items()}

CHECKSUM_PREFIX = "crc32:"

# A header larger than this is a corrupt length field, not a real file (safetensors uses 100 MB).
_MAX_HEADER = 100 * 1024 * 1024


class SafetensorsError(ValueError):
    pass


def _bf16_to_f32(raw_u16):
    # bf16 is the top half of an f32, so widening is an exact shift.
    return (raw_u16.astype(np.uint32) << 16).view(np.float32)


def _f32_to_bf16(x):
    # Round to nearest even, as the C++ side and torch do; NaNs stay NaN (quiet bit kept).
    bits = np.ascontiguousarray(x, dtype=np.float32).view(np.uint32)
    rounded = ((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16).astype(np.uint16)
    nan = np.isnan(x)
    rounded[nan] = ((bits[nan] >> 16) | 0x40).astype(np.uint16)
    return rounded


def read(path, bf16_as_f32=True):
    """Return (tensors: dict name -> np.ndarray, metadata: dict str -> str).

    BF16 tensors come back as float32 (exact) unless bf16_as_f32 is False, then as raw uint16.
    Every offset is validated so that a truncated or malformed dump fails loudly here rather
    than as a confusing numerical mismatch later.
    """
    with open(path, "rb") as f:
        blob = f.read()
    if len(blob) < 8:
        raise SafetensorsError(f"{path}: {len(blob)} bytes, too short for a safetensors header")
    (n,) = struct.unpack("<Q", blob[:8])
    if n > _MAX_HEADER or 8 + n > len(blob):
        raise SafetensorsError(f"{path}: header length {n} does not fit a {len(blob)}-byte file")
    try:
        header = json.loads(blob[8:8 + n].decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise SafetensorsError(f"{path}: header is not valid JSON: {e}") from None
    if not isinstance(header, dict):
        raise SafetensorsError(f"{path}: header is not a JSON object")
    data = memoryview(blob)[8 + n:]

    metadata = header.pop("__metadata__", None) or {}
    if not isinstance(metadata, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in metadata.items()):
        raise SafetensorsError(f"{path}: __metadata__ must map strings to strings")

    checksums = {k[len(CHECKSUM_PREFIX):]: v for k, v in metadata.items() if k.startswith(CHECKSUM_PREFIX)}
    metadata = {k: v for k, v in metadata.items() if not k.startswith(CHECKSUM_PREFIX)}
    tensors = {}
    for name, info in header.items():
        try:
            st_dtype, shape, (begin, end) = info["dtype"], info["shape"], info["data_offsets"]
        except (KeyError, TypeError, ValueError):
            raise SafetensorsError(f"{path}: tensor {name!r} has a malformed entry {info!r}") from None
        if st_dtype == "BF16":
            np_dtype = np.dtype("<u2")
        elif st_dtype in _NP_OF:
            np_dtype = _NP_OF[st_dtype]
        else:
            raise SafetensorsError(f"{path}: tensor {name!r} has unsupported dtype {st_dtype!r}")
        if not all(isinstance(d, int) and d >= 0 for d in shape):
            raise SafetensorsError(f"{path}: tensor {name!r} has a bad shape {shape!r}")
        count = int(np.prod(shape, dtype=np.int64))
        if not (0 <= begin <= end <= len(data)) or end - begin != count * np_dtype.itemsize:
            raise SafetensorsError(
                f"{path}: tensor {name!r} ({st_dtype} {shape}) has offsets [{begin}, {end}) "
                f"but needs {count * np_dtype.itemsize} bytes within {len(data)} data bytes")
        want = checksums.get(name)
        if want is not None:
            got = f"{zlib.crc32(data[begin:end]):08x}"
            if got != want:
                raise SafetensorsError(f"{path}: tensor {name!r} fails its checksum (stored crc32 {want}, "
                                       f"the bytes give {got}): the file is corrupt")
        # copy(): detach from the file buffer and make the array writable for callers.
        arr = np.frombuffer(data[begin:end], dtype=np_dtype, count=count).reshape(shape).copy()
        if st_dtype == "BF16" and bf16_as_f32:
            arr = _bf16_to_f32(arr)
        tensors[name] = arr
    return tensors, metadata


def write(path, tensors, metadata=None, bf16=()):
    """Write tensors (dict name -> array-like, insertion order kept) and string metadata.

    Each tensor's checksum is added to the metadata (keys already named like one are dropped first).

    Names listed in bf16 are stored as BF16 (rounded from float32). Anything with a .numpy()
    method (a CPU torch tensor) is accepted, so callers need not convert first.
    """
    header = {}
    chunks = []
    offset = 0
    metadata = {k: v for k, v in (metadata or {}).items() if not k.startswith(CHECKSUM_PREFIX)}
    for name, value in tensors.items():
        if name == "__metadata__":
            raise SafetensorsError("'__metadata__' is reserved and cannot name a tensor")
        if hasattr(value, "detach"):
            value = value.detach().cpu().numpy()
        arr = np.asarray(value)
        if name in bf16:
            raw, st_dtype = _f32_to_bf16(arr.astype(np.float32)), "BF16"
        else:
            np_dtype = arr.dtype.newbyteorder("<") if arr.dtype.itemsize > 1 else arr.dtype
            if np_dtype not in _ST_OF:
                raise SafetensorsError(f"tensor {name!r}: unsupported dtype {arr.dtype}")
            raw, st_dtype = arr.astype(np_dtype, copy=False), _ST_OF[np_dtype]
        raw_bytes = np.ascontiguousarray(raw).tobytes()
        header[name] = {"dtype": st_dtype, "shape": list(arr.shape),
                        "data_offsets": [offset, offset + len(raw_bytes)]}
        chunks.append(raw_bytes)
        metadata[CHECKSUM_PREFIX + name] = f"{zlib.crc32(raw_bytes):08x}"
        offset += len(raw_bytes)
    if metadata:
        bad = [k for k, v in metadata.items() if not isinstance(k, str) or not isinstance(v, str)]
        if bad:
            raise SafetensorsError(f"metadata values must be strings (offending keys: {bad})")
        header["__metadata__"] = dict(metadata)
    head = json.dumps(header, separators=(",", ":")).encode("utf-8")
    # Pad with spaces to 8 bytes so the data block is aligned, as the reference writer does.
    head += b" " * (-len(head) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(head)))
        f.write(head)
        for c in chunks:
            f.write(c)
