"""Extra inference cost of the feature projectors, per teacher -> student pair (CIFAR-100 zoo).

    python scripts/projector_cost.py [--output_file results/projector_cost.json]

Prints, for each of the 12 standard CIFAR-100 pairs of the KD literature, the student's own parameters, and the
parameters and forward FLOPs (multiply-adds, as the KD literature counts them; one 32x32 image) that MKCD's
encoder-decoder projector and SimKD's bottleneck (f=2) add at inference. Nothing is hard-coded: every figure is
measured here.
"""

import argparse
import json
import os

import timm
import torch
import hf_mkcd  # noqa: F401  (registers the CIFAR zoo)
from hf_mkcd.model_card import count_mflops
from hf_mkcd.models.projectors import build_projector, count_parameters

PAIRS = [
    ("cifar_resnet56", "cifar_resnet20"),
    ("cifar_resnet110", "cifar_resnet32"),
    ("cifar_resnet32x4", "cifar_resnet8x4"),
    ("cifar_wrn_40_2", "cifar_wrn_16_2"),
    ("cifar_wrn_40_2", "cifar_wrn_40_1"),
    ("cifar_vgg13", "cifar_vgg8"),
    ("cifar_resnet32x4", "cifar_shufflev1"),
    ("cifar_resnet32x4", "cifar_shufflev2"),
    ("cifar_wrn_40_2", "cifar_shufflev1"),
    ("cifar_vgg13", "cifar_mobilenetv2"),
    ("cifar_resnet50", "cifar_mobilenetv2"),
    ("cifar_resnet50", "cifar_vgg8"),
]


@torch.no_grad()
def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output_file", default="results/projector_cost.json")
    args = parser.parse_args()
    x = torch.zeros(1, 3, 32, 32)
    rows = []
    for teacher_name, student_name in PAIRS:
        teacher = timm.create_model(teacher_name).eval()
        student = timm.create_model(student_name).eval()
        f_t, f_s = teacher.forward_features(x), student.forward_features(x)
        row = dict(
            teacher=teacher_name,
            student=student_name,
            student_map=list(f_s.shape[1:]),
            teacher_map=list(f_t.shape[1:]),
            student_params=count_parameters(student),
            student_mflops=count_mflops(student, x),
        )
        for kind in ("mkcd", "simkd"):
            proj = build_projector(kind, f_s.shape[1:], f_t.shape[1:]).eval()
            row[f"{kind}_params"] = count_parameters(proj)
            row[f"{kind}_mflops"] = count_mflops(proj, f_s)
            row[f"{kind}_plan"] = proj.plan
        rows.append(row)
    header = (
        f"{'teacher -> student':38s} {'student map':>13s} {'teacher map':>13s} {'student':>10s} "
        f"{'MKCD params':>12s} {'MKCD MFLOPs':>11s} {'SimKD params':>12s} {'SimKD MFLOPs':>12s}"
    )
    print(header)
    print("-" * len(header))
    for r in rows:
        print(
            f"{r['teacher'] + ' -> ' + r['student']:38s} {'x'.join(map(str, r['student_map'])):>13s} "
            f"{'x'.join(map(str, r['teacher_map'])):>13s} {r['student_params']:>10,d} "
            f"{r['mkcd_params']:>12,d} {r['mkcd_mflops']:>11.1f} {r['simkd_params']:>12,d} {r['simkd_mflops']:>12.1f}"
        )
    os.makedirs(os.path.dirname(args.output_file) or ".", exist_ok=True)
    with open(args.output_file, "w") as f:
        json.dump(rows, f, indent=2)
    print(f"\nwrote {args.output_file}")


if __name__ == "__main__":
    main()
