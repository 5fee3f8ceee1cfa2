"""The teacher-output cache: a cached run equals the uncached one, and a wrong or partial cache is never read."""

import glob
import os

import numpy as np
import pytest
import torch
from conftest import StopAt, tiny_args, tiny_data, tiny_student, tiny_teacher

from hf_mkcd.teacher_cache import TeacherCacheMismatch
from hf_mkcd.trainer import DistillationTrainer


@pytest.fixture(scope="module")
def data():
    return tiny_data(n_train=48)


def run(
    data, tmp_path, name, method="kd", teacher=None, cache=None, callbacks=(), resume=None, forbid_teacher=False, **kw
):
    teacher = teacher or tiny_teacher()
    student = tiny_student(teacher, method, data)
    args = tiny_args(
        tmp_path / name, **{"method": method, "max_steps": -1, "num_train_epochs": 2, "teacher_cache": cache, **kw}
    )
    trainer = DistillationTrainer(
        model=student, teacher_model=teacher, args=args, train_dataset=data.train, callbacks=list(callbacks)
    )
    if forbid_teacher:  # building and validating probed it; from here on, training must not run it
        no_teacher(trainer.teacher)
    trainer.train(resume_from_checkpoint=resume)
    losses = [{k: v for k, v in e.items() if k.startswith("loss")} for e in trainer.state.log_history if "loss" in e]
    return trainer, losses, {k: v.clone() for k, v in student.state_dict().items()}


def no_teacher(teacher):
    def forbidden(*args, **kwargs):
        raise AssertionError("the teacher ran although the cache holds its outputs")

    teacher.forward_features = teacher.forward_intermediates = teacher.forward_stage_maps = forbidden
    return teacher


def test_cached_run_equals_uncached_and_never_runs_the_teacher(data, tmp_path):
    cache = str(tmp_path / "cache")
    _, plain, w_plain = run(data, tmp_path, "plain")
    builder, building, w_building = run(data, tmp_path, "build", cache=cache)
    assert builder.teacher_cache.misses == 96 and builder.teacher_cache.hits == 0  # 2 epochs x 48 samples stored
    reader, cached, w_cached = run(data, tmp_path, "read", forbid_teacher=True, cache=cache)
    assert reader.teacher_cache.hits == 96 and reader.teacher_cache.misses == 0
    assert plain == building == cached  # float32 logits: bit-identical losses
    for k in w_plain:
        assert torch.equal(w_plain[k], w_cached[k]), k
    files = sorted(os.path.basename(p) for p in glob.glob(os.path.join(cache, "epoch_0000", "*")))
    assert files == ["main.logits.filled.npy", "main.logits.npy"]
    assert np.load(os.path.join(cache, "epoch_0001", "main.logits.filled.npy")).all()
    # another method and seed on the same teacher and data pipeline share it
    other, _, _ = run(data, tmp_path, "dkd", method="dkd", forbid_teacher=True, cache=cache, seed=7)
    assert other.teacher_cache.hits == 96


def test_cache_for_another_teacher_or_pipeline_is_refused(data, tmp_path):
    cache = str(tmp_path / "cache")
    run(data, tmp_path, "a", cache=cache, max_steps=1)
    with pytest.raises(TeacherCacheMismatch, match="teacher_sha256: cache"):
        run(data, tmp_path, "b", teacher=tiny_teacher(seed=5), cache=cache, max_steps=1)
    bigger = tiny_data(size=20, n_train=48)
    with pytest.raises(
        TeacherCacheMismatch, match="preprocessing.image_size: cache \\[16, 16\\] vs this run \\[20, 20\\]"
    ):
        run(bigger, tmp_path, "c", cache=cache, max_steps=1)


