"""Training speed, measured side by side in one process: every method's step against the floor, then the
whole Trainer with the real data pipeline.

    python scripts/benchmark_speed.py                       # resnet32x4 -> resnet8x4, batch 64, 32x32, 100 classes
    python scripts/benchmark_speed.py --steps 10 --methods kd mkcd dkd
    python scripts/benchmark_speed.py --output results/speed_cpu.json --readme   # + refresh the README's Speed tables
    MALLOC_MMAP_THRESHOLD_=34359738368 MALLOC_TRIM_THRESHOLD_=34359738368 \
        python scripts/benchmark_speed.py --output results/speed_cpu_malloc.json    # glibc keeps large blocks

Part 1, per-method step cost: each method's real ``DistillationTrainer.training_step`` (teacher forward,
student forward, loss, backward) plus the optimizer step, on one fixed batch; every kind of step is timed
once per round, ``--steps`` rounds after ``--warmup`` warm-up calls, and the median is reported, so all
are measured over the same stretch of time. The floor is what any distillation step must pay: one teacher
forward (no_grad) plus one cross-entropy-only student step, both measured in the same run. Every method with a
teacher is timed again reading its teacher outputs (stage maps included) from a ``--teacher_cache`` built for the
batch, and its cached step is given as a multiple of the cached KD step.

Part 2, end-to-end: the real Trainer on Fashion-MNIST padded to 32x32 RGB (``--e2e_samples`` images), kd and
mkcd, uncached and cached: images/s, and where each step's time goes (data, teacher, student forward and
loss, backward, optimizer, logging, other).

Writes ``results/speed_<device>.json``; ``--readme`` regenerates the README's Speed section from it.
"""

import argparse
import datetime
import json
import os
import platform
import statistics
import sys
import tempfile
import time

import numpy as np
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from hf_mkcd.data import DataArguments, prepare_datasets  # noqa: E402
from hf_mkcd.distillers import get_distiller_class, list_distillers  # noqa: E402
from hf_mkcd.run import ModelArguments, build_student  # noqa: E402
from hf_mkcd.trainer import DistillationTrainer, DistillationTrainingArguments  # noqa: E402


def device_name(device: str) -> str:
    if device == "cuda":
        return torch.cuda.get_device_name(0)
    model = platform.processor() or "cpu"
    try:
        with open("/proc/cpuinfo") as f:
            model = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return f"{model}, {torch.get_num_threads()} threads"


def synthetic_data(tmp: str, n: int, size: int, classes: int, views=()):
    """Random RGB images (raw arrays), prepared by the library's own pipeline. ``n`` matters to methods with
    per-sample state: CRD's memory bank has one row per training sample, as on CIFAR's 50,000."""
    from datasets import Array3D, ClassLabel, Dataset, DatasetDict, Features

    rng = np.random.default_rng(0)
    features = Features(
        {"image": Array3D((size, size, 3), "uint8"), "label": ClassLabel(names=[f"c{i}" for i in range(classes)])}
    )
    split = Dataset.from_dict(
        {"image": rng.integers(0, 256, (n, size, size, 3), dtype=np.uint8), "label": rng.integers(0, classes, n)},
        features=features,
    )
    path = os.path.join(tmp, f"synthetic_{n}_{size}_{classes}")
    if not os.path.isdir(path):
        DatasetDict(train=split, test=split.select(range(min(n, 64)))).save_to_disk(path)
    return prepare_datasets(
        DataArguments(dataset_name=path, image_mean=[0.5] * 3, image_std=[0.25] * 3), 3, size, views=views
    )


