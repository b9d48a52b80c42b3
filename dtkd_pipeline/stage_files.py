"""Names of what each stage writes inside its output folder.

params.yaml chooses the folders (``data.prepared_dir``, ``distill.out_dir``, ``evaluate.out_dir``);
the names inside them are fixed, and live here so the stage that writes a file and the stages that
read it agree without importing one another.
"""

from __future__ import annotations

# prepare-data, inside data.prepared_dir
TRAIN_STORE = "train.zarr"  # LR/HR training tiles
VAL_DIR = "val"  # whole-image LR/HR validation pairs

# distill, inside distill.out_dir
STUDENT_FILE = "student.pt"
CHECKPOINTS_DIR = "checkpoints"
DVCLIVE_DIR = "dvclive"

# evaluate, inside evaluate.out_dir
EFFICIENCY_JSON = "efficiency.json"
EFFICIENCY_MD = "efficiency.md"
COMPARISONS_DIR = "comparisons"
