"""Train a classifier from scratch (a teacher, or the vanilla-student baseline): ``--method none``.

    accelerate launch scripts/train_teacher.py --model_name_or_path cifar_resnet32x4 \
        --dataset_name uoft-cs/cifar100 --output_dir teachers/resnet32x4
    accelerate launch scripts/train_teacher.py recipes/cifar100/teacher_resnet32x4.yaml

The output directory loads as a teacher (``--teacher_model_name_or_path teachers/resnet32x4``) and as
a model (``AutoModelForImageClassification.from_pretrained`` after ``import hf_mkcd``).
"""

import sys

from fast_help import help_cache_path, print_cached_help

if __name__ == "__main__" and print_cached_help("train_teacher", sys.argv[1:]):  # before torch is imported
    sys.exit(0)

from hf_mkcd.data import DataArguments  # noqa: E402
from hf_mkcd.run import ModelArguments, main_guard, parse_args, run  # noqa: E402
from hf_mkcd.trainer import DistillationTrainingArguments  # noqa: E402


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    model_args, data_args, training_args = parse_args(
        (ModelArguments, DataArguments, DistillationTrainingArguments), argv, help_path=help_cache_path("train_teacher")
    )
    if training_args.method != "none" or model_args.teacher_model_name_or_path:
        training_args.method = "none"
        if model_args.teacher_model_name_or_path:
            raise ValueError("train_teacher.py trains without a teacher; use scripts/distill.py to distil")
    return run(model_args, data_args, training_args)


if __name__ == "__main__":
    sys.exit(main_guard(main))  # a failure's last line is its cause and what to do