def make_trainer(method: str, teacher, data, output_dir: str, batch: int, cache=None, **extra):
    cls = get_distiller_class(method)
    student = build_student(
        ModelArguments(model_name_or_path=extra.pop("student")),
        cls,
        teacher if cls.needs_teacher else None,
        data,
        data.train[0]["pixel_values"].shape[-1],
    )
    settings = dict(
        output_dir=output_dir,
        method=method,
        per_device_train_batch_size=batch,
        use_cpu=not torch.cuda.is_available(),
        report_to="none",
        disable_tqdm=True,
        save_strategy="no",
        eval_strategy="no",
        logging_steps=50,
        teacher_cache=cache,
        num_train_epochs=1,
        dataloader_num_workers=extra.pop("workers", 0),
        seed=0,
    )
    args = DistillationTrainingArguments(**{**settings, **extra})
    trainer = DistillationTrainer(
        model=student, teacher_model=teacher if cls.needs_teacher else None, args=args, train_dataset=data.train
    )
    trainer.current_gradient_accumulation_steps = 1  # what train() sets before its first training_step
    return trainer


# glibc's allocator settings that decide whether large activations are mmapped (and page-faulted) afresh every step
MALLOC_ENV = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_")


def round_robin(fns: dict, steps: int, warmup: int, sync) -> dict:
    """Median ms of each callable, timed in turns (one call of each per round) so that every one is measured
    over the same stretch of time: on a noisy machine only side-by-side ratios mean anything."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    times = {name: [] for name in fns}
    for _ in range(steps):
        for name, fn in fns.items():
            sync()
            t0 = time.perf_counter()
            fn()
            sync()
            times[name].append(time.perf_counter() - t0)
    return {name: statistics.median(t) * 1000 for name, t in times.items()}


def plain_kd_step(a, teacher, batch):
    """A KD step written the way the reference CIFAR loops run it (RepDistiller / mdistiller): plain PyTorch, NCHW
    tensors, teacher forward under no_grad, student forward, CE + KD, backward, SGD. Our own code, for a
    side-by-side figure: the library's KD step is compared with it in the same rounds."""
    import copy

    import timm

    from hf_mkcd.distillers.losses import kd_loss

    teacher = copy.deepcopy(teacher).to(memory_format=torch.contiguous_format)
    student = timm.create_model(a.student, num_classes=a.classes).to(a.device).train()
    optimizer = torch.optim.SGD(student.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
    x = batch["pixel_values"].contiguous()
    y = batch["labels"]

    def step():
        with torch.no_grad():
            t_logits = teacher(x)
        s_logits = student(x)
        loss = 0.1 * torch.nn.functional.cross_entropy(s_logits, y) + 0.9 * kd_loss(s_logits, t_logits, 4.0)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return step


def per_method(a, teacher, sync, tmp) -> dict:
    views_of = {m: get_distiller_class(m).views for m in a.methods}
    all_views = tuple(sorted({v for vs in views_of.values() for v in vs}))
    data = synthetic_data(tmp, a.train_samples, a.image_size, a.classes, views=all_views)
    batch = next(iter(torch.utils.data.DataLoader(data.train, batch_size=a.batch)))
    batch = {k: (v.to(a.device) if torch.is_tensor(v) else v) for k, v in batch.items()}

    def step_fn(trainer):
        trainer.create_optimizer()
        model, optimizer = trainer.model, trainer.optimizer

        def step():
            trainer.training_step(model, batch)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)

        return step

    def teacher_forward():
        with torch.no_grad():
            teacher(batch["pixel_values"])

    fns = {
        "plain PyTorch KD step (NCHW)": plain_kd_step(a, teacher, batch),
        "teacher forward": teacher_forward,
        "CE-only student step": step_fn(
            make_trainer("none", teacher, data, os.path.join(tmp, "none"), a.batch, student=a.student)
        ),
    }
    for method in a.methods:
        if method == "none":
            continue
        trainer = make_trainer(method, teacher, data, os.path.join(tmp, method), a.batch, student=a.student)
        fns[method] = step_fn(trainer)
        if trainer.distiller.teacher_needs:  # every teacher output is cacheable, stage maps included
            cached = make_trainer(
                method,
                teacher,
                data,
                os.path.join(tmp, method + "_c"),
                a.batch,
                student=a.student,
                cache=os.path.join(tmp, f"cache_{method}"),
            )
            cached._teacher_outputs(batch, {v: batch[f"pixel_values_{v}"] for v in cached.distiller.views})  # fill
            fns[f"{method} (cached)"] = step_fn(cached)
    print(f"timing {len(fns)} step kinds, {a.steps} rounds after {a.warmup} warm-up calls each ...")
    ms = round_robin(fns, a.steps, a.warmup, sync)
    t_teacher, t_ce = ms["teacher forward"], ms["CE-only student step"]
    floor = t_teacher + t_ce
    print(
        f"\nfloor = teacher forward {t_teacher:.1f} ms + CE-only student step {t_ce:.1f} ms = {floor:.1f} ms "
        f"({a.teacher} -> {a.student}, batch {a.batch}, {a.image_size}x{a.image_size}, {a.classes} classes)"
    )
    print(f"{'method':10s} {'ms/step':>9s} {'x floor':>8s} {'cached ms':>10s} {'x floor':>8s} {'x KD cached':>12s}")
    rows = {}
    for method in a.methods:
        if method == "none":
            continue
        row = {"ms": ms[method], "x_floor": ms[method] / floor, "cached_ms": ms.get(f"{method} (cached)")}
        row["cached_x_floor"] = row["cached_ms"] / floor if row["cached_ms"] else None
        kd_cached = ms.get("kd (cached)")
        row["cached_x_kd_cached"] = row["cached_ms"] / kd_cached if row["cached_ms"] and kd_cached else None
        rows[method] = row
        cached = (
            f"{row['cached_ms']:>10.1f} {row['cached_x_floor']:>8.2f} {row['cached_x_kd_cached'] or 0:>12.2f}"
            if row["cached_ms"]
            else f"{'-':>10s} {'-':>8s} {'-':>12s}"
        )
        print(f"{method:10s} {row['ms']:>9.1f} {row['x_floor']:>8.2f} {cached}")
    plain = ms["plain PyTorch KD step (NCHW)"]
    print(
        f"\nplain PyTorch KD step (NCHW, as the reference loops run): {plain:.1f} ms"
        + (
            f"; hf_mkcd's KD step is {ms['kd'] / plain:.2f}x of it, {rows['kd']['cached_ms'] / plain:.2f}x with the "
            "teacher cache"
            if "kd" in rows
            else ""
        )
    )
    return {
        "teacher_forward_ms": t_teacher,
        "ce_step_ms": t_ce,
        "floor_ms": floor,
        "plain_kd_ms": plain,
        "methods": rows,
    }


