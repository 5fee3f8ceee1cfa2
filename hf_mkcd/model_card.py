"""Model cards for distilled students and converted teachers, filled from a run's own files.

Nothing in a card is typed by hand: ``student_card`` reads ``run_config.yaml``, ``all_results.json``,
``trainer_state.json``, ``config.json`` and ``distillation_info.json`` (parameters and FLOPs measured at
the end of the run) from the output directory, draws ``training_curves.png`` from the log history, and
renders ``model_cards/student.md`` through huggingface_hub's ``ModelCard.from_template``. The metadata's
``model-index`` carries top-1 (``accuracy``) and top-5 on the evaluation split, which the Hub parses.
"""

from __future__ import annotations

import json
import os
import re
import sys
from typing import Optional

import yaml

TEMPLATES = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "model_cards")
PACKAGE_TEMPLATES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "card_templates")
INFO_NAME = "distillation_info.json"
CURVES_NAME = "training_curves.png"
LIBRARY_BIBTEX = (
    "@software{hf_mkcd,\n  title={hf_mkcd: knowledge distillation of image classifiers, Hugging Face-native},\n"
    "  year={2026}\n}"
)


def template(name: str) -> str:
    for root in (TEMPLATES, PACKAGE_TEMPLATES):
        path = os.path.join(root, f"{name}.md")
        if os.path.isfile(path):
            with open(path) as f:
                return f.read()
    raise FileNotFoundError(f"model card template {name}.md not found in {TEMPLATES}")


def count_mflops(module, x) -> float:
    """Millions of multiply-adds of ``module(x)`` (what the KD literature calls FLOPs); ``x`` is a tensor, or the
    shape of one sample (zeros on the module's device)."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    if not torch.is_tensor(x):
        x = torch.zeros(1, *x, device=next(module.parameters()).device)
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        module.eval()(x)
    return counter.get_total_flops() / 2e6


def distillation_info(trainer, model_args, data_args, data=None) -> dict:
    """What a card needs that the run's other files do not hold: sizes and costs, measured here."""
    from .distillers.base import get_distiller_class

    student = trainer.student
    cfg = student.config
    size = (cfg.num_channels, cfg.image_size, cfg.image_size)

    class Logits(__import__("torch").nn.Module):  # the deployable student's forward, for the FLOP counter
        def __init__(self, model):
            super().__init__()
            self.model = model

        def forward(self, x):
            return self.model(pixel_values=x).logits

    info = {
        "method": trainer.args.method,
        "method_paper": get_distiller_class(trainer.args.method).paper,
        "hparams": {k: v for k, v in trainer.distiller.hparams.items()},
        "temperature": repr(trainer.distiller.temperature) if trainer.distiller.temperature is not None else None,
        "student": {
            "architecture": cfg.backbone,
            "params": sum(p.numel() for p in student.parameters())
            + sum(b.numel() for n, b in student.named_buffers() if n.startswith("classifier.")),
            "mflops": count_mflops(Logits(student), size),
            "pretrained_from": getattr(student, "pretrained_from", None),
        },
        "projector": {
            "name": cfg.projector,
            "options": cfg.projector_kwargs,
            "params": sum(p.numel() for p in student.projector.parameters()) if student.projector is not None else 0,
        },
        "head": cfg.head,
        "dataset": data_args.dataset_name,
        "eval_set": data.eval_description if data is not None else None,
        "eval_split": data.eval_split if data is not None else (data_args.eval_split or "validation"),
        "pipeline": data.pipeline if data is not None else None,
    }
    if trainer.teacher is not None:
        teacher_dir = model_args.teacher_model_name_or_path
        cfg = getattr(trainer.teacher, "pretrained_cfg", None) or {}
        info["teacher"] = {
            "name": teacher_dir,
            "architecture": cfg.get("architecture") or type(trainer.teacher).__name__,
            "params": sum(p.numel() for p in trainer.teacher.parameters()),
            "mflops": count_mflops(trainer.teacher, (trainer._teacher_in_chans, *size[1:])),
        }
        results = os.path.join(teacher_dir, "all_results.json") if teacher_dir and os.path.isdir(teacher_dir) else None
        if results and os.path.isfile(results):
            with open(results) as f:
                teacher_results = json.load(f)
            info["teacher"].update(  # what the teacher's own run recorded, on its own evaluation set
                {
                    f"recorded_{k[5:]}": teacher_results[k]
                    for k in ("eval_top1", "eval_top5", "eval_samples")
                    if k in teacher_results
                }
            )
        check = getattr(trainer, "teacher_check", None)
        if check is not None:  # measured here, before training, on this run's held-out images
            info["teacher"]["check"] = check.as_dict()
    return info