def test_half_written_rows_are_recomputed_never_read(data, tmp_path):
    cache = str(tmp_path / "cache")
    _, plain, w_plain = run(data, tmp_path, "plain")
    run(data, tmp_path, "build", cache=cache)
    values = np.load(os.path.join(cache, "epoch_0001", "main.logits.npy"), mmap_mode="r+")
    filled = np.load(os.path.join(cache, "epoch_0001", "main.logits.filled.npy"), mmap_mode="r+")
    values[10:30] = np.nan  # a run killed after writing these rows' values, before their flags
    filled[10:30] = 0
    values.flush(), filled.flush()
    os.makedirs(os.path.join(cache, "epoch_0001", ".main.logits.partial"))  # a creation that never finished
    trainer, losses, weights = run(data, tmp_path, "read", cache=cache)
    assert losses == plain and all(torch.equal(weights[k], w_plain[k]) for k in weights)
    assert 0 < trainer.teacher_cache.misses < 96
    assert np.load(os.path.join(cache, "epoch_0001", "main.logits.filled.npy")).all()  # completed
    assert not np.isnan(np.load(os.path.join(cache, "epoch_0001", "main.logits.npy"))).any()


def test_resume_with_a_cache(data, tmp_path):
    cache = str(tmp_path / "cache")
    _, _, w_plain = run(data, tmp_path, "plain")
    save = dict(save_strategy="steps", save_steps=2, save_total_limit=None)
    run(data, tmp_path, "resumed", cache=cache, callbacks=[StopAt(2)], **save)
    trainer, _, weights = run(
        data, tmp_path, "resumed", cache=cache, resume=str(tmp_path / "resumed" / "checkpoint-2"), **save
    )
    assert trainer.teacher_cache.hits == 0 and trainer.teacher_cache.misses == 64  # steps 3-6 were never cached
    assert all(torch.equal(weights[k], w_plain[k]) for k in weights)


MAP_FILES = {  # what each method reads from the teacher, stored in float16: one file per stage map
    "mkcd": ["features", "stages.0", "stages.3"],  # the default reads a stage map (its mid-level term)
    "rkd": ["pooled"],
    "fitnet": ["stages.0", "stages.3"],
    "ofd": ["preact_stages.0", "preact_stages.3"],
}


@pytest.mark.parametrize("method", sorted(MAP_FILES))
def test_maps_and_pooled_features_in_float16(data, tmp_path, method):
    cache = str(tmp_path / "cache")
    _, plain, _ = run(data, tmp_path, "plain", method=method)
    run(data, tmp_path, "build", method=method, cache=cache)
    reader, cached, _ = run(data, tmp_path, "read", method=method, forbid_teacher=True, cache=cache)
    assert reader.teacher_cache.hits == 96
    for key in MAP_FILES[method]:
        assert np.load(os.path.join(cache, "epoch_0000", f"main.{key}.npy"), mmap_mode="r").dtype == np.float16
    first_plain, first_cached = plain[0], cached[0]  # the same student: only the cache's precision differs
    for k in first_plain:  # float16 maps: a relative error of about 1e-3, which the losses carry
        assert first_cached[k] == pytest.approx(first_plain[k], rel=3e-3, abs=1e-5), k
    assert [sorted(e) for e in cached] == [sorted(e) for e in plain]


def test_stage_maps_are_cached_and_the_size_is_planned(data, tmp_path, monkeypatch, caplog):
    import logging
    from collections import namedtuple

    caplog.set_level(logging.INFO, logger="hf_mkcd")
    trainer, _, _ = run(data, tmp_path, "at", method="at", cache=str(tmp_path / "cache"), max_steps=1)
    assert trainer.teacher_cache is not None and "the teacher runs every step" not in caplog.text
    # the plan's size is every stage map in float16 (+1 flag byte per file) for 48 samples: read back from the files
    stage_files = sorted(glob.glob(os.path.join(str(tmp_path / "cache"), "epoch_0000", "main.stages.*[0-9].npy")))
    assert len(stage_files) == 4
    per_sample = sum(np.load(f, mmap_mode="r")[0].size * 2 + 1 for f in stage_files)
    assert f"stages (float16 maps), {per_sample * 48 / 2**20:.1f} MiB per epoch" in caplog.text
    run(data, tmp_path, "kd", cache=str(tmp_path / "cache2"), max_steps=1)
    assert "teacher cache" in caplog.text and "per epoch" in caplog.text
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr("hf_mkcd.teacher_cache.shutil.disk_usage", lambda path: usage(100, 100, 10))
    with pytest.raises(ValueError, match="teacher cache would need .* more .* only 0.0 MiB are free"):
        run(data, tmp_path, "full", cache=str(tmp_path / "cache3"), max_steps=1)


