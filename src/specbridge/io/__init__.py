"""Survey readers, HDF5 shard I/O, the VAC writer, and atomic file output."""

from specbridge.io.atomic import atomic_output, write_json_atomic

__all__ = ["atomic_output", "write_json_atomic"]
