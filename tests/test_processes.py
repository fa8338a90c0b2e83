"""A job of 2 real processes on localhost against a lone process, on the backend of this run.

JAX: 2 processes joined by `jax.distributed`, one CPU device each; PyTorch:
`torch.distributed` over gloo; TensorFlow: 2 workers of
`MultiWorkerMirroredStrategy`. Each process runs `tests/processes_worker.py`
(launched by `tests/multiprocess.py`, every launch bounded in time) and the
tests compare what the job and the lone process write.
"""

import json
import os

import keras
import numpy as np
import pytest

from tests.multiprocess import check_succeeded, run_job

BACKEND = keras.backend.backend()
TOLERANCE = dict(rtol=1e-5, atol=1e-5)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Every scenario but the killed one, once as a lone process and once as a job of 2."""
    root = tmp_path_factory.mktemp("processes")
    lone, job = root / "lone", root / "job"
    check_succeeded(run_job("all", lone, processes=1))
    check_succeeded(run_job("all", job, processes=2))
    return lone, job


def _arrays(path):
    with np.load(path) as arrays:
        return dict(arrays)


def _final(arrays):
    return {key: value for key, value in arrays.items() if key.startswith("final/")}


def test_two_processes_train_as_one(runs):
    lone, job = (_arrays(folder / "train" / "rank0.npz") for folder in runs)
    other = _arrays(runs[1] / "train" / "rank1.npz")
    assert np.ptp(lone["loss"]) > 0.05  # the steps did train
    np.testing.assert_allclose(job["loss"], lone["loss"], **TOLERANCE)
    np.testing.assert_array_equal(other["loss"], job["loss"])  # both processes log the global batch's loss
    assert sorted(_final(job)) == sorted(_final(lone))
    for key in _final(lone):
        np.testing.assert_allclose(job[key], lone[key], err_msg=key, **TOLERANCE)
        np.testing.assert_array_equal(other[key], job[key], err_msg=key)


def test_each_process_draws_its_slice_of_one_process_draws(runs):
    """On PyTorch each process draws for itself, outside `fit` too. (JAX draws in one program over
    the global batch, TensorFlow's replicas inside `fit`: the equal training steps above show them.)"""
    lone = _arrays(runs[0] / "train" / "rank0.npz").get("drops")
    job = [_arrays(runs[1] / "train" / f"rank{rank}.npz").get("drops") for rank in range(2)]
    assert (lone is None) == (BACKEND != "torch")
    if lone is not None:
        assert 0 < np.mean(lone == 3) < 1  # some labels dropped, not all
        np.testing.assert_array_equal(np.concatenate(job), lone)


def test_only_the_chief_writes_the_model_and_it_loads(runs):
    import keras_sit  # noqa: F401  (registers SiT)

    train = runs[1] / "train"
    assert sorted(path.name for path in train.iterdir() if not path.name.startswith("log")) == [
        "model.keras",
        "rank0.npz",
        "rank1.npz",
    ]
    model = keras.saving.load_model(train / "model.keras", safe_mode=True)
    final = _final(_arrays(train / "rank0.npz"))
    for variable in model.trainable_weights:
        np.testing.assert_array_equal(keras.ops.convert_to_numpy(variable), final[f"final/{variable.path}"])


def test_a_bad_batch_on_one_process_skips_the_step_on_all(runs):
    lone = json.loads((runs[0] / "bad_batch" / "rank0.json").read_text())
    job = [json.loads((runs[1] / "bad_batch" / f"rank{rank}.json").read_text()) for rank in range(2)]
    for report in (lone, *job):
        assert report["steps"] == 2
        assert "stopped at training step 2" in report["error"]
    assert job[0] == job[1]
    # The first step was applied, the second (NaN in process 1's slice only) on neither process.
    np.testing.assert_allclose(job[0]["moved"], lone["moved"], **TOLERANCE)
    assert lone["moved"] > 0.01


def _files(folder):
    return sorted(str(path.relative_to(folder)) for path in folder.rglob("*") if path.is_file())


@pytest.mark.parametrize("name", ["cache", "samples"])
def test_the_sharded_cache_and_runner_write_what_one_process_writes(runs, name):
    lone, job = (folder / "cache" / name for folder in runs)
    assert _files(job) == _files(lone) and len(_files(lone)) > 4
    for file in _files(lone):
        assert (job / file).read_bytes() == (lone / file).read_bytes(), file


def test_the_latent_dataset_gives_each_process_its_slice(runs):
    lone = _arrays(runs[0] / "cache" / "dataset0.npz")
    job = [_arrays(runs[1] / "cache" / f"dataset{rank}.npz") for rank in range(2)]
    assert sorted(job[0]) == sorted(lone) and len(lone) == 4  # 7 examples, global batch 4: 2 batches
    if BACKEND == "tensorflow":  # every worker yields the global batch, which the strategy slices
        for key in lone:
            np.testing.assert_array_equal(job[0][key], lone[key], err_msg=key)
            np.testing.assert_array_equal(job[1][key], lone[key], err_msg=key)
        return
    for key in lone:
        both = np.concatenate([job[0][key], job[1][key]])
        # The last batch, 3 examples, is cut to one for each process.
        assert len(job[0][key]) == len(job[1][key]) == len(lone[key]) // 2
        np.testing.assert_array_equal(both, lone[key][: len(both)], err_msg=key)


def test_a_killed_process_fails_the_job_cleanly_and_a_restart_resumes_exactly(runs, tmp_path):
    killed = run_job("backup", tmp_path, 4, 2, processes=2)
    (code, log, seconds), (other_code, _, _) = killed
    assert other_code == -9  # process 1 killed itself at the end of epoch 2
    assert code != 0 and "another process of the job stopped or cannot be reached" in log, log[-4000:]
    assert seconds < 90  # the timeout is 10 s; no hang
    backup = tmp_path / "backup"
    state = json.loads((backup / "backup.json").read_text())
    assert sorted(os.listdir(backup)) == ["backup.json", state["weights"]]  # no partial file
    assert state["epoch"] in (1, 2)
    check_succeeded(run_job("backup", tmp_path, 4, processes=2))
    lone = _arrays(runs[0] / "backup" / "rank0.npz")
    for rank in range(2):
        resumed = _arrays(tmp_path / f"rank{rank}.npz")
        assert int(resumed["epochs_run"]) == 4 - state["epoch"]
        for key in _final(lone):
            np.testing.assert_allclose(resumed[key], lone[key], err_msg=key, **TOLERANCE)
