"""The README tells the truth about the current code: its tables are what the results files say, every command
it shows parses with the real argument parser and names files that exist, and its Python blocks run (offline:
a local copy of the CIFAR-100 schema and a community-layout checkpoint stand in for the downloads)."""

import os
import re
import shlex
import subprocess
import sys

import pytest
from conftest import photo_folder

ROOT = os.path.dirname(os.path.dirname(__file__))
README = open(os.path.join(ROOT, "README.md")).read()
sys.path.insert(0, os.path.join(ROOT, "scripts"))


def blocks(lang):
    return re.findall(rf"```{lang}\n(.*?)```", README, re.S)


def commands():
    """Every shell command of the README, continuation lines joined."""
    for block in blocks("bash"):
        for command in block.replace("\\\n", " ").splitlines():
            command = command.split("  #")[0].strip()
            if command and not command.startswith("#"):
                yield command


def test_generated_tables_match_the_results_files():
    import make_readme

    assert make_readme.main(["--check"]) == 0, "run python scripts/make_readme.py"


@pytest.mark.parametrize("command", [c for c in commands() if re.search(r"scripts/(distill|train_teacher)\.py", c)])
def test_every_training_command_parses(command):
    """The flags exist, the recipe exists, the values parse (without running anything)."""
    from hf_mkcd.data import DataArguments
    from hf_mkcd.run import ModelArguments, parse_args
    from hf_mkcd.trainer import DistillationTrainingArguments

    words = shlex.split(command.split("&&")[-1])
    script = next(i for i, w in enumerate(words) if re.search(r"scripts/(distill|train_teacher)\.py$", w))
    argv = words[script + 1 :]
    if argv and argv[0].endswith(".yaml"):
        assert os.path.isfile(os.path.join(ROOT, argv[0])), argv[0]
        argv[0] = os.path.join(ROOT, argv[0])
    if "--output_dir" not in argv and not (argv and argv[0].endswith(".yaml")):
        argv += ["--output_dir", "unused"]
    parse_args((ModelArguments, DataArguments, DistillationTrainingArguments), argv)


def test_every_path_and_script_named_exists():
    for command in commands():
        for word in shlex.split(command):
            if re.fullmatch(r"(scripts|recipes|suites|accelerate_configs)/[\w./-]+\.(py|yaml)", word):
                assert os.path.isfile(os.path.join(ROOT, word)), word
    for target in re.findall(r"\]\(((?:docs|model_cards|results|recipes|suites)/[^)#]+)\)", README):
        assert os.path.exists(os.path.join(ROOT, target)), target


@pytest.fixture(scope="module")
def offline_stand_ins(tmp_path_factory):
    """What the README's Python blocks download or have at hand, made locally."""
    import timm
    import torch
    from cifar100_schema import write_cifar100_parquet

    import hf_mkcd  # noqa: F401

    root = tmp_path_factory.mktemp("readme")
    os.makedirs(root / "resnet32x4_vanilla")
    torch.manual_seed(0)
    torch.save(
        {"model": timm.create_model("cifar_resnet32x4", num_classes=100).state_dict()},
        root / "resnet32x4_vanilla" / "ckpt_epoch_240.pth",
    )
    return root, write_cifar100_parquet(root)


@pytest.mark.parametrize("index", range(len(blocks("python"))))
def test_python_blocks_run(index, offline_stand_ins):
    code = blocks("python")[index]
    if "trust_remote_code=True)\n" in code and "me/" in code:
        pytest.skip("pulls a model from the Hub by id (tests/test_hub.py covers that path)")
    root, fixture = offline_stand_ins
    code = code.replace(
        'dataset_name="uoft-cs/cifar100")', f'dataset_name="{fixture}", max_train_samples=16, max_eval_samples=16)'
    )
    code = code.replace(
        'method="mkcd")',
        'method="mkcd", max_steps=1, use_cpu=True, report_to="none", '
        'save_strategy="no", eval_strategy="no", per_device_train_batch_size=8)',
    )
    prelude = "import torch\nimages = torch.randn(2, 3, 32, 32)\n"
    run = subprocess.run(
        [sys.executable, "-c", prelude + code],
        cwd=root,
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "PYTHONPATH": ROOT},
    )
    assert run.returncode == 0, run.stderr[-3000:]


def test_the_photos_walkthrough_runs_on_a_folder_of_jpegs(tmp_path):
    """The "Your own teacher and photos" command, as written, on stand-ins: a folder of JPEG photos of mixed sizes
    and aspect ratios, and a tiny ViTForImageClassification saved with save_pretrained whose id2label names the
    folders. Its weights are random, so the pre-flight would (rightly) stop the run: the test says so with
    --skip_teacher_check, and trains 2 steps."""
    import torch
    from transformers import ViTConfig, ViTForImageClassification

    (command,) = [c for c in commands() if "my_vit_teacher" in c]
    classes = ["cat", "dog", "fox"]
    photo_folder(tmp_path / "my_photos", {c: (8, 3) for c in classes}, sizes=(80, 200))
    torch.manual_seed(0)
    labels = dict(enumerate(classes))
    ViTForImageClassification(
        ViTConfig(
            image_size=96,
            patch_size=16,
            hidden_size=32,
            num_hidden_layers=1,
            num_attention_heads=2,
            intermediate_size=64,
            num_labels=3,
            id2label=labels,
            label2id={v: k for k, v in labels.items()},
        )
    ).save_pretrained(tmp_path / "my_vit_teacher")
    words = shlex.split(command) + [
        "--max_steps",
        "2",
        "--skip_teacher_check",
        "true",
        "--save_strategy",
        "no",
        "--eval_strategy",
        "no",
        "--report_to",
        "none",
        "--disable_tqdm",
        "true",
        "--dataloader_num_workers",
        "0",
    ]
    words = [os.path.join(ROOT, w) if w.startswith(("scripts/", "accelerate_configs/")) else w for w in words]
    words[0] = os.path.join(os.path.dirname(sys.executable), "accelerate")  # this environment's launcher
    run = subprocess.run(words, cwd=tmp_path, capture_output=True, text=True, timeout=900)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "RandomResizedCrop + flip; evaluation: shorter side to 109 + centre crop 96)" in run.stderr
    card = (tmp_path / "students" / "photos-kd" / "README.md").read_text()
    assert "ViTForImageClassification" in card and "the 'test' split, 9 images" in card


