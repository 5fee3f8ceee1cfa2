"""Write ``recipes/cifar100/`` from one table of per-pair settings (the recipes are never edited by hand).

    python scripts/make_recipes.py            # (re)write recipes/cifar100/*.yaml
    python scripts/make_recipes.py --check    # exit 1 if the committed recipes differ from this table

The CIFAR-100 recipe of the KD literature (RepDistiller, mdistiller, SimKD, CTKD, DIST): 240 epochs,
batch 64, SGD momentum 0.9, weight decay 5e-4, LR 0.05 (0.01 for MobileNetV2 / ShuffleNet students),
LR x0.1 after epochs 150, 180 and 210, random crop + flip. Per-pair settings are the references' own:
DKD's beta (mdistiller ``configs/cifar100/dkd``), ReviewKD's weight (``dvlab-research/ReviewKD``
``CIFAR-100/script/reviewKD.sh``), MLKD's LR and epochs (its ``configs/cifar100/ours``).
"""

import argparse
import difflib
import os
import sys

import yaml

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from hf_mkcd.distillers import get_distiller_class, list_distillers  # noqa: E402
from hf_mkcd.models.projectors import projector_options  # noqa: E402

CIFAR_RECIPE = {
    "dataset_name": "uoft-cs/cifar100",
    "augmentation": "crop_flip",
    "num_train_epochs": 240,
    "per_device_train_batch_size": 64,
    "per_device_eval_batch_size": 256,
    "optim": "sgd",
    "optim_args": "momentum=0.9",
    "weight_decay": 0.0005,
    "lr_scheduler_type": "constant",
    "lr_decay_epochs": [150, 180, 210],
    "lr_decay_rate": 0.1,
    "max_grad_norm": 0.0,
    "eval_strategy": "epoch",
    "save_strategy": "epoch",
    "save_total_limit": 2,
    "logging_steps": 100,
    "dataloader_num_workers": 4,
    "seed": 0,
}
LIGHT_STUDENTS = ("mobilenetv2", "shufflev1", "shufflev2")  # LR 0.01 in every reference
METHODS = [m for m in list_distillers() if get_distiller_class(m).needs_teacher]  # every registered method

# teacher, student, DKD beta, ReviewKD weight, MLKD (LR, epochs)
PAIRS = [
    ("resnet56", "resnet20", 2.0, 0.6, (0.025, 240)),
    ("resnet110", "resnet32", 2.0, 1.0, (0.025, 240)),
    ("resnet32x4", "resnet8x4", 8.0, 5.0, (0.025, 240)),
    ("wrn_40_2", "wrn_16_2", 6.0, 5.0, (0.025, 240)),
    ("wrn_40_2", "wrn_40_1", 6.0, 5.0, (0.025, 240)),
    ("vgg13", "vgg8", 6.0, 1.0, (0.025, 240)),
    ("resnet32x4", "shufflev1", 8.0, 5.0, (0.01, 960)),
    ("resnet32x4", "shufflev2", 8.0, 8.0, (0.01, 960)),
    ("wrn_40_2", "shufflev1", 8.0, 5.0, (0.01, 480)),
    ("vgg13", "mobilenetv2", 6.0, 1.0, (0.01, 480)),
    ("resnet50", "mobilenetv2", 8.0, 1.0, (0.01, 480)),
    ("resnet50", "vgg8", 8.0, 1.0, (0.025, 240)),
]
CHECKPOINT_NAMES = {"resnet50": "ResNet50"}  # the archive's directory names, where they differ from ours


def teacher_checkpoint(teacher: str) -> str:
    return f"download_ckpts/cifar_teachers/{CHECKPOINT_NAMES.get(teacher, teacher)}_vanilla/ckpt_epoch_240.pth"


