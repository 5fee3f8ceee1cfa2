"""Runs that cannot lose or corrupt work: output-directory ownership, locks, atomic checkpoints, kills, divergence."""

import json
import os
import subprocess
import sys

import pytest
import torch
import yaml
from safetensors.torch import load_file

from hf_mkcd.run_dir import LOCK_NAME, RunDirectoryError

ROOT = os.path.dirname(os.path.dirname(__file__))
sys.path.insert(0, os.path.join(ROOT, "scripts"))
import distill  # noqa: E402
import train_teacher  # noqa: E402

TINY = [
    "--skip_teacher_check",  # these teachers train a few steps: at chance by design
    "true",
    "--dataset_name",
    "digits",
    "--image_size",
    "16",
    "--max_train_samples",
    "48",
    "--max_eval_samples",
    "16",
    "--per_device_train_batch_size",
    "8",
    "--use_cpu",
    "true",
    "--report_to",
    "none",
    "--disable_tqdm",
    "true",
    "--eval_strategy",
    "no",
    "--logging_steps",
    "1",
    "--model_name_or_path",
    "cifar_resnet20",
    "--seed",
    "0",
]


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    out = tmp_path_factory.mktemp("teacher")
    train_teacher.main([*TINY, "--output_dir", str(out), "--max_steps", "2", "--save_strategy", "no"])
    return str(out)


def distill_args(teacher, out, *extra):
    return [
        "--teacher_model_name_or_path",
        teacher,
        "--method",
        "kd",
        "--output_dir",
        str(out),
        *TINY,
        "--max_steps",
        "6",
        "--save_strategy",
        "steps",
        "--save_steps",
        "2",
        "--save_total_limit",
        "5",
        *extra,
    ]


def snapshot(path):
    return {os.path.join(r, f): os.stat(os.path.join(r, f)).st_mtime_ns for r, _, fs in os.walk(path) for f in fs}


def weights(out):
    return load_file(os.path.join(out, "model.safetensors"))


def test_a_rerun_resumes_only_the_same_run(teacher, tmp_path):
    out = tmp_path / "run"
    keep = ["--keep_checkpoints", "true"]  # a finished run's checkpoints are deleted unless kept (to extend it later)
    first = distill.main(distill_args(teacher, out, *keep))
    state = json.loads((out / "run_state.json").read_text())
    assert state["status"] == "finished" and state["fingerprint"]["method"] == "kd"
    before = snapshot(out)
    again = distill.main(
        distill_args(teacher, out, *keep)
    )  # the same command: finished, nothing retrained or rewritten
    assert again["eval_top1"] == first["eval_top1"] and snapshot(out) == before
    for extra, field in (
        (["--method", "dkd"], "method"),
        (["--learning_rate", "0.2", "--temperature", "8"], "learning_rate"),
        (["--learning_rate", "1e6"], "learning_rate"),
        (["--max_steps", "8"], "max_steps"),
    ):
        args = distill_args(teacher, out)
        args[args.index("--method") + 1] = "kd"
        with pytest.raises(
            RunDirectoryError, match=f"(?s)holds another run.*{field}:.*--overwrite_output_dir.*--allow_changes"
        ):
            distill.main(args + extra)
        assert snapshot(out) == before, extra  # refused before touching anything (run_config.yaml included)
    assert yaml.safe_load((out / "run_config.yaml").read_text())["learning_rate"] == 0.05
    # a named change continues the run from a checkpoint: a longer schedule
    longer = distill.main(
        distill_args(
            teacher,
            out,
            "--max_steps",
            "8",
            "--resume_from_checkpoint",
            str(out / "checkpoint-6"),
            "--allow_changes",
            "max_steps",
        )
    )
    assert json.loads((out / "trainer_state.json").read_text())["global_step"] == 8 and "eval_top1" in longer
    distill.main(distill_args(teacher, out, "--learning_rate", "0.01", "--overwrite_output_dir", "true"))
    assert json.loads((out / "run_state.json").read_text())["fingerprint"]["learning_rate"] == 0.01


def test_names_and_used_output_directories_are_refused_before_data_or_teacher_load(teacher, tmp_path, monkeypatch):
    """A misspelt student or method, or a changed command into a used output directory, is refused from the arguments
    alone: neither the dataset nor the teacher is touched (they can take minutes)."""
    import hf_mkcd.run

    def touched(*args, **kwargs):
        raise AssertionError("the dataset or the teacher was loaded before the arguments were checked")

    monkeypatch.setattr(hf_mkcd.run, "load_teacher", touched)
    monkeypatch.setattr(hf_mkcd.run, "prepare_datasets", touched)
    student = distill_args(teacher, tmp_path / "o")
    student[student.index("--model_name_or_path") + 1] = "cifar_resnet2O"  # a letter O for the zero
    with pytest.raises(ValueError, match="Unknown timm architecture .cifar_resnet2O.*Close matches: .*cifar_resnet20"):
        distill.main(student)
    method = distill_args(teacher, tmp_path / "o")
    method[method.index("--method") + 1] = "fitnets"
    with pytest.raises(ValueError, match="unknown method 'fitnets'. Did you mean fitnet"):
        distill.main(method)
    with pytest.raises(ValueError, match="--student_map 'last': choose one of last_block, prepool"):
        distill.main(distill_args(teacher, tmp_path / "o", "--student_map", "last"))
    with pytest.raises(RunDirectoryError, match="(?s)holds another run.*method: 'none' -> 'kd'"):
        distill.main(distill_args(teacher, teacher))  # the finished teacher's directory, another command
    assert not (tmp_path / "o").exists()