def _timm_weights_in_cache(cache, architecture: str) -> None:
    """A stand-in for ``timm/<architecture>.<tag>`` in the Hugging Face cache (random weights, ImageNet's 1000
    classes), where ``timm.create_model(pretrained=True)`` finds it offline."""
    import timm
    import torch
    from safetensors.torch import save_file
    from timm.models import get_pretrained_cfg

    repo = get_pretrained_cfg(architecture).hf_hub_id
    revision = "0" * 40
    folder = cache / f"models--{repo.replace('/', '--')}"
    os.makedirs(folder / "refs")
    (folder / "refs" / "main").write_text(revision)
    os.makedirs(folder / "snapshots" / revision)
    torch.manual_seed(0)
    weights = timm.create_model(architecture).state_dict()
    save_file({k: v.contiguous() for k, v in weights.items()}, folder / "snapshots" / revision / "model.safetensors")


def test_the_own_data_walkthrough_runs_as_written(tmp_path):
    """The three commands of "First distillation with your own data", as written, on a folder of JPEG photos of
    mixed sizes below and above 96 px, with pretrained weights from a stand-in of the Hub cache (offline): the
    pipeline is chosen by the data and said with its reason, the loss is logged, the weights are loaded, and each
    run ends with the card of its role, the distilled student's naming its baseline's accuracy."""
    import json

    runs = [c for c in commands() if "my_photos" in c and "recipes/photos" in c]
    assert len(runs) == 3, runs
    classes = ["cat", "dog", "fox"]
    photo_folder(tmp_path / "my_photos", {c: (6, 2) for c in classes}, sizes=(48, 160))  # below and above 96 px
    cache = tmp_path / "hf_cache"
    for architecture in ("resnet18", "mobilenetv3_small_100"):
        _timm_weights_in_cache(cache, architecture)
    env = {**os.environ, "HF_HUB_CACHE": str(cache), "HF_HUB_OFFLINE": "1", "PYTHONPATH": ROOT}
    extra = ["--max_steps", "3", "--per_device_train_batch_size", "6", "--report_to", "none"]
    extra += ["--disable_tqdm", "true", "--dataloader_num_workers", "0"]
    for command in runs:
        words = shlex.split(command) + extra
        if "distill.py" in command:  # a 3-step teacher guesses: the pre-flight would rightly stop the run
            words += ["--skip_teacher_check", "true"]
        words = [
            os.path.join(ROOT, w) if w.startswith(("scripts/", "accelerate_configs/", "recipes/")) else w for w in words
        ]
        words[0] = os.path.join(os.path.dirname(sys.executable), "accelerate")
        run = subprocess.run(words, cwd=tmp_path, capture_output=True, text=True, timeout=900, env=env)
        assert run.returncode == 0, run.stderr[-3000:]
        plan = [line for line in run.stderr.splitlines() if "plan: data:" in line]
        assert plan and "why: auto: the images differ in size" in plan[0]  # photos below 96 px: cropped, not squashed
        assert "student initialised from timm:" in run.stderr and "classifier re-initialised" in run.stderr
    teacher, vanilla, student = (
        tmp_path / d for d in ("teachers/photos", "students/photos-vanilla", "students/photos-kd")
    )
    for out in (teacher, vanilla, student):
        state = json.loads((out / "trainer_state.json").read_text())
        assert sum("loss" in e for e in state["log_history"]) == 3  # every step of a short run logs its loss
        assert not [n for n in os.listdir(out) if n.startswith("checkpoint-")]  # pruned once finished
    for out in (teacher, vanilla):  # plain classifiers: timm's layout, one copy of the weights, a classifier card
        assert json.loads((out / "config.json").read_text())["architecture"] in ("resnet18", "mobilenetv3_small_100")
        assert not (out / "timm").exists() and not list(out.glob("*.py"))
        card = " ".join((out / "README.md").read_text().split())
        assert "plain cross-entropy training, starting from pretrained weights (timm:" in card
        prose = card[: card.index("<details>")]  # the run_config.yaml below it lists every flag, set or not
        assert "distilled from" not in prose and "MKCD" not in card and "skip_teacher_check" not in prose
    card = " ".join((student / "README.md").read_text().split())
    vanilla_top1 = json.loads((vanilla / "all_results.json").read_text())["eval_top1"]
    assert "vanilla student (no teacher, starting from pretrained weights" in card
    assert f"| {100 * vanilla_top1:.2f} |" in card
    assert "trust_remote_code" not in card and 'timm.create_model("hf-hub:photos-kd"' in card  # it loads natively
    from transformers import pipeline

    classify = pipeline("image-classification", model=str(student))  # no custom code: timm's layout
    assert {r["label"] for r in classify(str(tmp_path / "my_photos/test/cat/0.jpg"), top_k=3)} == set(classes)
