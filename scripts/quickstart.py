"""The offline quick-start: a teacher, then three students with the same budget -- vanilla (no teacher), KD and
MKCD -- on real data (Debian's Fashion-MNIST), and their accuracy side by side.

    python scripts/quickstart.py                 # about 6 minutes on 2 CPU cores
    python scripts/quickstart.py --epochs 2 --teacher_epochs 1 --student_train_samples 1000   # a 2-minute look
    python scripts/quickstart.py --refresh_examples   # also rewrite the committed results and example card

What it does: trains the teacher (``cifar_resnet56``) on 30,000 training images for 6 epochs, then each student
(``cifar_resnet20``) on 4,000 images for 15 epochs (the same budget for each), evaluates everything on 5,000 test
images, and writes the model card of the MKCD student. Where things go:

* ``runs/quickstart/<teacher|student_none|student_kd|student_mkcd>/``: each model, loadable with
  ``AutoModelForImageClassification.from_pretrained`` (after ``import hf_mkcd``) and ``pipeline``;
  ``student_mkcd/README.md`` is its model card;
* with ``--refresh_examples`` only: ``results/quickstart.json`` (the numbers the README's table is generated from,
  ``scripts/make_readme.py``) and the committed example card in ``model_cards/examples/``.

Rerunning the same command finds the finished runs and only prints the table again; ``--overwrite_output_dir``
trains them anew.
"""

import argparse
import datetime
import json
import os
import platform
import shutil
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from hf_mkcd.data import DataArguments  # noqa: E402
from hf_mkcd.run import ModelArguments, run  # noqa: E402
from hf_mkcd.trainer import DistillationTrainingArguments  # noqa: E402

ROLES = {"none": "vanilla student", "kd": "KD", "mkcd": "MKCD"}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--output_dir", default=os.path.join(ROOT, "runs", "quickstart"))
    p.add_argument(
        "--refresh_examples",
        action="store_true",
        help="also write results/quickstart.json and model_cards/examples/ (the committed examples)",
    )
    p.add_argument("--results", default=None, help="write the table's numbers to this JSON file")
    p.add_argument("--card_example", default="", help="copy the MKCD student's rendered card into this directory")
    p.add_argument("--overwrite_output_dir", action="store_true", help="train every model anew in --output_dir")
    p.add_argument("--dataset_name", default="fashion_mnist")
    p.add_argument("--teacher", default="cifar_resnet56")
    p.add_argument("--student", default="cifar_resnet20")
    p.add_argument("--teacher_train_samples", type=int, default=30000)
    p.add_argument("--student_train_samples", type=int, default=4000)
    p.add_argument("--eval_samples", type=int, default=5000)
    p.add_argument("--teacher_epochs", type=float, default=6)
    p.add_argument("--epochs", type=float, default=15, help="student epochs")
    p.add_argument("--image_size", type=int, default=16)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--methods", nargs="+", default=["none", "kd", "mkcd"])
    a = p.parse_args(argv)
    if a.refresh_examples:
        a.results = a.results or os.path.join(ROOT, "results", "quickstart.json")
        a.card_example = a.card_example or os.path.join(ROOT, "model_cards", "examples")
    start = time.time()

    def job(name, method, model, n_train, epochs, teacher=None):
        out = os.path.join(a.output_dir, name)
        t0 = time.time()
        metrics = run(
            ModelArguments(model_name_or_path=model, teacher_model_name_or_path=teacher),
            DataArguments(
                dataset_name=a.dataset_name,
                max_train_samples=n_train,
                max_eval_samples=a.eval_samples,
                image_size=a.image_size,
                split_seed=a.seed if name == "teacher" else a.seed + 1,
            ),
            DistillationTrainingArguments(
                output_dir=out,
                method=method,
                num_train_epochs=epochs,
                per_device_train_batch_size=64,
                learning_rate=0.05,
                lr_scheduler_type="cosine",
                eval_strategy="no",
                save_strategy="epoch",
                save_total_limit=1,
                logging_steps=25,
                use_cpu=True,
                seed=a.seed,
                report_to="none",
                overwrite_output_dir=a.overwrite_output_dir,
            ),
        )
        with open(os.path.join(out, "all_results.json")) as f:  # a finished run found again keeps its own time
            train_runtime = json.load(f).get("train_runtime")
        return {
            "name": name,
            "method": method,
            "role": "teacher" if name == "teacher" else ROLES.get(method, method),
            "model": model,
            "train_samples": n_train,
            "top1": metrics["eval_top1"],
            "top5": metrics["eval_top5"],
            "minutes": train_runtime / 60 if train_runtime else (time.time() - t0) / 60,
            "output_dir": os.path.relpath(out, ROOT),
        }

    rows = [job("teacher", "none", a.teacher, a.teacher_train_samples, a.teacher_epochs)]
    teacher_dir = os.path.join(a.output_dir, "teacher")
    for method in a.methods:
        rows.append(
            job(
                f"student_{method}",
                method,
                a.student,
                a.student_train_samples,
                a.epochs,
                teacher=None if method == "none" else teacher_dir,
            )
        )
    if "mkcd" in a.methods:
        from hf_mkcd.model_card import write_student_card

        card = write_student_card(
            os.path.join(a.output_dir, "student_mkcd"),
            "hf-mkcd/quickstart-fmnist-resnet20-mkcd",
            os.path.join(a.output_dir, "student_none") if "none" in a.methods else None,
        )
        if a.card_example:
            os.makedirs(a.card_example, exist_ok=True)
            shutil.copy(card, os.path.join(a.card_example, "quickstart_mkcd_student.md"))
            shutil.copy(
                os.path.join(a.output_dir, "student_mkcd", "training_curves.png"),
                os.path.join(a.card_example, "training_curves.png"),
            )
    print(f"\n{a.dataset_name} ({a.eval_samples} test images, {a.image_size}x{a.image_size}), seed {a.seed}")
    print(f"{'model':22s} {'role':16s} {'train imgs':>10s} {'top-1':>7s} {'top-5':>7s} {'minutes':>8s}")
    for r in rows:
        print(
            f"{r['model']:22s} {r['role']:16s} {r['train_samples']:>10d} {100 * r['top1']:>7.2f} "
            f"{100 * r['top5']:>7.2f} {r['minutes']:>8.1f}"
        )
    if a.results:
        os.makedirs(os.path.dirname(a.results) or ".", exist_ok=True)
        args = {
            k: v
            for k, v in vars(a).items()
            if k not in ("output_dir", "results", "card_example", "refresh_examples", "overwrite_output_dir")
        }
        with open(a.results, "w") as f:
            json.dump(
                {
                    "command": "python scripts/quickstart.py" + "".join(f" {x}" for x in (argv or sys.argv[1:])),
                    "device": f"{platform.machine()} CPU, {os.cpu_count()} cores",
                    "date": datetime.date.today().isoformat(),
                    "wall_minutes": (time.time() - start) / 60,
                    "train_minutes": sum(r["minutes"] for r in rows),
                    "args": args,
                    "rows": rows,
                },
                f,
                indent=2,
            )
        print(f"\nwrote {a.results}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
