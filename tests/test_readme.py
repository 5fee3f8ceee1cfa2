"""The README tells the truth about the current code: its tables are what the results files say, every command
it shows parses with the real argument parser and names files that exist, and its Python blocks run (offline:
a local copy of the CIFAR-100 schema and a community-layout checkpoint stand in for the downloads)."""

import os
import re
import shlex
import subprocess
import sys

import pytest

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
