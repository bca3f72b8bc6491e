"""cachesrv: a deduplicating, verifying cache server for CI pipelines.

A drop-in replacement for go-simple-uploader: uploads are split into
content-defined chunks (tar-aware), each stored once by its BLAKE3 id,
zstd-compressed and verified on every read; versions switch atomically.
"""

__version__ = "0.1.0"
