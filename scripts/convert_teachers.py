"""Turn the community CIFAR-100 teachers into Hub-ready directories (timm's Hub layout + a model card).

    python scripts/convert_teachers.py download_ckpts/cifar_teachers --output_dir hub_teachers
    python scripts/convert_teachers.py download_ckpts/cifar_teachers --output_dir hub_teachers \
        --eval_dataset uoft-cs/cifar100 --push_to my-org          # accuracy measured, then pushed

The input is the extracted ``cifar_teachers.tar`` (docs/teachers.md): ``<name>_vanilla/ckpt_epoch_240.pth``
for resnet56, resnet110, resnet32x4, ResNet50, wrn_40_2 and vgg13 (any of them; other ``*_vanilla``
directories whose name is a CIFAR-zoo model are converted too). Each becomes ``<output_dir>/cifar100-<name>``:
``config.json`` + ``model.safetensors`` in timm's Hub layout (read by ``timm.create_model("hf_hub:...")`` after
``import hf_mkcd``, by ``hf_mkcd.load_teacher`` and by ``--teacher_model_name_or_path``), with the CIFAR-100
label names and normalisation, and a README whose accuracy is measured on ``--eval_dataset`` when one is
given, never copied from a paper. ``--push_to ORG`` uploads each to ``ORG/cifar100-<name>``.
"""

import argparse
import hashlib
import json
import os
import sys

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

SOURCE = (
    "the KD literature's standard CIFAR-100 teachers (RepDistiller's `*_vanilla/ckpt_epoch_240.pth`, "
    "released as `cifar_teachers.tar` by mdistiller)"
)
ZOO_CITATION = (
    "@inproceedings{tian2020contrastive,\n  title={Contrastive Representation Distillation},\n"
    "  author={Tian, Yonglong and Krishnan, Dilip and Isola, Phillip},\n  booktitle={ICLR},\n  year={2020}\n}"
)


def timm_name(directory_name: str):
    from hf_mkcd.models import CIFAR_MODELS

    reference = directory_name[: -len("_vanilla")] if directory_name.endswith("_vanilla") else None
    return next((zoo for zoo, ref in CIFAR_MODELS.items() if ref == reference), None)


def sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


@torch.no_grad()
def measure(model, data, batch_size: int = 256) -> dict:
    loader = torch.utils.data.DataLoader(data.eval, batch_size=batch_size)
    correct1 = correct5 = n = 0
    for batch in loader:
        logits = model(batch["pixel_values"])
        top5 = logits.topk(5, 1).indices
        labels = batch["labels"]
        correct1 += int((top5[:, 0] == labels).sum())
        correct5 += int((top5 == labels[:, None]).any(1).sum())
        n += len(labels)
    return {"top1": correct1 / n, "top5": correct5 / n, "samples": n}


def convert(checkpoint: str, name: str, output_dir: str, data=None, label_names=None) -> str:
    from huggingface_hub import ModelCard, ModelCardData
    from huggingface_hub import EvalResult
    from timm.models import save_for_hf

    from hf_mkcd import load_teacher
    from hf_mkcd.model_card import template

    model = load_teacher(name, checkpoint=checkpoint)
    cfg = model.pretrained_cfg
    out = os.path.join(output_dir, f"cifar100-{name[len('cifar_') :]}")
    os.makedirs(out, exist_ok=True)
    names = label_names or [f"LABEL_{i}" for i in range(model.num_classes)]
    save_for_hf(model, out, safe_serialization=True, model_config={"label_names": names})
    with open(os.path.join(out, "config.json")) as f:
        config = json.load(f)
    (config.get("model_args") or {}).pop("num_classes", None)  # transformers' TimmWrapper would pass it twice
    with open(os.path.join(out, "config.json"), "w") as f:
        json.dump(config, f, indent=2)
    accuracy = measure(model, data) if data is not None else None
    repo_name = os.path.basename(out)
    eval_results = None
    if accuracy:
        eval_results = [
            EvalResult(
                task_type="image-classification",
                dataset_type=data.name,
                dataset_name=data.name,
                dataset_split=data.split,
                metric_type="accuracy",
                metric_value=round(accuracy["top1"], 6),
            ),
            EvalResult(
                task_type="image-classification",
                dataset_type=data.name,
                dataset_name=data.name,
                dataset_split=data.split,
                metric_type="top_5_accuracy",
                metric_value=round(accuracy["top5"], 6),
            ),
        ]
        text = (
            f"Measured by this conversion on `{data.name}` ({data.split}, {accuracy['samples']:,} images): "
            f"**top-1 {100 * accuracy['top1']:.2f} %**, top-5 {100 * accuracy['top5']:.2f} %."
        )
    else:
        text = (
            "Not measured by this conversion (no `--eval_dataset` was given): evaluate it on the CIFAR-100 test split "
            "before relying on it."
        )
    card = ModelCard.from_template(
        ModelCardData(
            library_name="timm",
            pipeline_tag="image-classification",
            license="mit",
            model_name=repo_name,
            tags=["image-classification", "timm", "hf_mkcd", "knowledge-distillation", "cifar100"],
            datasets=["uoft-cs/cifar100"],
            metrics=["accuracy"],
            eval_results=eval_results,
        ),
        template_str=template("teacher"),
        model_name=repo_name,
        repo_id=repo_name,
        architecture=name[len("cifar_") :],
        timm_name=name,
        source=SOURCE,
        accuracy_text=text,
        image_size=cfg["input_size"][-1],
        mean=list(cfg["mean"]),
        std=list(cfg["std"]),
        checkpoint=os.path.relpath(checkpoint),
        checkpoint_sha256=sha256(checkpoint),
        params=f"{sum(p.numel() for p in model.parameters()):,}",
        citations=ZOO_CITATION,
    )
    card.save(os.path.join(out, "README.md"))
    return out


