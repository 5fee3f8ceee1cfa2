"""DistillationTrainer through the Python API: what trains, what stays frozen, GA, resume, errors."""

import copy
import os

import pytest
import torch
from conftest import StopAt, tiny_args, tiny_data, tiny_student, tiny_teacher
from transformers import AutoModelForImageClassification, TrainerCallback

from hf_mkcd.callbacks import MultiStepSchedule
from hf_mkcd.trainer import DistillationTrainer


@pytest.fixture(scope="module")
def data():
    return tiny_data()


def test_mkcd_few_steps_trains_exactly_the_student(data, tmp_path):
    teacher = tiny_teacher()
    teacher_before = copy.deepcopy(teacher.state_dict())
    student = tiny_student(teacher, "mkcd", data)
    student_before = copy.deepcopy(student.state_dict())
    trainer = DistillationTrainer(
        model=student,
        teacher_model=teacher,
        args=tiny_args(tmp_path, max_steps=3),
        train_dataset=data.train,
        eval_dataset=data.eval,
    )
    # the optimizer holds the student's backbone and projector and the training-only mid-level projector, nothing
    # of the teacher or the frozen head
    trainer.create_optimizer()
    in_opt = {id(p) for g in trainer.optimizer.param_groups for p in g["params"]}
    mid = trainer.distiller.mid_projector
    own = {n for n, _ in trainer.distiller.named_parameters()}
    assert own == {f"mid_projector.{n}" for n, _ in mid.named_parameters()}
    assert in_opt == {id(p) for p in student.parameters()} | {id(p) for p in mid.parameters()}
    assert not in_opt & {id(p) for p in teacher.parameters()}
    trainer.train()
    for k, v in teacher.state_dict().items():  # weights and BN statistics untouched
        assert torch.equal(v, teacher_before[k]), k
    assert not teacher.training
    after = student.state_dict()
    assert torch.equal(after["classifier.weight"], teacher.fc.weight)  # frozen reused head
    changed = {
        k.split(".")[0] for k, v in after.items() if v.is_floating_point() and not torch.equal(v, student_before[k])
    }
    assert changed == {"backbone", "projector"}
    logs = [entry for entry in trainer.state.log_history if "loss" in entry]
    assert len(logs) == 3
    for entry in logs:
        assert {"loss_feat", "loss_mid", "loss_kd", "loss_ce", "temperature"} <= set(entry)
        terms = entry["loss_feat"] + entry["loss_mid"] + entry["loss_kd"] + entry["loss_ce"]
        assert entry["loss"] == pytest.approx(terms, rel=1e-4)
    metrics = trainer.evaluate()
    assert {"eval_top1", "eval_top5", "eval_accuracy"} <= set(metrics)
    trainer.save_model(str(tmp_path / "final"))
    files = set(os.listdir(tmp_path / "final"))
    # the mid-level projector is training state: saved beside the model (for a resume), not inside it
    assert "model.safetensors" in files and "distiller.safetensors" in files
    loaded = AutoModelForImageClassification.from_pretrained(tmp_path / "final").eval()
    student.eval()
    x = data.eval[0]["pixel_values"][None]
    for k, v in student.state_dict().items():  # bit-identical weights and buffers
        assert torch.equal(v, loaded.state_dict()[k]), k
    # The trained instance runs channels-last (the trainer's default) and the loaded one contiguous: their convolutions
    # sum in different orders, which moved logits by up to 2.7e-5 on a loaded machine. In the same memory format the
    # two run the same kernels on bit-identical weights, so the logits must agree to float32 rounding of a sum of
    # about 600 products (64 channels x 3x3 taps): 600 x 2^-24 = 3.6e-5 relative to the largest term, well above what
    # one reordering can cost and far below what a wrong weight gives.
    loaded = loaded.to(memory_format=torch.channels_last)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x).logits, student(x).logits, rtol=3.6e-5, atol=3.6e-5)


def _no_bn(model):
    """Replace BatchNorm by identity: batch statistics would make GA and one big batch differ by design."""
    for name, module in list(model.named_modules()):
        for child_name, child in list(module.named_children()):
            if isinstance(child, torch.nn.BatchNorm2d):
                setattr(module, child_name, torch.nn.Identity())
    return model


