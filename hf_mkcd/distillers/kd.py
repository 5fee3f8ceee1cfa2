"""``kd``: Hinton et al., "Distilling the Knowledge in a Neural Network" (2015).

L = 0.1 * CE(z_s, y) + 0.9 * T^2 * KL(p_t^T || p_s^T), T = 4 (mdistiller/RepDistiller CIFAR defaults).
"""

from .base import Distiller, register_distiller
from .losses import kd_loss


@register_distiller("kd")
class KD(Distiller):
    paper = 'Hinton et al., 2015'
    recipe_note = "CE 0.1 + KD 0.9, T = 4 (mdistiller/RepDistiller)"  # the reference setting (recipe comments)
    recipe_settings = {"temperature": 4.0}
    bibtex = (
        '@article{hinton2015distilling,\n'
        '  title={Distilling the Knowledge in a Neural Network},\n'
        '  author={Hinton, Geoffrey and Vinyals, Oriol and Dean, Jeff},\n'
        '  journal={arXiv preprint arXiv:1503.02531},\n'
        '  year={2015}\n'
        '}'
    )
    uses_temperature = True
    defaults = {"ce_weight": 0.1, "kd_weight": 0.9}

    def forward(self, student, teacher, batch, step):
        return {
            "loss_ce": self.hparams["ce_weight"] * self.ce(student["logits"], batch["labels"]),
            "loss_kd": self.hparams["kd_weight"] * kd_loss(student["logits"], teacher["logits"], step.temperature),
        }
