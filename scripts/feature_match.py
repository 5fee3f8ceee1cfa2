"""How closely a reused-head student's projected map follows its teacher's, on the run's own held-out images.

    python scripts/feature_match.py runs/benchmarks/lowdata_cross/simkd/seed0 ... \
        [--samples 1000] [--output_file results/feature_match.json]

For each finished run directory of a student that reuses the teacher's classifier (MKCD, SimKD, SRRL), rebuilds the
run's evaluation images from its saved configuration, and measures on the first ``--samples`` of them:

* ``relative error``: MSE(P(F_s), F_t) / mean(F_t^2), with F_t the teacher's last map resampled as in training;
* ``mean guess``: the same error for a constant guess, the teacher map's mean over the images (its variance over
  the images / mean(F_t^2)): a projector above this line has learned nothing image-specific;
* ``R^2`` = 1 - MSE / variance: the share of the teacher map's image-to-image variation the student reproduces;
* the student's and teacher's top-1 and how often their predictions agree.

A reused head classifies whatever reaches it: a student whose R^2 is near 0 feeds it the average teacher feature and
sits near chance, whatever its training loss says.
"""

import argparse
import dataclasses
import json
import os
import re
import sys

import torch
import yaml

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_data_args(run_dir: str):
    from hf_mkcd.data import DataArguments

    with open(os.path.join(run_dir, "run_config.yaml")) as f:
        saved = yaml.safe_load(f)
    names = {f.name for f in dataclasses.fields(DataArguments)}
    return DataArguments(**{k: v for k, v in saved.items() if k in names}), saved


def match_stats(projected: torch.Tensor, target: torch.Tensor) -> dict:
    """Errors of ``projected`` against ``target`` (images first), relative to the target's mean square."""
    mse, energy = (projected - target).pow(2).mean().item(), target.pow(2).mean().item()
    variance = target.var(0, unbiased=False).mean().item()  # the error of the best constant guess
    return {"relative_error": mse / energy, "mean_guess_error": variance / energy, "r2": 1.0 - mse / variance}


@torch.no_grad()
def measure(run_dir: str, samples: int, batch_size: int = 250) -> dict:
    from transformers import AutoModelForImageClassification

    import hf_mkcd  # noqa: F401  (registers the student classes and the CIFAR zoo)
    from hf_mkcd.loading import load_teacher
    from hf_mkcd.models.helpers import first_conv_in_channels, match_channels
    from hf_mkcd.run import prepare_teacher_data

    student = AutoModelForImageClassification.from_pretrained(run_dir).eval()
    cfg = student.config
    if getattr(cfg, "head", None) != "teacher" or getattr(cfg, "projector", None) is None:
        raise ValueError(
            f"{run_dir}: its student has no projector feeding the teacher's head (head {cfg.head!r}, projector "
            f"{cfg.projector!r}); feature_match reads students of the reused-head methods: mkcd, simkd, srrl"
        )
    teacher = load_teacher(cfg.teacher)
    data_args, saved = run_data_args(run_dir)
    data_args.max_eval_samples = samples
    data, _ = prepare_teacher_data(data_args, teacher)  # the run's own preprocessing (run.build)
    t_chans = first_conv_in_channels(teacher)
    projected, aligned, right = [], [], dict(student=0, teacher=0, agree=0)
    for start in range(0, len(data.eval), batch_size):
        batch = data.eval[start : start + batch_size]
        x, y = torch.stack(list(batch["pixel_values"])), torch.as_tensor(batch["labels"])
        out = student(match_channels(x, cfg.num_channels), output_features=True)
        f_t = teacher.forward_features(match_channels(x, t_chans))
        projected.append(out.projected_features)
        aligned.append(student.projector.align_teacher(f_t))  # the teacher's map as the training loss saw it
        s_pred, t_pred = out.logits.argmax(1), teacher.forward_head(f_t).argmax(1)
        right["student"] += (s_pred == y).sum().item()
        right["teacher"] += (t_pred == y).sum().item()
        right["agree"] += (s_pred == t_pred).sum().item()
    images = len(data.eval)
    return {
        "run": os.path.relpath(os.path.abspath(run_dir), ROOT),
        "method": saved.get("method"),
        "student": cfg.backbone,
        "teacher": re.sub(r"-[0-9a-f]{10}$", "", os.path.basename(os.path.normpath(cfg.teacher))),  # suites' hash
        "student_map": list(cfg.student_feature_shape),
        "teacher_map": list(cfg.teacher_feature_shape),
        "images": images,
        **match_stats(torch.cat(projected), torch.cat(aligned)),
        "student_top1": 100.0 * right["student"] / images,
        "teacher_top1": 100.0 * right["teacher"] / images,
        "agreement": 100.0 * right["agree"] / images,
    }


def markdown(rows) -> str:
    lines = [
        "| run | teacher -> student | maps (teacher / student) | relative error | mean guess | R² | "
        "student top-1 | teacher top-1 | agree |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        maps = f"{'x'.join(map(str, r['teacher_map']))} / {'x'.join(map(str, r['student_map']))}"
        lines.append(
            f"| `{r['run']}` | `{r['teacher']}` -> `{r['student']}` | {maps} | {r['relative_error']:.3f} | "
            f"{r['mean_guess_error']:.3f} | {r['r2']:.2f} | {r['student_top1']:.1f} | {r['teacher_top1']:.1f} | "
            f"{r['agreement']:.1f} |"
        )
    return "\n".join(lines) + "\n"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", help="finished run directories (scripts/distill.py --output_dir)")
    parser.add_argument("--samples", type=int, default=1000, help="evaluation images to measure on")
    parser.add_argument("--output_file", default="results/feature_match.json")
    args = parser.parse_args(argv)
    rows = [measure(run, args.samples) for run in args.runs]
    command = "python scripts/feature_match.py " + " ".join(r["run"] for r in rows)
    if args.samples != 1000:
        command += f" --samples {args.samples}"
    print(markdown(rows))
    os.makedirs(os.path.dirname(os.path.abspath(args.output_file)), exist_ok=True)
    with open(args.output_file, "w") as f:
        json.dump({"command": command, "rows": rows}, f, indent=2)
    print(f"wrote {args.output_file}")
    return 0


if __name__ == "__main__":
    sys.path.insert(0, ROOT)
    sys.exit(main())