def test_foreign_directories_are_not_overwritten(teacher, tmp_path):
    before = snapshot(teacher)
    with pytest.raises(RunDirectoryError, match="(?s)holds another run.*method: 'none' -> 'kd'"):
        distill.main(distill_args(teacher, teacher))  # distilling into the finished teacher's directory
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "weights.pt").write_text("someone else's")
    with pytest.raises(RunDirectoryError, match="holds files that no hf_mkcd run wrote \\(weights.pt\\)"):
        distill.main(distill_args(teacher, foreign))
    assert snapshot(teacher) == before and (foreign / "weights.pt").read_text() == "someone else's"


def test_a_directory_in_use_is_locked_and_a_stale_lock_is_detected(teacher, tmp_path):
    out = tmp_path / "locked"
    out.mkdir()
    (out / LOCK_NAME).write_text(json.dumps({"pid": 1, "host": os.uname().nodename, "since": "then"}))  # pid 1 lives
    with pytest.raises(RunDirectoryError, match="is in use by process 1 on .* since then"):
        distill.main(distill_args(teacher, out))
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    (out / LOCK_NAME).write_text(json.dumps({"pid": int(dead.stdout), "host": os.uname().nodename, "since": "then"}))
    distill.main(distill_args(teacher, out))  # the killed process's lock is taken over
    assert not (out / LOCK_NAME).exists() and json.loads((out / "run_state.json").read_text())["status"] == "finished"


def test_incomplete_checkpoints_are_skipped_and_named(teacher, tmp_path, caplog):
    import logging

    caplog.set_level(logging.WARNING, logger="hf_mkcd")
    reference = tmp_path / "reference"
    distill.main(distill_args(teacher, reference))
    out = tmp_path / "broken"
    distill.main(distill_args(teacher, out, "--max_steps", "6", "--keep_checkpoints", "true"))
    state = json.loads((out / "run_state.json").read_text())
    state["status"] = "failed"  # as if it had been killed after checkpoint-6
    (out / "run_state.json").write_text(json.dumps(state))
    with open(out / "checkpoint-6" / "model.safetensors", "r+b") as f:
        f.truncate(1000)  # a truncated model file
    (out / "checkpoint-4" / "optimizer.pt").write_bytes(b"")  # an empty optimizer state
    distill.main(distill_args(teacher, out, "--keep_checkpoints", "true"))
    assert (
        "skipping incomplete checkpoint" in caplog.text
        and "checkpoint-6: model.safetensors is missing or corrupt" in caplog.text
    )
    assert "checkpoint-4: optimizer.pt is missing or corrupt" in caplog.text  # resumed from checkpoint-2
    for k, v in weights(reference).items():
        assert torch.equal(v, weights(out)[k]), k
    os.remove(out / "checkpoint-2" / "trainer_state.json")
    with pytest.raises(ValueError, match="cannot resume from .*checkpoint-2.*trainer_state.json is missing"):
        distill.main(
            distill_args(
                teacher, out, "--resume_from_checkpoint", str(out / "checkpoint-2"), "--overwrite_output_dir", "false"
            )
        )


def test_a_diverged_run_fails_and_is_marked_so(teacher, tmp_path):
    out = tmp_path / "diverged"
    with pytest.raises(FloatingPointError, match="non-finite"):
        distill.main(distill_args(teacher, out, "--learning_rate", "1e6", "--max_steps", "4"))
    state = json.loads((out / "run_state.json").read_text())
    assert state["status"] == "failed" and "FloatingPointError" in state["error"]
    assert not (out / "model.safetensors").exists() and not (out / "all_results.json").exists()
    assert not (out / LOCK_NAME).exists()


KILL_POINTS = ["step:3", "write:1", "write:3", "write:6", "write:9", "write:19"]


@pytest.fixture(scope="module")
def uninterrupted(teacher, tmp_path_factory):
    out = tmp_path_factory.mktemp("uninterrupted")
    distill.main(distill_args(teacher, out))
    return weights(out)


@pytest.mark.slow
@pytest.mark.parametrize("kill_at", KILL_POINTS)
def test_killed_anywhere_the_rerun_finishes_bit_identical(teacher, uninterrupted, tmp_path, kill_at):
    """SIGKILL after a step, or halfway through writing a checkpoint's model / optimizer / trainer state or the final
    model; the same command again must finish with a student bit-identical to an uninterrupted run."""
    out = tmp_path / "run"
    cmd = [sys.executable, os.path.join(ROOT, "tests", "fault_worker.py"), *distill_args(teacher, out)]
    env = {**os.environ, "HF_MKCD_KILL_AT": kill_at}
    killed = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert killed.returncode == -9, killed.stderr[-3000:]
    assert json.loads((out / "run_state.json").read_text())["status"] == "running"  # never marked finished
    env.pop("HF_MKCD_KILL_AT")
    rerun = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert json.loads((out / "run_state.json").read_text())["status"] == "finished"
    final = weights(out)
    for k, v in uninterrupted.items():
        assert torch.equal(v, final[k]), k
    assert not [e for e in os.listdir(out) if e.startswith((".staging", ".final-tmp"))]
