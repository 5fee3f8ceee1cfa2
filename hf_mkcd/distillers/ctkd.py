"""``ctkd``: Li et al., "Curriculum Temperature for Knowledge Distillation" (AAAI 2023), as
``zhengli97/CTKD`` (``models/temp_global.py``, ``train_student.py``).

KD (CE 0.1 + KD 0.9) with CTKD's learned adversarial temperature (``temperature.CTKDTemperature``):
the method's default schedule is ``ctkd``. ``--temperature_schedule ctkd`` gives the same temperature
to any other method that uses one (kd, dkd, mkcd, dist, srrl, crd/ab with a KD term).
"""

from .base import register_distiller
from .kd import KD
from .temperature import CTKDTemperature


@register_distiller("ctkd")
class CTKD(KD):
    paper = 'Li et al., AAAI 2023'
    recipe_note = (  # the reference setting (recipe comments)
        "CE 0.1 + KD 0.9 with the learned adversarial temperature (zhengli97/CTKD)"
    )
    recipe_settings = {}  # its temperature is learned
    bibtex = (
        '@inproceedings{li2023curriculum,\n'
        '  title={Curriculum Temperature for Knowledge Distillation},\n'
        '  author={Li, Zheng and Li, Xiang and Yang, Lingfeng and Zhao, Borui and Song, Renjie and Luo, Lei '
        'and Li, Jun and Yang, Jian},\n'
        '  booktitle={AAAI},\n'
        '  year={2023}\n'
        '}'
    )
    temperature_schedule = "ctkd"
    # decay_epochs: the epochs over which the gradient reversal's lambda ramps 0 -> -1 (CTKD: 10 of 240); a shorter
    # run scales it as it scales every other epoch count (``distiller_kwargs: {decay_epochs: 0.5}`` for 12 epochs)
    defaults = {**KD.defaults, "decay_epochs": 10.0}

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if isinstance(self.temperature, CTKDTemperature):
            self.temperature.decay_epochs = self.hparams["decay_epochs"]
