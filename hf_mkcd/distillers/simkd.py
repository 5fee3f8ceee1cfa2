"""``simkd``: Chen et al., "Knowledge Distillation with the Reused Teacher Classifier" (CVPR 2022).

The student's last map goes through SimKD's 1x1-3x3-1x1 projector; the loss is MSE to the teacher's
pre-pool map, nothing else (``-c 0 -d 0 -b 1`` in DefangChen/SimKD); the teacher's frozen classifier
is the student's head at inference.
"""

from .base import Distiller, register_distiller
from .losses import feature_mse


@register_distiller("simkd")
class SimKD(Distiller):
    paper = 'Chen et al., CVPR 2022'
    recipe_note = (  # the reference setting (recipe comments)
        "feature MSE only, projector factor 2 (DefangChen/SimKD -f 2)"
    )
    recipe_settings = {"projector_factor": 2}
    bibtex = (
        '@inproceedings{chen2022knowledge,\n'
        '  title={Knowledge Distillation with the Reused Teacher Classifier},\n'
        '  author={Chen, Defang and Mei, Jian-Ping and Zhang, Hailin and Wang, Can and Feng, Yan and Chen, Chun},\n'
        '  booktitle={CVPR},\n'
        '  year={2022}\n'
        '}'
    )
    student_needs = frozenset({"logits", "projected"})
    teacher_needs = frozenset({"features"})
    projector = "simkd"
    head = "teacher"
    defaults = {"feat_weight": 1.0}

    def forward(self, student, teacher, batch, step):
        return {
            "loss_feat": self.hparams["feat_weight"] * feature_mse(student["projected"], teacher["features_aligned"])
        }
