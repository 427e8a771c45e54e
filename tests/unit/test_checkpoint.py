"""The run layout a recipe in one process writes: Ray Train's names, STATE marks complete, keep_last, atomic."""

from __future__ import annotations

import os

import pytest

from kubetrain.runtime.train import checkpoint as ckpt


def _fill(step: int):
    """What an engine's save writes into the directory it is given (here: a marker and the position)."""

    def fill(d: str) -> None:
        with open(os.path.join(d, ckpt.WEIGHTS), "w") as f:
            f.write(str(step))
        ckpt.save_position(d, 0, ckpt.TrainState(step=step))

    return fill


@pytest.mark.parametrize("remote", [False, True], ids=["local", "file-uri"])
def test_write_keeps_the_newest_complete_checkpoints_under_ray_names(tmp_path, remote):
    root = str(tmp_path / "runs" / "job")
    run_root = "file://" + root if remote else root
    for step in (2, 4, 6):
        dest = ckpt.write(run_root, step, 2, _fill(step))
        assert dest == ckpt.checkpoint_dir(run_root, step)
    assert sorted(os.listdir(root)) == ["checkpoint_00000004", "checkpoint_00000006"]
    assert ckpt.steps_in(run_root) == [4, 6]
    assert ckpt.latest(run_root) == ckpt.checkpoint_dir(run_root, 6)
    with open(os.path.join(root, "checkpoint_00000006", ckpt.WEIGHTS)) as f:
        assert f.read() == "6"
    fetched = ckpt.fetch(ckpt.latest(run_root), str(tmp_path / "fetched"))
    assert ckpt.load_position(fetched, 0).step == 6


def test_a_checkpoint_without_state_is_not_complete_and_keep_last_none_keeps_all(tmp_path):
    root = str(tmp_path / "run")
    for step in (1, 2, 3):
        ckpt.write(root, step, None, _fill(step))
    os.makedirs(ckpt.checkpoint_dir(root, 9))  # a writer that died before STATE
    assert ckpt.steps_in(root) == [1, 2, 3]
    assert ckpt.latest(root) == ckpt.checkpoint_dir(root, 3)
    assert not [n for n in os.listdir(root) if n.startswith(".")]  # no temporary directories left behind
    assert ckpt.latest(str(tmp_path / "nothing")) is None


def test_a_failed_write_leaves_the_previous_checkpoints_as_they_were(tmp_path):
    root = str(tmp_path / "run")
    ckpt.write(root, 2, 2, _fill(2))

    def broken(d: str) -> None:
        _fill(4)(d)
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        ckpt.write(root, 4, 2, broken)
    assert sorted(os.listdir(root)) == ["checkpoint_00000002"]


def test_the_checkpoint_dir_is_the_name_ray_train_reports():
    assert ckpt.checkpoint_dir("/r/run", 12) == "/r/run/checkpoint_00000012"
    assert ckpt.checkpoint_dir("s3://b/r", 3) == "s3://b/r/checkpoint_00000003"