@pytest.mark.parametrize("method", ["kd", "mkcd"])
def test_gradient_accumulation_equals_one_large_batch(data, tmp_path, method):
    teacher = tiny_teacher()
    plain = tiny_data(augmentation="none")
    params = []
    for bs, ga in ((16, 1), (8, 2)):
        student = _no_bn(tiny_student(teacher, method, plain))
        args = tiny_args(
            tmp_path / f"{bs}x{ga}",
            method=method,
            max_steps=1,
            per_device_train_batch_size=bs,
            gradient_accumulation_steps=ga,
            optim_args="momentum=0.0",
            weight_decay=0.0,
            lr_scheduler_type="constant",
            max_grad_norm=0.0,
            learning_rate=0.5,
            # MKCD's default feature loss divides by the batch's teacher energy and its mid-level projector has BN:
            # batch statistics both, which differ between one batch and two halves by design (as BN does)
            distiller_kwargs={"feat_norm": "none", "mid_weight": 0.0} if method == "mkcd" else None,
        )
        DistillationTrainer(model=student, teacher_model=teacher, args=args, train_dataset=plain.train).train()
        params.append({k: v.clone() for k, v in student.named_parameters()})
    for k in params[0]:
        torch.testing.assert_close(params[0][k], params[1][k], rtol=1e-5, atol=1e-6, msg=k)


def test_resume_reproduces_the_uninterrupted_run(data, tmp_path):
    teacher = tiny_teacher()
    schedule = dict(
        temperature_schedule="linear_falling", max_steps=6, save_strategy="steps", save_steps=3, save_total_limit=None
    )
    straight = tiny_student(teacher, "mkcd", data)
    DistillationTrainer(
        model=straight, teacher_model=teacher, args=tiny_args(tmp_path / "a", **schedule), train_dataset=data.train
    ).train()
    interrupted = tiny_student(teacher, "mkcd", data)
    DistillationTrainer(
        model=interrupted,
        teacher_model=teacher,
        args=tiny_args(tmp_path / "b", **schedule),
        train_dataset=data.train,
        callbacks=[StopAt(3)],
    ).train()
    assert os.path.isdir(tmp_path / "b" / "checkpoint-3")
    fresh = tiny_student(teacher, "mkcd", data, seed=123)  # different init: everything must come from the checkpoint
    trainer = DistillationTrainer(
        model=fresh, teacher_model=teacher, args=tiny_args(tmp_path / "b", **schedule), train_dataset=data.train
    )
    trainer.train(resume_from_checkpoint=str(tmp_path / "b" / "checkpoint-3"))
    for k, v in straight.state_dict().items():
        assert torch.equal(v, fresh.state_dict()[k]), k
    temps = [e["temperature"] for e in trainer.state.log_history if "temperature" in e]
    # restored history (steps 1-3) + resumed steps: the schedule follows global_step / max_steps throughout
    assert temps == pytest.approx([8.0 - 7.0 * s / 6 for s in range(6)])


def test_nan_loss_stops_with_step_and_terms(data, tmp_path):
    teacher = tiny_teacher()
    student = tiny_student(teacher, "kd", data)
    with torch.no_grad():
        teacher.fc.weight[0, 0] = float("nan")  # the teacher's logits, hence the KD term, are NaN
    trainer = DistillationTrainer(
        model=student, teacher_model=teacher, args=tiny_args(tmp_path, method="kd"), train_dataset=data.train
    )
    with pytest.raises(FloatingPointError, match="non-finite loss at step 0.*loss_kd.*nan"):
        trainer.train()
    for bad in ("nan", "inf"):  # non-finite settings are refused before anything is built
        with pytest.raises(ValueError, match="kd_weight must be a finite number"):
            tiny_args(tmp_path, method="kd", kd_weight=float(bad))
        with pytest.raises(ValueError, match="temperature must be a finite number > 0"):
            tiny_args(tmp_path, method="kd", temperature=float(bad))


