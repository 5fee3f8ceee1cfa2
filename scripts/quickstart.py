"""The offline quick-start: train a teacher on 20k Fashion-MNIST images, then three students on 4k images --
vanilla (no teacher), KD and MKCD, same budget -- and print their accuracy side by side.

    python scripts/quickstart.py [--output_dir runs/quickstart] [--student_train_samples 8000] ...

About 7 minutes on 2 CPU cores (393 s measured). Real data: Debian's dataset-fashion-mnist
(``apt-get install dataset-fashion-mnist``; otherwise the Hub copy is tried). Writes
``<output_dir>/results.json`` and every model directory under ``<output_dir>``.
"""
import argparse
import json
import os
import time

from hf_mkcd.data import DataArguments
from hf_mkcd.run import ModelArguments, run
from hf_mkcd.trainer import DistillationTrainingArguments


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--output_dir", default="runs/quickstart")
    p.add_argument("--dataset_name", default="fashion_mnist")
    p.add_argument("--teacher", default="cifar_wrn_16_2")
    p.add_argument("--student", default="cifar_resnet20")
    p.add_argument("--teacher_train_samples", type=int, default=20000)
    p.add_argument("--student_train_samples", type=int, default=4000)
    p.add_argument("--eval_samples", type=int, default=5000)
    p.add_argument("--epochs", type=float, default=2)
    p.add_argument("--image_size", type=int, default=28)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--methods", nargs="+", default=["none", "kd", "mkcd"])
    a = p.parse_args()

    def job(name, method, model, n_train, teacher=None):
        out = os.path.join(a.output_dir, name)
        t0 = time.time()
        metrics = run(
            ModelArguments(model_name_or_path=model, teacher_model_name_or_path=teacher),
            DataArguments(dataset_name=a.dataset_name, max_train_samples=n_train, max_eval_samples=a.eval_samples,
                          image_size=a.image_size),
            DistillationTrainingArguments(
                output_dir=out, method=method, num_train_epochs=a.epochs, per_device_train_batch_size=64,
                learning_rate=0.05, lr_scheduler_type="cosine", eval_strategy="no", save_strategy="no",
                logging_steps=50, use_cpu=True, seed=a.seed, report_to="none", disable_tqdm=True,
            ),
        )
        return {"name": name, "method": method, "model": model, "train_samples": n_train,
                "top1": metrics["eval_top1"], "top5": metrics["eval_top5"], "minutes": (time.time() - t0) / 60}

    rows = [job("teacher", "none", a.teacher, a.teacher_train_samples)]
    teacher_dir = os.path.join(a.output_dir, "teacher")
    labels = {"none": "vanilla student", "kd": "KD", "mkcd": "MKCD"}
    for method in a.methods:
        rows.append(job(f"student_{method}", method, a.student, a.student_train_samples,
                        teacher=None if method == "none" else teacher_dir))
    print(f"\nFashion-MNIST ({a.eval_samples} test images), {a.epochs:g} epochs each, seed {a.seed}")
    print(f"{'model':28s} {'method':16s} {'train imgs':>10s} {'top-1':>7s} {'top-5':>7s} {'minutes':>8s}")
    for r in rows:
        label = "teacher" if r["name"] == "teacher" else labels.get(r["method"], r["method"])
        print(f"{r['model']:28s} {label:16s} {r['train_samples']:>10d} {100 * r['top1']:>7.2f} "
              f"{100 * r['top5']:>7.2f} {r['minutes']:>8.1f}")
    with open(os.path.join(a.output_dir, "results.json"), "w") as f:
        json.dump({"args": vars(a), "rows": rows}, f, indent=2)
    print(f"\nwrote {os.path.join(a.output_dir, 'results.json')}")


if __name__ == "__main__":
    main()
