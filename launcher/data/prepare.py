"""Recipe data -> tokenised train/validation splits, cached by content so a re-run prepares in well under 1 s.

Order: load sources -> task.fit (label names) -> normalise rows -> carve validation (when none is given)
-> seeded subsets (max_*_rows) -> tokenise -> cache. The cache key covers the file contents, every
setting that changes the result and the tokenizer's vocabulary, so a stale cache is never used.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from ftl.launcher import __version__
from ftl.launcher.console import log as warn
from ftl.launcher.console import recording
from ftl.launcher.data.folds import fold_of_rows, resolve_method, split_fold
from ftl.launcher.data.sources import RawData, load_source
from ftl.launcher.data.splits import carve_validation, oversample, subsample
from ftl.launcher.errors import FtlError, did_you_mean, one_of
from ftl.launcher.files import check_writable
from ftl.launcher.recipe.data import DataSection

CACHE_ENV = "FTL_CACHE"
_CACHE_FORMAT = 1


class Preparer(Protocol):
    """What preparing data needs from a task: how to read, split, normalise and tokenise its rows, and the
    state it learns from them (label names) so a cached result can restore it."""

    split_method: str

    def stratify_column(self) -> str | None: ...
    def fit(self, train: RawData) -> None: ...
    def encode_raw(self, raw: RawData, keep_columns: tuple[str, ...] = ()) -> Any: ...
    def tokenize(self, dataset: Any, tokenizer: Any, split: str) -> Any: ...
    def cache_identity(self) -> dict[str, Any]: ...
    def state(self) -> dict[str, Any]: ...
    def restore(self, state: dict[str, Any]) -> None: ...
    def dataset_stats(self, dataset: Any, tokenizer: Any) -> dict[str, Any]: ...
    def label_names(self) -> list[str] | None: ...


@dataclass
class PreparedData:
    train: Any  # datasets.Dataset, tokenised
    validation: Any
    validation_rows: Any  # the normalised validation rows (text and label ids) for prediction files
    fingerprint: str  # of the sources and every setting: identifies this exact data
    sources: dict[str, str]
    stats: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0
    from_cache: bool = False
    files_fingerprint: str = ""  # of the data files' contents alone: what a resumed run must find unchanged


SAID_BY_DRIVER = "FTL_DATA_SAID_BY_DRIVER"  # set for workers whose driver prepared (and reported) the data


def cache_root() -> Path:
    return Path(os.environ.get(CACHE_ENV, Path.home() / ".cache" / "ftl")).expanduser()


def check_cache(data: DataSection) -> None:
    """The tokenisation cache can be written (when the recipe caches): one line naming the folder otherwise."""
    if data.cache:
        what = f"{CACHE_ENV}={os.environ[CACHE_ENV]}" if os.environ.get(CACHE_ENV) else "the data cache"
        check_writable(
            cache_root() / "data",
            what,
            fix=f"point {CACHE_ENV} at a folder you can write, or set data.cache: false",
        )


def tokenizer_fingerprint(tokenizer) -> str:
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        state = json.loads(backend.to_str())
        state.pop("truncation", None)  # call-time settings that the tokenizer remembers between calls
        state.pop("padding", None)
        text = json.dumps(state, sort_keys=True)
    else:
        text = json.dumps(sorted(tokenizer.get_vocab().items()))
    identity = f"{type(tokenizer).__name__}|{text}|{tokenizer.pad_token}|{tokenizer.eos_token}|{tokenizer.padding_side}"
    return hashlib.sha256(identity.encode()).hexdigest()[:16]


def _preparation_code() -> str:
    """Fingerprint of the code that reads and tokenises data (launcher/data, launcher/tasks): a changed reader
    or task never reuses rows tokenised by the old code."""
    package = Path(__file__).resolve().parents[1]
    digest = hashlib.sha256()
    for folder in ("data", "tasks"):
        for source in sorted((package / folder).glob("*.py")):
            digest.update(source.name.encode())
            digest.update(source.read_bytes())
    return digest.hexdigest()[:16]


def prepare_data(
    data: DataSection, task: Preparer, tokenizer, *, dirs: list[Path], log=print
) -> PreparedData:
    """The recipe's `data:` section as tokenised splits for `task`; relative paths are looked up in `dirs`."""
    import datasets

    started = time.perf_counter()
    check_cache(data)
    train_raw = load_source(data.train, dirs, "data.train")
    val_raw = load_source(data.validation, dirs, "data.validation") if data.validation else None
    split = data.validation_split
    method = split_method(data, task)
    key_material = {
        "format": _CACHE_FORMAT,
        "ftl": __version__,
        "code": _preparation_code(),
        "task": task.cache_identity(),
        "train": train_raw.fingerprint,
        "validation": val_raw.fingerprint if val_raw else {"method": method, **split.model_dump()},
        "fold": data.fold.model_dump() if data.fold else None,
        "subset_seed": split.seed,  # also seeds the max_*_rows subsets
        "max_train_rows": data.max_train_rows,
        "max_eval_rows": data.max_eval_rows,
        "oversample": data.oversample,
        "tokenizer": tokenizer_fingerprint(tokenizer),
    }
    fingerprint = hashlib.sha256(json.dumps(key_material, sort_keys=True).encode()).hexdigest()[:20]
    files = {key: key_material[key] for key in ("train", "validation")}
    files_fingerprint = hashlib.sha256(json.dumps(files, sort_keys=True).encode()).hexdigest()[:16]
    sources = {
        "train": train_raw.description,
        "validation": val_raw.description if val_raw else f"{method} split of train",
    }
    if data.fold is not None:
        sources["validation"] = f"fold {data.fold.index} of {data.fold.folds} of train"
    cache_dir = cache_root() / "data" / fingerprint

    if data.cache and (cache_dir / "meta.json").exists():
        try:
            splits = datasets.load_from_disk(str(cache_dir / "splits"))
            meta = json.loads((cache_dir / "meta.json").read_text())
            task.restore(meta["task_state"])
            if not os.environ.get(SAID_BY_DRIVER):  # Ray Train workers: the driver said it when it prepared
                for line in meta["stats"].get("rows_dropped_or_coerced", {}).get("report", []):
                    log(f"[yellow]{line}[/]")
                for line in meta.get("warnings", []):  # what the task said of the data (cut rows, odd labels)
                    log(line)
            return PreparedData(
                splits["train"],
                splits["validation"],
                splits["validation_rows"],
                fingerprint,
                sources,
                meta["stats"],
                time.perf_counter() - started,
                True,
                files_fingerprint,
            )
        except (OSError, KeyError, ValueError):
            log(f"[yellow]cache at {cache_dir} is unreadable; rebuilding it[/]")

    datasets.disable_caching()  # ftl caches the final result itself
    with recording() as said:  # the task's warnings, replayed when a later run finds this in the cache
        train_rows, val_rows = split_rows(data, task, train_raw, val_raw, method)
        row_notes = [line for raw in (train_raw, val_raw) if raw is not None for line in raw.row_report()]
        for line in row_notes:
            log(f"[yellow]{line}[/]")
        train = task.tokenize(train_rows, tokenizer, "train")
        validation = task.tokenize(val_rows, tokenizer, "validation")
    said_of_rows = {f"[yellow]{line}[/]" for line in row_notes}  # replayed from the stats already
    warnings = [line for line in said if line.startswith("[yellow]") and line not in said_of_rows]
    stats = {
        "train": task.dataset_stats(train, tokenizer),
        "validation": task.dataset_stats(validation, tokenizer),
        "raw_rows": {"train": len(train_rows), "validation": len(val_rows)},
        "rows_dropped_or_coerced": {
            "train": train_raw.notes,
            "validation": val_raw.notes if val_raw is not None else {},
            "report": row_notes,
        },
    }
    if data.cache:
        _store(
            cache_dir,
            datasets.DatasetDict(train=train, validation=validation, validation_rows=val_rows),
            {"task_state": task.state(), "stats": stats, "key": key_material, "warnings": warnings},
        )
    return PreparedData(
        train,
        validation,
        val_rows,
        fingerprint,
        sources,
        stats,
        time.perf_counter() - started,
        False,
        files_fingerprint,
    )