def _read(output_dir: str, name: str, loader=json.load):
    path = os.path.join(output_dir, name)
    if not os.path.isfile(path):
        return None
    with open(path) as f:
        return loader(f)


def training_curves(output_dir: str) -> Optional[str]:
    """Each logged loss term, the temperature and evaluation top-1 over training, from trainer_state.json."""
    state = _read(output_dir, "trainer_state.json")
    if not state:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    logs = state["log_history"]
    steps = [e for e in logs if "loss" in e]
    evals = [e for e in logs if "eval_top1" in e]
    temps = [e for e in steps if "temperature" in e]
    panels = 1 + bool(temps) + bool(evals)
    fig, axes = plt.subplots(1, panels, figsize=(4.5 * panels, 3.4))
    axes = [axes] if panels == 1 else list(axes)
    terms = sorted({k for e in steps for k in e if k.startswith("loss")})
    for k in terms:
        axes[0].plot([e["epoch"] for e in steps if k in e], [e[k] for e in steps if k in e], label=k, lw=1)
    axes[0].set(xlabel="epoch", title="loss terms" if terms else "loss terms (none logged: raise logging frequency)")
    if terms:
        axes[0].set_yscale("log")
        axes[0].legend(fontsize=7)
    i = 1
    if temps:
        axes[i].plot([e["epoch"] for e in temps], [e["temperature"] for e in temps])
        axes[i].set(xlabel="epoch", title="temperature")
        i += 1
    if evals:
        axes[i].plot([e["epoch"] for e in evals], [100 * e["eval_top1"] for e in evals], marker="o", ms=3)
        axes[i].set(xlabel="epoch", title="evaluation top-1 (%)")
    fig.tight_layout()
    path = os.path.join(output_dir, CURVES_NAME)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def _first_sentence(doc: Optional[str]) -> str:
    """The summary line of a method module's docstring, without its ``name``: prefix."""
    if not doc:
        return ""
    text = " ".join(doc.strip().split("\n\n")[0].split())
    return re.sub(r"^``\w+``:\s*", "", text)


def _projector_options(projector: dict) -> str:
    from .models.projectors import PROJECTORS, projector_options

    if projector.get("name") not in PROJECTORS:
        return ""
    options = {**projector_options(projector["name"]), **(projector.get("options") or {})}
    return ", ".join(f"{k}={v}" for k, v in options.items()) or "no options"


def _pct(value) -> str:
    return "–" if value is None else f"{100 * value:.2f}"


def _eval_results(results: dict, info: dict) -> list:
    """The model-index entries (top-1 and top-5 on the evaluation split), which the Hub parses."""
    from huggingface_hub import EvalResult

    dataset = info["dataset"]
    out = []
    for key, metric_type, metric_name in (
        ("eval_top1", "accuracy", "top-1 accuracy"),
        ("eval_top5", "top_5_accuracy", "top-5 accuracy"),
    ):
        if key in results:
            out.append(
                EvalResult(
                    task_type="image-classification",
                    task_name="Image Classification",
                    dataset_type=dataset,
                    dataset_name=dataset,
                    dataset_split=info["eval_split"],
                    metric_type=metric_type,
                    metric_name=metric_name,
                    metric_value=round(results[key], 6),
                )
            )
    return out


def _training_summary(run_config: dict, info: Optional[dict] = None) -> str:
    epochs = run_config.get("num_train_epochs")
    optim_args = f" ({run_config['optim_args']})" if run_config.get("optim_args") else ""
    pipeline = (info or {}).get("pipeline") or f"augmentation {run_config.get('augmentation')}"
    return (
        (f"{epochs:g} epochs" if run_config.get("max_steps", -1) in (-1, None) else f"{run_config['max_steps']} steps")
        + f", batch {run_config.get('per_device_train_batch_size')} per device, {run_config.get('optim')}"
        f"{optim_args}, LR {run_config.get('learning_rate')} ({run_config.get('lr_scheduler_type')}"
        + (
            f", x{run_config.get('lr_decay_rate')} after epochs {run_config.get('lr_decay_epochs')}"
            if run_config.get("lr_decay_epochs")
            else ""
        )
        + f"), weight decay {run_config.get('weight_decay')}, seed {run_config.get('seed')}; data: {pipeline}"
    )


def _initialisation(info: dict) -> str:
    pretrained = (info.get("student") or {}).get("pretrained_from")
    return f"starting from pretrained weights ({pretrained})" if pretrained else "from random initialisation"