class Breakdown:
    """Wall time of each part of the Trainer's steps, by wrapping the trainer's own methods. Counted from the end
    of the first step (start-up and first-step costs excluded) to the end of the last."""

    PARTS = ("data", "teacher", "student", "backward", "optimizer", "logging")

    def __init__(self, trainer, sync):
        from transformers import TrainerCallback

        self.t = dict.fromkeys(self.PARTS, 0.0)
        self.sync, self.active, self.window, self.steps = sync, False, [None, None], 0
        self._wrap(trainer, "get_batch_samples", "data")
        self._wrap(trainer, "_teacher_outputs", "teacher")
        self._wrap(trainer.model, "forward", "student")
        self._wrap(trainer.accelerator, "backward", "backward")
        self._wrap(trainer, "log", "logging")
        outer = self

        class Clock(TrainerCallback):
            def on_pre_optimizer_step(self, args, state, control, **kwargs):
                outer.sync()
                self.t0 = time.perf_counter()

            def on_optimizer_step(self, args, state, control, **kwargs):
                outer.sync()
                if outer.active:
                    outer.t["optimizer"] += time.perf_counter() - self.t0

            def on_step_end(self, args, state, control, **kwargs):
                outer.sync()
                now = time.perf_counter()
                if outer.active:
                    outer.steps += 1
                else:
                    outer.window[0], outer.active = now, True
                outer.window[1] = now

        trainer.add_callback(Clock())

    def _wrap(self, obj, name, part):
        original = getattr(obj, name)

        def wrapper(*args, **kwargs):
            self.sync()
            t0 = time.perf_counter()
            try:
                return original(*args, **kwargs)
            finally:
                self.sync()
                if self.active:
                    self.t[part] += time.perf_counter() - t0

        setattr(obj, name, wrapper)

    def per_step_ms(self) -> dict:
        wall = self.window[1] - self.window[0]
        parts = {k: 1000 * v / self.steps for k, v in self.t.items()}
        parts["other"] = 1000 * wall / self.steps - sum(parts.values())
        return {"ms_per_step": 1000 * wall / self.steps, "breakdown_ms": parts}