def mkcd_settings() -> dict:
    """MKCD's recipe is its code defaults, written out (so the recipe cannot drift from the code)."""
    mkcd = get_distiller_class("mkcd")
    opts = projector_options(mkcd.projector)
    weights = {k: v for k, v in mkcd.defaults.items() if k in ("ce_weight", "kd_weight", "feat_weight")}  # flags
    others = {k: v for k, v in mkcd.defaults.items() if k not in weights}
    return {
        "temperature_schedule": mkcd.temperature_schedule,
        **weights,
        **({"distiller_kwargs": others} if others else {}),
        "temperature_min": 1.0,
        "temperature_max": 8.0,
        "projector_factor": opts["factor"],
        "projector_latent_ratio": opts["latent_ratio"],
        "projector_skip": opts["skip"],
        "projector_residual": opts["residual"],
        "projector_resample": opts["resample"],
    }


def per_pair(method: str, beta: float, review_weight: float, mlkd: tuple) -> tuple:
    """(comment suffix, recipe keys) a method's references set per pair or per recipe; most methods have none."""
    if method == "dkd":
        return (
            f"; beta = {beta:g} for this pair (mdistiller configs/cifar100/dkd)",
            {"distiller_kwargs": {"alpha": 1.0, "beta": beta, "warmup_epochs": 20.0}},
        )
    if method == "reviewkd":
        return (
            f"; w = {review_weight:g} for this pair (dvlab-research/ReviewKD CIFAR-100/script/reviewKD.sh)",
            {"feat_weight": review_weight},
        )
    if method == "mlkd":
        lr, epochs = mlkd
        return f"; LR {lr:g}, {epochs} epochs (MLKD configs/cifar100/ours)", {
            "learning_rate": lr,
            "num_train_epochs": epochs,
        }
    if method == "ab":  # the initialisation runs in front of the recipe's 240 epochs
        init = int(get_distiller_class("ab").defaults["init_epochs"])
        return (
            f"; {init} initialisation epochs in front of the 240, LR drops shifted by {init}",
            {
                "distiller_kwargs": {"init_epochs": float(init)},
                "num_train_epochs": 240 + init,
                "lr_decay_epochs": [e + init for e in CIFAR_RECIPE["lr_decay_epochs"]],
            },
        )
    if method == "mkcd":
        return "", mkcd_settings()
    return "", {}


def method_settings(method: str, beta: float, review_weight: float, mlkd: tuple) -> tuple:
    """(comment, recipe keys) of a method on a pair: the method's class says what the reference sets
    (``recipe_note``, ``recipe_settings``), :func:`per_pair` adds what changes with the pair."""
    cls = get_distiller_class(method)
    suffix, settings = per_pair(method, beta, review_weight, mlkd)
    return f"{cls.__name__}: {cls.recipe_note}{suffix}", {**cls.recipe_settings, **settings}


def render(comment_lines, recipe: dict) -> str:
    head = "".join(f"# {line}\n" for line in comment_lines)
    body = yaml.safe_dump(recipe, sort_keys=False, default_flow_style=None, width=120)
    return head + "# generated by scripts/make_recipes.py: edit the table there, not this file\n" + body


