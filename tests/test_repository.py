"""Model files the server cannot serve stop start-up with a message that names the file."""

import shutil

import onnx
import pytest

from rnnserve.errors import UsageError
from rnnserve.server.config import ServerConfig
from rnnserve.server.repository import Repository


def test_a_model_without_metadata_is_refused_by_path(repository, tmp_path):
    model = onnx.load(str(repository / "rnn" / "1" / "model.onnx"))
    del model.metadata_props[:]
    (tmp_path / "bare" / "1").mkdir(parents=True)
    onnx.save(model, str(tmp_path / "bare" / "1" / "model.onnx"))
    with pytest.raises(UsageError, match=r"bare/1/model.onnx: no 'rnnserve' metadata entry"):
        Repository.load(ServerConfig(repository=str(tmp_path)))


def test_an_empty_repository_is_refused(tmp_path):
    with pytest.raises(UsageError, match="no models found"):
        Repository.load(ServerConfig(repository=str(tmp_path)))


def test_versions_sort_numerically_and_the_newest_is_the_default(repository, tmp_path):
    for version in ("2", "10"):
        shutil.copytree(repository / "rnn" / "1", tmp_path / "rnn" / version)
    loaded = Repository.load(ServerConfig(repository=str(tmp_path), max_sessions=1))
    assert loaded.versions("rnn") == ["2", "10"]
    assert loaded.get("rnn").card.version == "10"