def split_method(data: DataSection, task: Preparer) -> str:
    split = data.validation_split
    if split.method == "auto":
        return "group" if split.group_column else task.split_method
    return split.method


def split_rows(data: DataSection, task: Preparer, train_raw: RawData, val_raw: RawData | None, method: str):
    """Normalised (train, validation) rows as a run trains on them: labels fitted, rows encoded, validation
    carved or read, folds, subsets and oversampling applied (no tokenising). `ftl check` calls it too, so a
    split the data cannot give is found before training."""
    split = data.validation_split
    if val_raw is not None and val_raw.fingerprint == train_raw.fingerprint:
        warn(
            f"[yellow]data.validation ({val_raw.description}) holds the same rows as data.train: validation "
            "scores measure fit to the training rows, not to new ones; give held-out rows, or drop "
            "data.validation to carve a split from train[/]"
        )
    task.fit(train_raw)
    if data.fold is not None:
        train_rows, val_rows = _fold_rows(train_raw, task, data, seed=split.seed)
    else:
        group = split.group_column if method == "group" and val_raw is None else None
        if group is not None:
            _check_group_column(train_raw, group, "data.validation_split.group_column")
        train_rows = task.encode_raw(train_raw, keep_columns=(group,) if group else ())
        stratify = task.stratify_column() if method == "stratified" else None
        if val_raw is not None:
            val_rows = task.encode_raw(val_raw)
        else:
            if train_raw.format == "text" and len(train_rows) < 2:
                raise FtlError(
                    f"data.train: {train_raw.description} holds {len(train_rows)} "
                    f"{data.train.text_sample_by} of text, too few to carve a validation split from; read it by "
                    "line (data.train.text_sample_by: line) if each line is an example, or give data.validation"
                )
            train_rows, val_rows = carve_validation(
                train_rows,
                method=method,
                fraction=split.fraction,
                seed=split.seed,
                stratify_column=stratify,
                what="data.validation_split",
                group_column=group,
                names=task.label_names(),
            )
        train_rows = subsample(
            train_rows,
            data.max_train_rows,
            seed=split.seed,
            stratify_column=task.stratify_column(),
            what="data.max_train_rows",
        )
    if data.oversample:
        train_rows = oversample(train_rows, column=task.stratify_column(), seed=split.seed)
    val_rows = subsample(
        val_rows,
        data.max_eval_rows,
        seed=split.seed,
        stratify_column=task.stratify_column(),
        what="data.max_eval_rows",
    )
    return train_rows, val_rows