def test_refused_before_training(data, tmp_path):
    teacher = tiny_teacher()
    with pytest.raises(
        ValueError, match="method 'mkcd' .* needs a projector; this student has projector=None.*from_teacher"
    ):
        DistillationTrainer(
            model=tiny_student(teacher, "kd", data),
            teacher_model=teacher,
            args=tiny_args(tmp_path, method="mkcd"),
            train_dataset=data.train,
        )
    with pytest.raises(ValueError, match="needs a teacher"):
        DistillationTrainer(
            model=tiny_student(teacher, "kd", data), args=tiny_args(tmp_path, method="kd"), train_dataset=data.train
        )
    with pytest.raises(ValueError, match="class-count mismatch"):
        DistillationTrainer(
            model=tiny_student(teacher, "kd", data),
            teacher_model=tiny_teacher(num_classes=7),
            args=tiny_args(tmp_path, method="kd"),
            train_dataset=data.train,
        )
    wide = __import__("timm").create_model("cifar_wrn_16_2", in_chans=1, num_classes=10).eval()
    with pytest.raises(ValueError, match="feature-shape mismatch"):
        DistillationTrainer(
            model=tiny_student(teacher, "mkcd", data),
            teacher_model=wide,
            args=tiny_args(tmp_path),
            train_dataset=data.train,
        )
    with pytest.raises(ValueError, match="unknown method"):
        tiny_args(tmp_path, method="fitnett")
    with pytest.raises(ValueError, match="has no \\['feat_weight'\\]"):
        DistillationTrainer(
            model=tiny_student(teacher, "kd", data),
            teacher_model=teacher,
            args=tiny_args(tmp_path, method="kd", feat_weight=1.0),
            train_dataset=data.train,
        )


def test_multistep_lr_schedule(data, tmp_path):
    sched = MultiStepSchedule([4, 8], 0.1)
    assert [sched(s) for s in (0, 3, 4, 7, 8, 20)] == pytest.approx([1, 1, 0.1, 0.1, 0.01, 0.01])
    teacher = tiny_teacher()
    args = tiny_args(tmp_path, method="kd", max_steps=-1, num_train_epochs=3, lr_decay_epochs=[1, 2], learning_rate=0.1)
    trainer = DistillationTrainer(
        model=tiny_student(teacher, "kd", data), teacher_model=teacher, args=args, train_dataset=data.train
    )
    trainer.train()
    lrs = [e["learning_rate"] for e in trainer.state.log_history if "learning_rate" in e]
    assert lrs == pytest.approx([0.1] * 4 + [0.01] * 4 + [0.001] * 4)  # 64 samples / 16 = 4 steps per epoch
    assert trainer.state.global_step == 12


def test_augmentation_is_a_function_of_seed_epoch_and_index(data):
    transform = data.train.format["format_kwargs"]["transform"]
    transform.set_epoch(0)
    first = data.train[5]["pixel_values"]
    torch.manual_seed(1234)  # the global RNG does not matter
    assert torch.equal(data.train[5]["pixel_values"], first)
    transform.set_epoch(1)
    assert not torch.equal(data.train[5]["pixel_values"], first)  # a new epoch draws new crops/flips
    transform.set_epoch(0)
    assert torch.equal(data.train[5]["pixel_values"], first)


def test_weight_decay_covers_every_parameter_like_the_cifar_reference(data, tmp_path):
    teacher = tiny_teacher()
    for decay_all, bias_decay in ((True, 5e-4), (False, 0.0)):
        trainer = DistillationTrainer(
            model=tiny_student(teacher, "kd", data),
            teacher_model=teacher,
            args=tiny_args(tmp_path, method="kd", weight_decay=5e-4, weight_decay_all=decay_all),
            train_dataset=data.train,
        )
        trainer.create_optimizer()
        bias = trainer.student.backbone.bn1.bias
        group = next(g for g in trainer.optimizer.param_groups if any(p is bias for p in g["params"]))
        assert group["weight_decay"] == bias_decay


class GradNorm(TrainerCallback):
    """The gradient norm the optimizer is about to apply (after any clipping)."""

    def __init__(self):
        self.norms = []

    def on_pre_optimizer_step(self, args, state, control, model=None, **kwargs):
        grads = [p.grad for p in model.parameters() if p.grad is not None]
        self.norms.append(float(torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads]))))


