r"""Publish a finished run (a distilled student, or a classifier from train_teacher.py) to the Hugging Face Hub.

    python scripts/push_to_hub.py students/mkcd-resnet8x4 --hub_model_id me/resnet8x4-mkcd-cifar100
    python scripts/push_to_hub.py runs/quickstart/student_mkcd --hub_model_id me/x \
        --vanilla_dir runs/quickstart/student_none

Writes the run's model card (README.md: metadata with a model-index, results, training curves, recipe, usage,
citations), then uploads weights, config, the model's code, the image processor, the card and its plot,
run_config.yaml and all_results.json. ``--card_only`` writes the card without uploading. Offline it stops in
one line and changes nothing but the local card. ``HF_ENDPOINT`` selects another Hub-compatible server.
"""

import argparse
import sys

from hf_mkcd.hub import push_run
from hf_mkcd.hub import HubUnavailableError
from hf_mkcd.model_card import write_student_card


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("output_dir", help="a finished run's output directory")
    p.add_argument("--hub_model_id", help="org/name on the Hub (required unless --card_only)")
    p.add_argument("--hub_private_repo", action="store_true")
    p.add_argument("--hub_token", default=None, help="default: the token of `hf auth login` / HF_TOKEN")
    p.add_argument("--vanilla_dir", help="a vanilla student's run on the same data, shown in the card's results")
    p.add_argument("--card_only", action="store_true", help="write README.md (and the curves) without uploading")
    a = p.parse_args(argv)
    if a.card_only:
        print(f"wrote {write_student_card(a.output_dir, a.hub_model_id, a.vanilla_dir)}")
        return 0
    if not a.hub_model_id:
        p.error("--hub_model_id is required to push (or pass --card_only)")
    try:
        url = push_run(a.output_dir, a.hub_model_id, a.hub_private_repo, a.hub_token, a.vanilla_dir)
    except (HubUnavailableError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"pushed {a.output_dir} to {url}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
