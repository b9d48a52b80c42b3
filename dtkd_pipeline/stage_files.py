"""Names of what each stage writes inside its output folder, and the advice when prepare-data's
outputs are missing.

params.yaml chooses the folders (``data.prepared_dir``, ``distill.out_dir``, ``evaluate.out_dir``);
the names inside them are fixed, and live here so the stage that writes a file and the stages that
read it agree without importing one another.
"""

from __future__ import annotations

# prepare-data, inside data.prepared_dir
TRAIN_STORE = "train.zarr"  # LR/HR training tiles
VAL_DIR = "val"  # whole-image LR/HR validation pairs
# Worded once, so every stage that finds them missing gives the same advice.
RUN_PREPARE_DATA_FIRST = "run `dtkd-pipeline prepare-data` first"

# distill, inside distill.out_dir
STUDENT_FILE = "student.pt"
CHECKPOINTS_DIR = "checkpoints"
DVCLIVE_DIR = "dvclive"

# evaluate, inside evaluate.out_dir
EFFICIENCY_JSON = "efficiency.json"
EFFICIENCY_MD = "efficiency.md"
EFFICIENCY_PNG = "efficiency.png"  # latency and throughput against batch size
COMPARISONS_DIR = "comparisons"