def _input_fields(config: dict) -> dict:
    """Classes and input of a saved model, from hf_mkcd's config or timm's Hub layout (``pretrained_cfg``)."""
    timm_cfg = config.get("pretrained_cfg") or {}
    return {
        "num_labels": config.get("num_labels")
        or config.get("num_classes")
        or len(config.get("id2label") or config.get("label_names") or []),
        "image_size": config.get("image_size") or timm_cfg.get("input_size", [0])[-1],
        "num_channels": config.get("num_channels") or timm_cfg.get("input_size", [3])[0],
    }


def _curves_and_run_config(output_dir: str) -> tuple:
    """What every card embeds from the run's files: the training curves (drawn now) and run_config.yaml's text."""
    curves = training_curves(output_dir)
    with open(os.path.join(output_dir, "run_config.yaml")) as f:
        return (os.path.basename(curves) if curves else CURVES_NAME), f.read()


def _read_run(output_dir: str):
    results = _read(output_dir, "all_results.json")
    info = _read(output_dir, INFO_NAME)
    config = _read(output_dir, "config.json")
    run_config = _read(output_dir, "run_config.yaml", yaml.safe_load)
    if not (results and info and config and run_config):
        raise ValueError(
            f"{output_dir!r} is not a finished hf_mkcd run (all_results.json, {INFO_NAME}, config.json and "
            "run_config.yaml are needed)"
        )
    return results, info, config, run_config


def classifier_card(output_dir: str, repo_id: Optional[str] = None, license: str = "apache-2.0"):
    """The model card of a run without a teacher (a teacher, or the vanilla baseline): a plain classifier's card,
    its data, recipe, accuracy and how to load it; nothing about distillation."""
    from huggingface_hub import ModelCard, ModelCardData

    results, info, config, run_config = _read_run(output_dir)
    repo_id = repo_id or os.path.basename(os.path.abspath(output_dir))
    dataset = info["dataset"]
    arch = info["student"]["architecture"]
    card_data = ModelCardData(
        library_name="timm" if config.get("architecture") else "transformers",
        pipeline_tag="image-classification",
        license=license,
        model_name=repo_id,
        tags=["image-classification", "timm", "hf_mkcd"],
        datasets=[dataset] if "/" in dataset and not os.path.exists(dataset) else None,
        metrics=["accuracy"],
        eval_results=_eval_results(results, info),
    )
    curves_file, run_config_text = _curves_and_run_config(output_dir)
    return ModelCard.from_template(
        card_data,
        template_str=template("classifier"),
        model_name=repo_id,
        repo_id=repo_id,
        student_arch=arch,
        init=_initialisation(info),
        dataset=dataset,
        **_input_fields(config),
        eval_set=info.get("eval_set") or f"{info['eval_split']}, {results.get('eval_samples')} images",
        top1=_pct(results.get("eval_top1")),
        top5=_pct(results.get("eval_top5")),
        test_top1=_pct(results["test_top1"]) if "test_top1" in results else None,
        test_split=run_config.get("test_split"),
        params=f"{info['student']['params']:,}",
        mflops=f"{info['student']['mflops']:.1f}",
        training_summary=_training_summary(run_config, info),
        run_config=run_config_text.strip(),
        curves_file=curves_file,
        remote_code="" if not arch.startswith("cifar_") and config.get("architecture") else ", trust_remote_code=True",
        citations=LIBRARY_BIBTEX,
    )


