"""Real two-process DDP on CPU (gloo), as a subprocess; and the silent non-distributed launch refused."""

import os
import subprocess
import sys

import pytest

HERE = os.path.dirname(__file__)


def torchrun(tmp_path, use_cpu, method="mkcd"):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        "2",
        os.path.join(HERE, "ddp_worker.py"),
        str(tmp_path),
        use_cpu,
        method,
    ]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)


@pytest.mark.slow
@pytest.mark.parametrize("method", ["mkcd", "crd"])
def test_two_processes_train_identical_replicas(tmp_path, method):
    res = torchrun(tmp_path, "1", method)
    assert res.returncode == 0, res.stderr[-4000:]
    assert "DDP_OK world=2 wrapper=DistributedDataParallel" in res.stdout, res.stdout[-2000:]
    ckpt = tmp_path / "checkpoint-3"
    assert (ckpt / "model.safetensors").is_file() and (ckpt / "trainer_state.json").is_file()


@pytest.mark.slow
def test_processes_that_did_not_join_one_group_are_an_error(tmp_path):
    res = torchrun(tmp_path, "0")  # no --use_cpu on a machine without GPUs: each process would train alone
    if "DDP_OK" in res.stdout:
        pytest.skip("this machine has GPUs: the launch is genuinely distributed")
    assert res.returncode != 0
    assert "did not join one group" in res.stderr and "--use_cpu" in res.stderr
