"""lm-eval `custom_dataset` for the task YAMLs in this folder: JSON Lines data files named relative
to this folder, found whatever the working directory and however the task is loaded (`altbench
eval`, or lm-eval itself with this folder as an include path). lm-eval calls it with the task's
metadata and dataset_kwargs as keywords."""

from pathlib import Path

HERE = Path(__file__).parent


def load(data_files: dict[str, str], **_):
    import datasets

    return datasets.load_dataset("json", data_files={split: str(HERE / f) for split, f in data_files.items()})