def student_card(
    output_dir: str, repo_id: Optional[str] = None, vanilla_dir: Optional[str] = None, license: str = "apache-2.0"
):
    """The model card of a finished distillation run (``huggingface_hub.ModelCard``)."""
    from huggingface_hub import ModelCard, ModelCardData

    from .distillers.base import get_distiller_class

    results, info, config, run_config = _read_run(output_dir)
    method = get_distiller_class(info["method"])
    repo_id = repo_id or os.path.basename(os.path.abspath(output_dir))
    dataset = info["dataset"]
    teacher = info.get("teacher") or {}
    teacher_repo = (
        teacher.get("name")
        if teacher.get("name") and "/" in teacher["name"] and not os.path.exists(teacher["name"])
        else None
    )
    teacher_label = teacher.get("name", "(none)")
    if (
        teacher and not teacher_repo and os.path.isdir(teacher_label)
    ):  # a local directory: its path means nothing elsewhere
        local_name = os.path.basename(os.path.normpath(teacher_label))
        teacher_label = f"{teacher.get('architecture') or 'teacher'} (trained locally: {local_name}/)"
    eval_results = _eval_results(results, info)
    card_data = ModelCardData(
        library_name="transformers",
        pipeline_tag="image-classification",
        license=license,
        model_name=repo_id,
        tags=["knowledge-distillation", info["method"], "hf_mkcd", "timm", "image-classification"],
        datasets=[dataset] if "/" in dataset and not os.path.exists(dataset) else None,
        base_model=teacher_repo,
        metrics=["accuracy"],
        eval_results=eval_results,
    )
    rows = [
        {
            "name": f"`{info['student']['architecture']}` (this model)",
            "role": f"student, {info['method']}",
            "top1": _pct(results.get("eval_top1")),
            "top5": _pct(results.get("eval_top5")),
            "params": f"{info['student']['params']:,}",
            "mflops": f"{info['student']['mflops']:.1f}",
        }
    ]
    if teacher:
        check = teacher.get("check")
        if check:  # measured on this run's data before training: the figure that tells what the student learnt from
            role = f"teacher (measured before training on {check['samples']:,} of these evaluation images)"
            top1, top5 = check["top1"], None
        else:
            role = (
                f"teacher (its own evaluation, {teacher['recorded_samples']:,} images)"
                if teacher.get("recorded_samples")
                else "teacher"
            )
            top1, top5 = teacher.get("recorded_top1"), teacher.get("recorded_top5")
        rows.append(
            {
                "name": f"`{teacher_label}`",
                "role": role,
                "top1": _pct(top1),
                "top5": _pct(top5),
                "params": f"{teacher['params']:,}",
                "mflops": f"{teacher['mflops']:.1f}",
            }
        )
    note = (
        ""
        if (teacher.get("check") or teacher.get("recorded_top1") is not None)
        else ("The teacher's accuracy was neither measured (--skip_teacher_check) nor recorded with it (–).")
    )
    if vanilla_dir:
        vanilla = _read(vanilla_dir, "all_results.json") or {}
        vinfo = _read(vanilla_dir, INFO_NAME) or {}
        if vinfo.get("eval_set") and vinfo.get("eval_set") != info.get("eval_set"):
            note += (
                f" The vanilla student was evaluated on other images ({vinfo['eval_set']}): its row does not compare "
                "like with like."
            )
        rows.append(
            {
                "name": f"`{(vinfo.get('student') or {}).get('architecture', info['student']['architecture'])}`",
                "role": f"vanilla student (no teacher, {_initialisation(vinfo)})",
                "top1": _pct(vanilla.get("eval_top1")),
                "top5": _pct(vanilla.get("eval_top5")),
                "params": f"{(vinfo.get('student') or {}).get('params', 0):,}",
                "mflops": f"{(vinfo.get('student') or {}).get('mflops', 0):.1f}",
            }
        )
    curves_file, run_config_text = _curves_and_run_config(output_dir)
    training = _training_summary(run_config, info)
    citations = "\n\n".join(
        b
        for b in (method.bibtex, get_distiller_class("mkcd").bibtex if info["method"] != "mkcd" else "", LIBRARY_BIBTEX)
        if b
    )
    return ModelCard.from_template(
        card_data,
        template_str=template("student"),
        model_name=repo_id,
        repo_id=repo_id,
        student_arch=info["student"]["architecture"],
        teacher_name=teacher_label,
        teacher_params=f"{teacher.get('params', 0):,}",
        method=info["method"],
        method_name=info["method"].upper(),
        method_paper=method.paper,
        method_summary=_first_sentence(sys.modules[method.__module__].__doc__) or method.paper,
        dataset=dataset,
        **_input_fields(config),
        eval_set=info.get("eval_set") or f"{info['eval_split']}, {results.get('eval_samples')} images",
        results=rows,
        results_note=note,
        hparams=", ".join(
            f"{k} {v:g}" if isinstance(v, (int, float)) else f"{k} {v}" for k, v in info["hparams"].items()
        ),
        temperature=info.get("temperature") or "not used by this method",
        projector=info["projector"]["name"],
        projector_params=f"{info['projector']['params']:,}",
        projector_options=_projector_options(info["projector"]),
        head=info["head"],
        native=bool(config.get("architecture")),  # timm's layout: loaded without custom code
        init=_initialisation(info),
        training_summary=training,
        run_config=run_config_text.strip(),
        curves_file=curves_file,
        citations=citations,
    )


def write_student_card(output_dir: str, repo_id: Optional[str] = None, vanilla_dir: Optional[str] = None) -> str:
    """The card that fits the run's role: a plain classifier's for a run without a teacher, the distillation card
    (with the vanilla baseline beside it, where ``vanilla_dir`` gives one) for a distilled student."""
    info = _read(output_dir, INFO_NAME) or {}
    if not info.get("teacher") and info.get("method", "none") == "none":
        card = classifier_card(output_dir, repo_id)
    else:
        card = student_card(output_dir, repo_id, vanilla_dir)
    path = os.path.join(output_dir, "README.md")
    card.save(path)
    return path