def end_to_end(a, sync, tmp) -> dict:
    import timm

    data = prepare_datasets(
        DataArguments(dataset_name="fashion_mnist", max_train_samples=a.e2e_samples, max_eval_samples=64),
        3,
        a.image_size,
        mean=[0.286] * 3,
        std=[0.353] * 3,
    )
    torch.manual_seed(0)
    teacher = timm.create_model(a.teacher, num_classes=len(data.id2label)).to(a.device).eval()
    out = {}
    for method in ("kd", "mkcd"):
        cache = os.path.join(tmp, f"e2e_cache_{method}")
        for label in ("uncached", "cached"):
            trainer = make_trainer(
                method,
                teacher,
                data,
                os.path.join(tmp, f"e2e_{method}_{label}"),
                a.batch,
                student=a.student,
                cache=cache if (label == "cached" or a.build_cache_first) else None,
                num_train_epochs=1,
                workers=a.workers,
                logging_steps=10,
            )
            if label == "cached":  # fill the cache for this epoch with the same code path, then measure reading it
                trainer.train()
                trainer = make_trainer(
                    method,
                    teacher,
                    data,
                    os.path.join(tmp, f"e2e_{method}_{label}2"),
                    a.batch,
                    student=a.student,
                    cache=cache,
                    num_train_epochs=1,
                    workers=a.workers,
                    logging_steps=10,
                )
            parts = Breakdown(trainer, sync)
            trainer.train()
            row = {**parts.per_step_ms(), "steps_timed": parts.steps}
            row["images_per_s"] = 1000 * a.batch / row["ms_per_step"]
            out[f"{method}_{label}"] = row
            print(
                f"{method:5s} {label:9s} {row['images_per_s']:8.1f} img/s  {row['ms_per_step']:8.1f} ms/step  "
                + "  ".join(f"{k} {v:.1f}" for k, v in row["breakdown_ms"].items())
            )
    return out


