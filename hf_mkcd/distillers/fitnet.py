"""``fitnet``: Romero et al., "FitNets: Hints for Thin Deep Nets" (ICLR 2015), as mdistiller ``FitNet.py``.

One stage map (the hint layer, index 2 = end of stage 2 with the stem at 0, 16x16 for CIFAR ResNets)
goes through a ConvReg regressor to the teacher's map at the same index:
    L = CE + 100 * MSE(reg(F_s^h), F_t^h)     (one stage: regressor and student train together).
"""

from .base import Distiller, register_distiller
from .losses import feature_mse
from ..models.projectors import ConvRegressor


@register_distiller("fitnet")
class FitNet(Distiller):
    paper = 'Romero et al., ICLR 2015'
    recipe_note = "CE 1 + 100 x hint MSE at stage 2 (mdistiller)"  # the reference setting (recipe comments)
    bibtex = (
        '@inproceedings{romero2015fitnets,\n'
        '  title={FitNets: Hints for Thin Deep Nets},\n'
        '  author={Romero, Adriana and Ballas, Nicolas and Kahou, Samira Ebrahimi and Chassang, Antoine '
        'and Gatta, Carlo and Bengio, Yoshua},\n'
        '  booktitle={ICLR},\n'
        '  year={2015}\n'
        '}'
    )
    student_needs = frozenset({"logits", "stages"})
    teacher_needs = frozenset({"stages"})
    needs_pair = True
    defaults = {"ce_weight": 1.0, "feat_weight": 100.0, "hint_layer": 2}

    def __init__(self, pair=None, temperature=None, **hparams):
        super().__init__(pair, temperature, **hparams)
        self.hint = int(self.hparams["hint_layer"])
        s, t = pair.student_shapes["stages"], pair.teacher_shapes["stages"]
        for who, stages in (("student", s), ("teacher", t)):
            if not -len(stages) <= self.hint < len(stages):
                raise ValueError(
                    f"fitnet: hint_layer {self.hint} out of range for the {who}'s {len(stages)} stage maps"
                )
        self.regressor = ConvRegressor(s[self.hint], t[self.hint])

    def forward(self, student, teacher, batch, step):
        h = self.hparams
        hint = self.regressor(student["stages"][self.hint])
        return {
            "loss_ce": h["ce_weight"] * self.ce(student["logits"], batch["labels"]),
            "loss_feat": h["feat_weight"] * feature_mse(hint, teacher["stages"][self.hint]),
        }