def test_cache_built_ahead_by_the_script(tmp_path):
    """scripts/cache_teacher.py with the run's own arguments fills every epoch; the run then never runs the teacher.
    Rows are computed in other batches than the run's (sequential, not shuffled): equal to float32 rounding."""
    import sys

    root = os.path.dirname(os.path.dirname(__file__))
    sys.path.insert(0, os.path.join(root, "scripts"))
    import cache_teacher
    import distill
    import train_teacher

    tiny = [
        "--skip_teacher_check",  # a teacher of two steps: at chance by design
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
        "16",
        "--use_cpu",
        "true",
        "--report_to",
        "none",
        "--disable_tqdm",
        "true",
        "--save_strategy",
        "no",
        "--eval_strategy",
        "no",
        "--logging_steps",
        "1",
        "--num_train_epochs",
        "2",
    ]
    train_teacher.main(
        ["--model_name_or_path", "cifar_resnet20", "--output_dir", str(tmp_path / "t"), *tiny, "--max_steps", "2"]
    )
    run_args = [
        "--teacher_model_name_or_path",
        str(tmp_path / "t"),
        "--model_name_or_path",
        "cifar_resnet20",
        "--method",
        "kd",
        *tiny,
    ]
    assert (
        cache_teacher.main([*run_args, "--teacher_cache", str(tmp_path / "c"), "--output_dir", str(tmp_path / "x")])
        == 0
    )
    for epoch in (0, 1):
        assert np.load(tmp_path / "c" / f"epoch_000{epoch}" / "main.logits.filled.npy").all()
    plain = distill.main([*run_args, "--output_dir", str(tmp_path / "plain")])
    cached = distill.main([*run_args, "--output_dir", str(tmp_path / "cached"), "--teacher_cache", str(tmp_path / "c")])
    assert cached["train_loss"] == pytest.approx(plain["train_loss"], rel=1e-5)
    assert cached["eval_top1"] == plain["eval_top1"]


def test_a_complete_epoch_held_in_device_memory_reads_the_same_values(data, tmp_path):
    """On a GPU a complete cached epoch is held in device memory (reads become gathers there, no file read, no
    host-device copy): the values are exactly those read from the files. Here the 'device' is the CPU."""
    from hf_mkcd.teacher import DistillationTeacher

    teacher = tiny_teacher()
    student = tiny_student(teacher, "mkcd", data)
    args = tiny_args(
        tmp_path / "run",
        method="mkcd",
        teacher_cache=str(tmp_path / "cache"),
        max_steps=-1,
        num_train_epochs=1,
    )
    trainer = DistillationTrainer(model=student, teacher_model=teacher, args=args, train_dataset=data.train)
    trainer.train()  # epoch 0 written, complete
    cache, needs = trainer.teacher_cache, trainer.distiller.teacher_needs
    index = torch.tensor([5, 0, 33, 17])
    from_files = cache.read(0, index, needs)
    held, size = cache.mirror(0, torch.device("cpu"), needs, budget_bytes=None)
    assert held and size > 0 and cache.mirror(1, torch.device("cpu"), needs) == (False, None)  # epoch 1: absent
    cache.mirror(0, torch.device("cpu"), needs)
    gathered = cache.read(0, index, needs)
    assert "stages" in needs and len(from_files["stages"]) == 4  # MKCD's mid-level term: the stage maps, held too
    for key in needs:
        assert all(map(torch.equal, _listed(gathered[key]), _listed(from_files[key]))), key
    assert cache.mirror(0, torch.device("cpu"), needs, budget_bytes=size - 1) == (True, size)  # already held
    runner = DistillationTeacher(teacher, needs, cache=cache, mirror_device=torch.device("cpu"))
    batch = {"pixel_values": torch.zeros(4, 1, 16, 16), "index": index, "aug_epoch": torch.zeros(4, dtype=torch.long)}
    out = runner(batch, {})
    for key in needs:
        assert all(map(torch.equal, _listed(out[key]), _listed(from_files[key]))), key


def _listed(value):
    return value if isinstance(value, list) else [value]