def eval_data(dataset: str, split: str, max_samples):
    from hf_mkcd.data import DataArguments, prepare_datasets
    from hf_mkcd.models import CIFAR100_MEAN, CIFAR100_STD

    prepared = prepare_datasets(
        DataArguments(dataset_name=dataset, eval_split=split, max_eval_samples=max_samples),
        3,
        32,
        CIFAR100_MEAN,
        CIFAR100_STD,
    )
    prepared.name, prepared.split = dataset, split
    return prepared


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("teachers_dir", help="the extracted archive: a folder of <name>_vanilla/ckpt_epoch_240.pth")
    p.add_argument("--output_dir", default="hub_teachers")
    p.add_argument("--eval_dataset", help="measure each teacher's accuracy here (Hub id or local copy of CIFAR-100)")
    p.add_argument("--eval_split", default="test")
    p.add_argument("--max_eval_samples", type=int, default=None)
    p.add_argument("--push_to", help="an organisation or user: push each to <it>/cifar100-<name>")
    p.add_argument("--hub_private_repo", action="store_true")
    a = p.parse_args(argv)
    import hf_mkcd  # noqa: F401  (registers the zoo)

    if not os.path.isdir(a.teachers_dir):
        sys.exit(f"error: {a.teachers_dir!r} is not a directory: extract cifar_teachers.tar first (docs/teachers.md)")
    found = []
    for entry in sorted(os.listdir(a.teachers_dir)):
        name = timm_name(entry)
        ckpt = os.path.join(a.teachers_dir, entry, "ckpt_epoch_240.pth")
        if name and os.path.isfile(ckpt):
            found.append((name, ckpt))
    if not found:
        sys.exit(f"error: no <name>_vanilla/ckpt_epoch_240.pth of a CIFAR-zoo model in {a.teachers_dir!r}")
    data = eval_data(a.eval_dataset, a.eval_split, a.max_eval_samples) if a.eval_dataset else None
    names = [data.id2label[i] for i in range(len(data.id2label))] if data is not None else None
    converted = []
    for name, ckpt in found:
        out = convert(ckpt, name, a.output_dir, data, names)
        converted.append(out)
        print(f"{name:20s} -> {out}")
    if a.push_to:
        from huggingface_hub import HfApi

        from hf_mkcd.hub import hub_reachable, unreachable_reason

        if not hub_reachable():
            sys.exit(
                f"error: the Hugging Face Hub cannot be reached ({unreachable_reason()}); the converted teachers "
                f"are in {a.output_dir}: push them later"
            )
        api = HfApi()
        for out in converted:
            repo = api.create_repo(f"{a.push_to}/{os.path.basename(out)}", private=a.hub_private_repo, exist_ok=True)
            api.upload_folder(
                folder_path=out, repo_id=repo.repo_id, commit_message="Add the converted CIFAR-100 teacher"
            )
            print(f"pushed {out} to {repo}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