def test_cifar_defaults_leave_gradients_unclipped(data, tmp_path):
    """The reference CIFAR loops never clip: neither do the defaults (transformers' own default is 1.0)."""
    from hf_mkcd.trainer import DistillationTrainingArguments

    assert DistillationTrainingArguments(output_dir=str(tmp_path)).max_grad_norm == 0.0
    teacher = tiny_teacher()
    norms = {}
    for name, extra in (("default", {}), ("clip1", {"max_grad_norm": 1.0})):
        probe = GradNorm()
        args = tiny_args(tmp_path / name, method="at", max_steps=1, **extra)  # tiny_args keeps the default norm
        DistillationTrainer(
            model=tiny_student(teacher, "at", data),
            teacher_model=teacher,
            args=args,
            train_dataset=data.train,
            callbacks=[probe],
        ).train()
        norms[name] = probe.norms[0]
    assert norms["default"] > 10.0  # AT x 1000 at initialisation: a large gradient reaches the optimizer as it is
    assert norms["clip1"] == pytest.approx(1.0, rel=1e-4)  # the flag still clips for whoever asks


def test_private_trainer_hooks_we_override_keep_their_contract():
    """DistillationTrainer overrides Trainer's private _save / _load_from_checkpoint / _load_best_model /
    _save_checkpoint. A transformers release that renames them or changes their arguments fails here,
    loudly, rather than silently skipping our checkpoint format (the resume tests pin the behaviour)."""
    import inspect

    from transformers import Trainer

    expected = {
        "_save": ["self", "output_dir", "state_dict"],
        "_load_from_checkpoint": ["self", "resume_from_checkpoint", "model"],
        "_load_best_model": ["self"],
        "_save_checkpoint": ["self", "model", "trial"],
    }
    for name, params in expected.items():
        assert list(inspect.signature(getattr(Trainer, name)).parameters) == params, name
        assert name in DistillationTrainer.__dict__ or name == "_save_checkpoint", name
    source = inspect.getsource(Trainer._save_checkpoint)
    assert "self.save_model(output_dir, _internal_call=True)" in source and "_get_output_dir" in source
    assert "self._load_from_checkpoint(resume_from_checkpoint)" in inspect.getsource(Trainer.train)


def test_another_scheduler_is_used_as_chosen_and_an_empty_decay_list_is_off(data, tmp_path, caplog):
    """lr_decay_epochs decays the constant scheduler only; --lr_scheduler_type linear is honoured as asked."""
    import logging

    caplog.set_level(logging.WARNING, logger="hf_mkcd")
    assert tiny_args(tmp_path, lr_decay_epochs=[]).lr_decay_epochs is None  # `lr_decay_epochs: []` in a recipe: off
    assert tiny_args(tmp_path, lr_decay_epochs=None).lr_decay_epochs == [150, 180, 210]  # unset: the CIFAR recipe's
    assert tiny_args(tmp_path, lr_decay_epochs=None, lr_scheduler_type="cosine").lr_decay_epochs is None
    assert caplog.text == ""  # a scheduler chosen without --lr_decay_epochs: nothing was ignored, nothing to say
    args = tiny_args(
        tmp_path, method="kd", max_steps=4, lr_scheduler_type="linear", lr_decay_epochs=[1], learning_rate=0.1
    )
    assert args.lr_decay_epochs is None and "is used as it is" in caplog.text
    teacher = tiny_teacher()
    trainer = DistillationTrainer(
        model=tiny_student(teacher, "kd", data), teacher_model=teacher, args=args, train_dataset=data.train
    )
    trainer.train()
    lrs = [e["learning_rate"] for e in trainer.state.log_history if "learning_rate" in e]
    assert lrs == pytest.approx([0.1, 0.075, 0.05, 0.025])  # linear decay to 0 over 4 steps


