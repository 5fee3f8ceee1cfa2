"""The exact ``uoft-cs/cifar100`` schema (as the dataset card of the Hub copy declares it), for offline fixtures."""

from datasets import ClassLabel, Features, Image

FINE = (
    "apple aquarium_fish baby bear beaver bed bee beetle bicycle bottle bowl boy bridge bus butterfly camel can "
    "castle caterpillar cattle chair chimpanzee clock cloud cockroach couch cra crocodile cup dinosaur dolphin "
    "elephant flatfish forest fox girl hamster house kangaroo keyboard lamp lawn_mower leopard lion lizard lobster "
    "man maple_tree motorcycle mountain mouse mushroom oak_tree orange orchid otter palm_tree pear pickup_truck "
    "pine_tree plain plate poppy porcupine possum rabbit raccoon ray road rocket rose sea seal shark shrew skunk "
    "skyscraper snail snake spider squirrel streetcar sunflower sweet_pepper table tank telephone television tiger "
    "tractor train trout tulip turtle wardrobe whale willow_tree wolf woman worm"
).split()
COARSE = (
    "aquatic_mammals fish flowers food_containers fruit_and_vegetables household_electrical_devices "
    "household_furniture insects large_carnivores large_man-made_outdoor_things large_natural_outdoor_scenes "
    "large_omnivores_and_herbivores medium_mammals non-insect_invertebrates people reptiles small_mammals trees "
    "vehicles_1 vehicles_2"
).split()
FEATURES = Features({"img": Image(), "fine_label": ClassLabel(names=FINE), "coarse_label": ClassLabel(names=COARSE)})
assert len(FINE) == 100 and len(COARSE) == 20 and FINE[26] == "cra"


def write_cifar100_parquet(root, n_train: int = 48, n_test: int = 24, seed: int = 0):
    import numpy as np
    from datasets import Dataset

    rng = np.random.default_rng(seed)
    for split, n in (("train", n_train), ("test", n_test)):
        ds = Dataset.from_dict(
            {
                "img": [rng.integers(0, 256, (32, 32, 3), dtype=np.uint8) for _ in range(n)],
                "fine_label": rng.integers(0, 100, n).tolist(),
                "coarse_label": rng.integers(0, 20, n).tolist(),
            },
            features=FEATURES,
        )
        ds.to_parquet(f"{root}/{split}-00000-of-00001.parquet")
    return root
