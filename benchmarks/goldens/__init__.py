"""CI goldens in two tiers (DESIGN §7), built to hold on any CPU.

* **Inference goldens** (`benchmarks.goldens.inference`, `results/expected/inference/`): one
  tiny instance per registered model family, with checked-in weights and real digits images;
  logits within a stated tolerance, routing decisions and per-sample MACs exact, decisions
  that sit within `margin_epsilon` of flipping exempt. Architecture counts
  (`results/expected/architectures.json`) are exact.
* **Training checks** (`benchmarks.goldens.training`, `results/expected/training.json`):
  short runs bounded by bands measured over every kernel setting and several seeds.

    python -m benchmarks.goldens check                  # all tiers (exit 1 on drift, 2 on bad input)
    python -m benchmarks.goldens record [--only NAME]   # re-record inference goldens + architectures
    python -m benchmarks.goldens measure                # re-measure the training bands (slow)
    python -m benchmarks.portability                    # check under every kernel setting

Users record and verify goldens of their own models with `dynbench check` (docs/ci.md).
"""

from __future__ import annotations

from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
EXPECTED_DIR = REPO_ROOT / "results" / "expected"
INFERENCE_DIR = EXPECTED_DIR / "inference"
CASES_FILE = INFERENCE_DIR / "cases.yaml"
ARCHITECTURES_FILE = EXPECTED_DIR / "architectures.json"
TRAINING_FILE = EXPECTED_DIR / "training.json"
TIERS = ("inference", "architectures", "training")
