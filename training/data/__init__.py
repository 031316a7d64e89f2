"""Training data: a preprocessed dataset (schemas/ layout) -> per-rank batches of uint8 tensors.

Rooms, one concern each:

* ``dataset``           what a dataset holds, from metadata only: the manifest and the row groups of the files it lists.
* ``loader``            the interface: ``LoaderConfig`` and ``Loader`` (``epoch(e, start_step)`` -> batches).
* ``arrow_reader``      ``ReaderKind.ARROW`` (default): a native pyarrow reader, deterministic sharding and shuffling.
* ``petastorm_reader``  ``ReaderKind.PETASTORM``: petastorm's ``make_batch_reader``, sharded by row group.
* ``batch``             ``Batch`` and the copy-free decode of a ``pixels`` column.
* ``normalize``         THE one place normalisation happens (``to_model_input`` / ``from_model_output``).

``open_loader(LoaderConfig) -> Loader`` picks the reader. This package never imports ``pipelines`` or pyspark.
"""
from __future__ import annotations

from schemas.pixels import PixelEncoding
from training.config import ReaderKind
from training.data.arrow_reader import ArrowLoader
from training.data.batch import Batch, decode_pixel_column
from training.data.dataset import inspect_dataset
from training.data.loader import Loader, LoaderConfig
from training.data.normalize import from_model_output, to_model_input
from training.data.petastorm_reader import PetastormLoader

__all__ = [
    "Batch",
    "Loader",
    "LoaderConfig",
    "PixelEncoding",
    "ReaderKind",
    "decode_pixel_column",
    "from_model_output",
    "open_loader",
    "to_model_input",
]


def open_loader(config: LoaderConfig) -> Loader:
    """Validate the dataset from metadata (manifest, listed files, schema, geometry statistics, row counts) and open a
    loader."""
    info = inspect_dataset(config.data)
    if config.reader is ReaderKind.ARROW:
        return ArrowLoader(config, info)
    return PetastormLoader(config, info)