def jpeg_pipeline(images: int, size: int, tmp: str, seed: int = 0) -> dict:
    """The photo pipeline one DataLoader worker runs: JPEG decode + RandomResizedCrop + flip + normalise at ``size``
    (hf_mkcd.data.ImageTransform, training mode), on JPEGs of ImageNet's typical 500x375, in this one process."""
    from datasets import Dataset, Features, Image, Value
    from PIL import Image as PILImage

    from hf_mkcd.data import ImageTransform

    rng = np.random.default_rng(seed)
    base = rng.integers(0, 255, (375, 500, 3), dtype=np.uint8)
    paths = []
    for i in range(images):  # smooth-ish content so the JPEGs compress as photos do (~60-120 kB)
        path = os.path.join(tmp, f"{i}.JPEG")
        PILImage.fromarray(np.roll(base, i, axis=1)).resize((500, 375)).save(path, quality=90)
        paths.append(path)
    ds = Dataset.from_dict(
        {"image": paths, "label": [0] * images}, features=Features({"image": Image(), "label": Value("int64")})
    )
    transform = ImageTransform(
        "image", "label", 3, size, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225), True, "random_resized_crop"
    )
    ds = ds.add_column("__index__", list(range(images)))
    ds.set_transform(transform)
    ds[:8]  # warm-up
    start = time.perf_counter()
    for i in range(0, images, 64):  # as a DataLoader worker fetches: a batch of indices at a time
        ds[list(range(i, min(images, i + 64)))]
    seconds = time.perf_counter() - start
    return {
        "images": images,
        "size": size,
        "source": "500x375 JPEG, quality 90",
        "threads": torch.get_num_threads(),
        "images_per_s": images / seconds,
        "ms_per_image": 1000 * seconds / images,
    }


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--teacher", default="cifar_resnet32x4")
    p.add_argument("--student", default="cifar_resnet8x4")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--image_size", type=int, default=32)
    p.add_argument("--classes", type=int, default=100)
    p.add_argument("--train_samples", type=int, default=50000, help="training-set size (CRD's memory bank)")
    p.add_argument("--steps", type=int, default=7, help="timed rounds (the median per method is reported)")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--methods", nargs="+", default=[m for m in list_distillers() if m != "none"])
    p.add_argument("--e2e_samples", type=int, default=1024, help="images in the end-to-end part (0 skips it)")
    p.add_argument("--workers", type=int, default=0, help="DataLoader workers in the end-to-end part")
    p.add_argument(
        "--jpeg_images",
        type=int,
        default=256,
        help="JPEGs through the photo pipeline at 224 (part 3: images/s per DataLoader worker; 0 skips it)",
    )
    p.add_argument(
        "--jpeg_only", action="store_true", help="run part 3 alone (writes results/speed_jpeg_<device>.json)"
    )
    p.add_argument("--build_cache_first", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--output", default=None, help="default: results/speed_<cpu|cuda>.json")
    p.add_argument("--readme", action="store_true", help="regenerate the README's Speed section afterwards")
    a = p.parse_args(argv)
    import timm

    import hf_mkcd  # noqa: F401

    a.device = "cuda" if torch.cuda.is_available() else "cpu"
    if a.jpeg_only:
        with tempfile.TemporaryDirectory() as tmp:
            part3 = jpeg_pipeline(a.jpeg_images or 256, 224, tmp)
        print(
            f"photo pipeline at 224: {part3['images_per_s']:.0f} images/s per worker ({part3['ms_per_image']:.1f} ms)"
        )
        path = a.output or os.path.join(ROOT, "results", f"speed_jpeg_{a.device}.json")
        with open(path, "w") as f:
            json.dump(
                {
                    "device": device_name(a.device),
                    "torch": torch.__version__,
                    "date": datetime.date.today().isoformat(),
                    "command": " ".join(["python scripts/benchmark_speed.py", *(argv or sys.argv[1:])]),
                    "jpeg_pipeline": part3,
                },
                f,
                indent=2,
            )
        print(f"wrote {path}")
        return 0
    sync = torch.cuda.synchronize if a.device == "cuda" else (lambda: None)
    torch.manual_seed(0)
    teacher = timm.create_model(a.teacher, num_classes=a.classes).to(a.device).eval()
    print(f"device: {device_name(a.device)}; torch {torch.__version__}")
    with tempfile.TemporaryDirectory() as tmp:
        part1 = per_method(a, teacher, sync, tmp)
        part2 = end_to_end(a, sync, tmp) if a.e2e_samples else {}
        part3 = jpeg_pipeline(a.jpeg_images, 224, tmp) if a.jpeg_images else {}
    malloc_env = {k: os.environ[k] for k in MALLOC_ENV if k in os.environ}
    command = " ".join(
        [*(f"{k}={v}" for k, v in malloc_env.items()), "python scripts/benchmark_speed.py", *(argv or sys.argv[1:])]
    )
    result = {
        "device": device_name(a.device),
        "device_type": a.device,
        "torch": torch.__version__,
        "date": datetime.date.today().isoformat(),
        "command": command,
        "malloc_env": malloc_env,
        "settings": {k: v for k, v in vars(a).items() if k not in ("readme", "output", "build_cache_first")},
        "per_method": part1,
        "end_to_end": part2,
        "jpeg_pipeline": part3,
    }
    path = a.output or os.path.join(ROOT, "results", f"speed_{a.device}.json")
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    with open(path, "w") as f:
        json.dump(result, f, indent=2)
    print(f"\nwrote {path}")
    if a.readme:
        import make_readme

        make_readme.main([])
    return 0


if __name__ == "__main__":
    sys.exit(main())