@pytest.mark.parametrize(
    "method",
    [
        "ab",
        "at",
        "crd",
        "ctkd",
        "dist",
        "dkd",
        "fitnet",
        "kd",
        "mkcd",
        "mlkd",
        "ofd",
        "reviewkd",
        "rkd",
        "simkd",
        "sp",
        "srrl",
    ],
)
def test_a_training_step_reads_nothing_on_the_host(data, tmp_path, method):
    """A GPU step must not wait for the host. After the first step (which may size or estimate something once),
    a training step, optimizer step included, reads no tensor value on the host: no item / bool / float / int /
    tolist; the non-finite-loss check is kept on the device and read at logging cadence. Counted on CPU tensors."""
    from transformers import TrainerCallback

    from hf_mkcd.distillers import get_distiller_class

    reads, counting = [], []
    names = ("item", "__bool__", "__float__", "__int__", "tolist", "__index__")
    originals = {n: getattr(torch.Tensor, n) for n in names}

    def counted(name):
        def read(self, *args, **kwargs):
            if counting:
                import traceback

                reads.append((name, traceback.format_stack(limit=6)[-2].strip()))
            return originals[name](self, *args, **kwargs)

        return read

    class Window(TrainerCallback):
        def on_step_begin(self, args, state, control, **kwargs):
            if state.global_step >= 1:
                counting.append(True)

        def on_step_end(self, args, state, control, **kwargs):
            counting.clear()

    d = tiny_data(views=get_distiller_class(method).views) if get_distiller_class(method).views else data
    teacher = tiny_teacher()
    args = tiny_args(
        tmp_path,
        method=method,
        max_steps=3,
        logging_steps=100,
        **({"distiller_kwargs": '{"init_epochs": 1}'} if method == "ab" else {}),
    )
    trainer = DistillationTrainer(
        model=tiny_student(teacher, method, d),
        teacher_model=teacher,
        args=args,
        train_dataset=d.train,
        callbacks=[Window()],
    )
    for n in names:
        setattr(torch.Tensor, n, counted(n))
    try:
        trainer.train()
    finally:
        for n, f in originals.items():
            setattr(torch.Tensor, n, f)
    assert trainer.state.global_step == 3
    assert reads == [], reads[:5]


def test_torch_compile_traces_the_distillation_step_once(data, tmp_path):
    """Why --torch_compile stalled: the progressive temperature read ``global_step / max_steps`` as a Python float,
    which a compiled graph guards on, so every step recompiled. Progress now lives on the device; over two epochs
    of full batches (the temperature moving every step) the step is traced once (dynamo's eager backend: the
    tracing is what is counted, not a compiler)."""
    from torch._dynamo.utils import counters

    teacher = tiny_teacher()
    args = tiny_args(
        tmp_path,
        method="mkcd",
        max_steps=-1,
        num_train_epochs=2,
        logging_steps=4,
        torch_compile=True,
        torch_compile_backend="eager",
    )
    trainer = DistillationTrainer(
        model=tiny_student(teacher, "mkcd", data), teacher_model=teacher, args=args, train_dataset=data.train
    )
    counters.clear()
    trainer.train()
    assert trainer.state.global_step == 8  # 64 images, batch 16, 2 epochs
    assert counters["stats"]["unique_graphs"] == 1, dict(counters["stats"])
    temps = [e["temperature"] for e in trainer.state.log_history if "temperature" in e]
    assert temps == pytest.approx([1 + 7 * 3 / 8, 1 + 7 * 7 / 8])  # the last step of each log window, rising 1 -> 8


def test_training_images_held_on_the_device_give_the_dataloader_paths_weights(data, tmp_path):
    """--device_data: the training set as one uint8 tensor where the model runs, each batch cropped and flipped
    there in one gather. Same sampler, same draws of (seed, epoch, index): two epochs of KD end with exactly the
    weights of the DataLoader path (here the device is the CPU). Methods with extra views keep the DataLoader."""
    from hf_mkcd.device_data import DeviceImages

    weights = {}
    for device_data in (False, True):
        teacher = tiny_teacher()
        args = tiny_args(
            tmp_path / str(device_data), method="kd", max_steps=-1, num_train_epochs=2, device_data=device_data
        )
        trainer = DistillationTrainer(
            model=tiny_student(teacher, "kd", data), teacher_model=teacher, args=args, train_dataset=data.train
        )
        assert isinstance(trainer.train_dataset, DeviceImages) == device_data
        trainer.train()
        weights[device_data] = {k: v.clone() for k, v in trainer.student.state_dict().items()}
    assert trainer.state.global_step == 8
    assert any("held in cpu memory" in note for note in trainer.plan_notes)
    for k, v in weights[False].items():
        assert torch.equal(v, weights[True][k]), k
    views = tiny_data(views=("strong",))
    with pytest.raises(ValueError, match="extra view.*DataLoader path"):
        DistillationTrainer(
            model=tiny_student(tiny_teacher(), "mlkd", views),
            teacher_model=tiny_teacher(),
            args=tiny_args(tmp_path / "mlkd", method="mlkd", device_data=True),
            train_dataset=views.train,
        )
