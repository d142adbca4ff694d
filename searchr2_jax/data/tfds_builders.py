"""TFDS builders over local QA files, written as `array_record` (no TensorFlow needed).

Use: `builder = qa_builder("nq", {"test": ["data/nq/test.jsonl"]}, data_dir)`, then
`builder.download_and_prepare(file_format="array_record")` and `builder.as_data_source(split)` — a random-access
source for grain. `tfds.load` and the tfrecord format need TensorFlow; never use them here. Examples keep the input
files' order (`disable_shuffling=True`), so the TFDS source and the plain reader feed the pipeline identically.

The builder class lives in this package module on purpose: TFDS's `dataset_info_from_configs` fails for builders in
loose (non-package) modules.
"""

from __future__ import annotations

import dataclasses
import hashlib
import inspect
import json
import os
from typing import Any, Mapping, Sequence

import tensorflow_datasets as tfds
from etils import epath

from searchr2_jax.data.qa import QAExample, read_qa_file


@dataclasses.dataclass(eq=False)
class QAFilesConfig(tfds.core.BuilderConfig):
    """A named set of local QA files per split (`.jsonl` FlashRAG or `.parquet` Search-R1)."""

    files: Mapping[str, Sequence[str]] = dataclasses.field(default_factory=dict)
    data_source: str | None = None  # overrides what the reader infers for jsonl


class QAFiles(tfds.core.GeneratorBasedBuilder):
    """QA examples from local files; the config's files are read with `data.qa.read_qa_file` (same validation)."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "QAExample fields; metadata as a JSON string."}
    BUILDER_CONFIGS = [QAFilesConfig(name="default")]

    # TFDS's own `code_path` probes `importlib_resources` (not installed, not needed) for an editable install; the
    # plain file path is what it would return anyway.
    @tfds.core.utils.classproperty
    @classmethod
    def code_path(cls) -> epath.Path:
        return epath.Path(inspect.getfile(cls))

    def _info(self) -> tfds.core.DatasetInfo:
        features = tfds.features.FeaturesDict({
            "id": tfds.features.Text(),
            "question": tfds.features.Text(),
            "golden_answers": tfds.features.Sequence(tfds.features.Text()),
            "data_source": tfds.features.Text(),
            "metadata": tfds.features.Text(),  # JSON: nested, per-set fields do not fit a fixed feature spec
        })
        return tfds.core.DatasetInfo(builder=self, features=features, disable_shuffling=True,
                                     description="Local QA files (FlashRAG jsonl / Search-R1 parquet).")

    def _split_generators(self, dl_manager):
        del dl_manager  # local files only: nothing to download
        if not self.builder_config.files:
            raise ValueError(f"builder config {self.builder_config.name!r} lists no files")
        return {split: self._generate_examples(list(paths)) for split, paths in self.builder_config.files.items()}

    def _generate_examples(self, paths: list[str]):
        for path in paths:
            for i, ex in enumerate(read_qa_file(path, data_source=self.builder_config.data_source)):
                # The key only needs to be unique; with disable_shuffling the file order is kept.
                yield f"{os.path.basename(path)}:{i}", example_to_features(ex)


def example_to_features(ex: QAExample) -> dict[str, Any]:
    return {"id": ex.id, "question": ex.question, "golden_answers": list(ex.golden_answers),
            "data_source": ex.data_source, "metadata": json.dumps(dict(ex.metadata), sort_keys=True)}


def _text(x) -> str:
    return x.decode("utf-8") if isinstance(x, bytes) else str(x)


def features_to_example(rec: Mapping[str, Any]) -> QAExample:
    """Decode one record of `builder.as_data_source(split)` (bytes fields) back into a `QAExample`."""
    return QAExample(id=_text(rec["id"]), question=_text(rec["question"]),
                     golden_answers=tuple(_text(a) for a in rec["golden_answers"]),
                     data_source=_text(rec["data_source"]), metadata=json.loads(_text(rec["metadata"])))


def qa_builder(name: str, files: Mapping[str, Sequence[str]], data_dir: str,
               data_source: str | None = None) -> QAFiles:
    """A `QAFiles` builder for these files under `data_dir`.

    The config name gets a short hash of the file list, so a different file set never reuses a stale prepared copy.
    """
    if not name.replace("_", "").isalnum():
        raise ValueError(f"builder name {name!r}: use letters, digits and underscores")
    digest = hashlib.sha1(json.dumps({k: [os.path.abspath(p) for p in v] for k, v in sorted(files.items())},
                                     sort_keys=True).encode()).hexdigest()[:8]
    config = QAFilesConfig(name=f"{name}_{digest}", files={k: list(v) for k, v in files.items()},
                           data_source=data_source)
    return QAFiles(config=config, data_dir=data_dir)


def prepare_array_record(name: str, files: Mapping[str, Sequence[str]], data_dir: str,
                         data_source: str | None = None) -> QAFiles:
    """Build (once) the array_record copy of `files` and return the prepared builder."""
    builder = qa_builder(name, files, data_dir, data_source)
    builder.download_and_prepare(file_format="array_record")
    return builder


class QADataSource:
    """A random-access source of `QAExample`s over a prepared split (what grain's `MapDataset.source` takes)."""

    def __init__(self, builder: QAFiles, split: str):
        self._source = builder.as_data_source(split)
        self.split = split

    def __len__(self) -> int:
        return len(self._source)

    def __getitem__(self, index: int) -> QAExample:
        return features_to_example(self._source[index])