def recipes() -> dict:
    out = {}
    for teacher, student, beta, review, mlkd in PAIRS:
        lr = 0.01 if student in LIGHT_STUDENTS else 0.05
        for method in METHODS:
            comment, settings = method_settings(method, beta, review, mlkd)
            name = f"{teacher}_{student}_{method}"
            recipe = {
                "method": method,
                "model_name_or_path": f"cifar_{student}",
                "teacher_model_name_or_path": f"cifar_{teacher}",
                "teacher_checkpoint": teacher_checkpoint(teacher),
                "output_dir": f"runs/cifar100/{name}",
                "learning_rate": lr,
                **CIFAR_RECIPE,
                **settings,
            }
            out[f"{name}.yaml"] = render(
                [
                    comment,
                    f"cifar_{teacher} -> cifar_{student} on CIFAR-100:",
                    f"  accelerate launch scripts/distill.py recipes/cifar100/{name}.yaml",
                    "Teacher: the community checkpoint (docs/teachers.md: mdistiller's cifar_teachers.tar, extracted "
                    "into "
                    "download_ckpts/).",
                ],
                recipe,
            )
    for student in sorted({s for _, s, *_ in PAIRS}):
        lr = 0.01 if student in LIGHT_STUDENTS else 0.05
        recipe = {
            "method": "none",
            "model_name_or_path": f"cifar_{student}",
            "output_dir": f"runs/cifar100/{student}_vanilla",
            "learning_rate": lr,
            **CIFAR_RECIPE,
        }
        out[f"{student}_vanilla.yaml"] = render(
            [
                f"Vanilla student (no teacher): cifar_{student} on CIFAR-100, the baseline every method is compared "
                "with.",
                f"  accelerate launch scripts/train_teacher.py recipes/cifar100/{student}_vanilla.yaml",
            ],
            recipe,
        )
    for teacher in sorted({t for t, *_ in PAIRS}):
        recipe = {
            "method": "none",
            "model_name_or_path": f"cifar_{teacher}",
            "output_dir": f"teachers/{teacher}",
            "learning_rate": 0.05,
            **CIFAR_RECIPE,
        }
        out[f"teacher_{teacher}.yaml"] = render(
            [
                f"Teacher cifar_{teacher} trained from scratch on CIFAR-100 (the community checkpoints were made "
                "with this "
                "recipe).",
                f"  accelerate launch scripts/train_teacher.py recipes/cifar100/teacher_{teacher}.yaml",
            ],
            recipe,
        )
    return out


# -- ImageNet-1k ------------------------------------------------------------------------------------------------
# mdistiller's ImageNet configs (configs/imagenet/...): 100 epochs, LR x0.1 after 30/60/90, weight decay 1e-4,
# SGD 0.9, RandomResizedCrop(224) + flip, Resize(256) + CentreCrop(224); teachers are torchvision's weights (timm's
# tv_in1k copies on the Hub). One node of 8 GPUs: 32 images per GPU = 256 per step at LR 0.1 (mdistiller's
# 512 at 0.2 for KD/DKD scales linearly to the same).
IMAGENET_RECIPE = {
    "dataset_name": "ILSVRC/imagenet-1k",
    "image_size": 224,
    "augmentation": "random_resized_crop",
    "num_train_epochs": 100,
    "per_device_train_batch_size": 32,
    "per_device_eval_batch_size": 128,
    "learning_rate": 0.1,
    "optim": "sgd",
    "optim_args": "momentum=0.9",
    "weight_decay": 0.0001,
    "lr_scheduler_type": "constant",
    "lr_decay_epochs": [30, 60, 90],
    "lr_decay_rate": 0.1,
    "max_grad_norm": 0.0,
    "eval_strategy": "epoch",
    "save_strategy": "epoch",
    "save_total_limit": 2,
    "logging_steps": 100,
    "dataloader_num_workers": 8,
    "bf16": True,
    "seed": 0,
}
# teacher (Hub id), student (timm), DKD beta, ReviewKD weight (mdistiller / dvlab ImageNet settings)
IMAGENET_PAIRS = [
    ("timm/resnet34.tv_in1k", "resnet18", 0.5, 1.0),
    ("timm/resnet50.tv_in1k", "mobilenetv1_100", 2.0, 8.0),
]
IMAGENET_SETTINGS = {  # the references' ImageNet settings where they differ from the CIFAR ones
    "kd": (
        "T = 1, CE 0.5 + KD 0.5 (mdistiller configs/imagenet)",
        {"temperature": 1.0, "ce_weight": 0.5, "kd_weight": 0.5},
    ),
    "dkd": ("T = 1, CE 1 + warm-up 1 epoch x (TCKD 0.5 + NCKD beta) (mdistiller configs/imagenet)", None),
    "dist": ("tau = 1, CE 1 + 2 x DIST (hunto/DIST_KD ImageNet)", {"temperature": 1.0}),
    "ctkd": (
        "CE 1 + KD 1 with the learned temperature (zhengli97/CTKD ImageNet)",
        {"ce_weight": 1.0, "kd_weight": 1.0},
    ),
}