def _fold_rows(train_raw: RawData, task: Preparer, data: DataSection, *, seed: int):
    """max_train_rows of train, split into k folds: (every fold but data.fold.index, that fold)."""
    spec = data.fold
    group = spec.group_column
    if group is not None:
        _check_group_column(train_raw, group, "data.fold.group_column")
    rows = task.encode_raw(train_raw, keep_columns=(group,) if group else ())
    rows = subsample(
        rows,
        data.max_train_rows,
        seed=seed,
        stratify_column=task.stratify_column(),
        what="data.max_train_rows",
    )
    labels_column = task.stratify_column()
    fold = fold_of_rows(
        len(rows),
        spec,
        method=resolve_method(spec, task.split_method),
        labels=rows[labels_column] if labels_column else None,
        groups=rows[group] if group else None,
        what="data.fold",
    )
    return split_fold(rows, fold, spec.index)


def _check_group_column(raw: RawData, group: str, key: str) -> None:
    columns = raw.dataset.column_names
    if group not in columns:
        raise FtlError(
            f"{key}: no column '{group}' in {raw.description}{did_you_mean(group, columns)}; "
            f"columns are: {one_of(columns)}"
        )


def prepare_eval_file(raw: RawData, task: Preparer, tokenizer):
    """Normalise and tokenise one extra file with an already fitted task (for `ftl eval`)."""
    import datasets

    datasets.disable_caching()
    rows = task.encode_raw(raw)
    return rows, task.tokenize(rows, tokenizer, "eval")


def _store(cache_dir: Path, splits, meta: dict[str, Any]) -> None:
    """Write atomically: a half-written cache must never be read."""
    cache_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".staging-", dir=cache_dir.parent))
    try:
        splits.save_to_disk(str(staging / "splits"))
        (staging / "meta.json").write_text(json.dumps(meta, indent=1))
        if (cache_dir / "meta.json").exists():  # another worker published it first; it may be reading it
            shutil.rmtree(staging, ignore_errors=True)
            return
        if cache_dir.exists():
            shutil.rmtree(cache_dir, ignore_errors=True)
        os.replace(staging, cache_dir)
    except OSError:
        shutil.rmtree(
            staging, ignore_errors=True
        )  # caching is an optimisation; a full disk must not fail the run
