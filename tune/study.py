"""Where a search's Optuna study lives: its storage URL (default sqlite in the search directory) and name."""

from __future__ import annotations

from ftl.launcher.errors import FtlError, first_line
from ftl.launcher.secrets import redact


def study_storage(recipe, search) -> str:
    return recipe.tune.storage or f"sqlite:///{(search.root / 'study.db').resolve()}"


def study_name(recipe) -> str:
    return recipe.tune.study_name or recipe.name


def open_storage(url: str):
    """The Optuna RDB storage at `url`; a one-line error (secrets hidden) when it cannot be opened."""
    import optuna

    try:
        return optuna.storages.RDBStorage(url)
    except Exception as exc:  # noqa: BLE001 - sqlalchemy and its drivers raise many kinds
        raise FtlError(
            f"tune.storage: cannot open the Optuna study storage {redact(url)}: {redact(first_line(exc))} (check "
            "the URL, the database server and its Python driver: pip install 'ftl[postgres]' for postgresql://)"
        ) from None