def imagenet_method_applies(method: str) -> bool:
    """Methods a timm ResNet teacher on photos can serve: pre-activation maps exist in the CIFAR zoo only (AB,
    OFD, ReviewKD), and MLKD's strong view is defined on CIFAR-sized images."""
    cls = get_distiller_class(method)
    return cls.needs_teacher and not cls.views and "preact_stages" not in cls.teacher_needs | cls.student_needs


def imagenet_recipes() -> dict:
    out = {}
    for teacher, student, beta, _ in IMAGENET_PAIRS:
        pair = f"{teacher.split('/')[1].split('.')[0]}_{student}"
        for method in [m for m in METHODS if imagenet_method_applies(m)]:
            cls = get_distiller_class(method)
            note, settings = IMAGENET_SETTINGS.get(
                method, (f"{cls.recipe_note}; the CIFAR-100 setting (no ImageNet setting in the references)", {})
            )
            if method == "dkd":
                settings = {"temperature": 1.0, "distiller_kwargs": {"alpha": 0.5, "beta": beta, "warmup_epochs": 1.0}}
                note += f"; beta = {beta:g} for this pair"
            if method == "mkcd":
                settings = mkcd_settings()
            recipe = {
                "method": method,
                "model_name_or_path": student,
                "teacher_model_name_or_path": teacher,
                "output_dir": f"runs/imagenet/{pair}_{method}",
                **IMAGENET_RECIPE,
                **settings,
            }
            out[f"{pair}_{method}.yaml"] = render(
                [
                    f"{cls.__name__}: {note}",
                    f"{teacher} -> {student} on ImageNet-1k:",
                    f"  accelerate launch scripts/distill.py recipes/imagenet/{pair}_{method}.yaml",
                    "Data: the Hub's ILSVRC/imagenet-1k (gated: accept its terms, "
                    "`huggingface-cli login`) or a local copy via --dataset_name.",
                ],
                recipe,
            )
    for student in sorted({s for _, s, *_ in IMAGENET_PAIRS}):
        recipe = {
            "method": "none",
            "model_name_or_path": student,
            "output_dir": f"runs/imagenet/{student}_vanilla",
            **IMAGENET_RECIPE,
        }
        out[f"{student}_vanilla.yaml"] = render(
            [
                f"Vanilla student (no teacher): {student} on ImageNet-1k, the baseline every method is compared with.",
                f"  accelerate launch scripts/train_teacher.py recipes/imagenet/{student}_vanilla.yaml",
            ],
            recipe,
        )
    return out


def sync(directory: str, wanted: dict, check: bool) -> list:
    """Write ``wanted`` into ``directory`` (removing stale recipes), or list how the committed files differ."""
    if check:
        present = {f for f in os.listdir(directory) if f.endswith(".yaml")} if os.path.isdir(directory) else set()
        problems = [f"missing: {directory}/{f}" for f in sorted(set(wanted) - present)]
        problems += [f"not generated: {directory}/{f}" for f in sorted(present - set(wanted))]
        for f in sorted(set(wanted) & present):
            with open(os.path.join(directory, f)) as fh:
                have = fh.read()
            if have != wanted[f]:
                problems.append("".join(difflib.unified_diff(have.splitlines(True), wanted[f].splitlines(True), f, f)))
        return problems
    os.makedirs(directory, exist_ok=True)
    for f in os.listdir(directory):
        if f.endswith(".yaml") and f not in wanted:
            os.remove(os.path.join(directory, f))
    for f, text in wanted.items():
        with open(os.path.join(directory, f), "w") as fh:
            fh.write(text)
    print(f"wrote {len(wanted)} recipes to {directory}")
    return []


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output_dir", default=os.path.join(ROOT, "recipes", "cifar100"))
    parser.add_argument("--imagenet_dir", default=os.path.join(ROOT, "recipes", "imagenet"))
    parser.add_argument("--check", action="store_true", help="compare instead of writing; exit 1 on any difference")
    args = parser.parse_args(argv)
    problems = sync(args.output_dir, recipes(), args.check) + sync(args.imagenet_dir, imagenet_recipes(), args.check)
    if args.check:
        print("\n".join(problems) or "every recipe matches the tables")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
