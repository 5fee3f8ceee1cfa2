r"""Distil a teacher into a student with any registered method.

    accelerate launch scripts/distill.py --teacher_model_name_or_path teachers/resnet32x4 \
        --model_name_or_path cifar_resnet8x4 --method mkcd --dataset_name uoft-cs/cifar100 \
        --output_dir students/mkcd-resnet8x4
    accelerate launch scripts/distill.py recipes/cifar100/resnet32x4_resnet8x4_mkcd.yaml [--flag value ...]

Every TrainingArguments flag works; the defaults are the CIFAR-100 recipe of the KD literature (docs/methods.md).
The output directory ends up holding the student (``AutoModelForImageClassification.from_pretrained`` after
``import hf_mkcd``), its image processor, all_results.json, trainer_state.json and run_config.yaml.
"""

import sys

from fast_help import help_cache_path, print_cached_help

if __name__ == "__main__" and print_cached_help("distill", sys.argv[1:]):  # before torch is imported
    sys.exit(0)

from hf_mkcd.data import DataArguments  # noqa: E402
from hf_mkcd.run import ModelArguments, main_guard, parse_args, run  # noqa: E402
from hf_mkcd.trainer import DistillationTrainingArguments  # noqa: E402


def main(argv=None):
    model_args, data_args, training_args = parse_args(
        (ModelArguments, DataArguments, DistillationTrainingArguments),
        argv,
        description=__doc__,
        help_path=help_cache_path("distill"),
    )
    return run(model_args, data_args, training_args)


if __name__ == "__main__":
    sys.exit(main_guard(main))  # a failure's last line is its cause and what to do
