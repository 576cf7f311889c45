"""Ray job: self-supervised pretraining of the encoder on the scene's own imagery (Ray Train
DDP); writes the encoder file that the train stage starts from.

    ray job submit --working-dir . -- python jobs/pretrain.py --config jobs/configs/tiny-local.yaml

Reads the `pretrain:` section of a pipeline config; the paths that link it to the other stages
default to names under the config's `workdir`.
"""

import sys
from pathlib import Path

# The w2w of the submitted working directory, the same code Ray's workers import.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from w2w.jobs import main

if __name__ == "__main__":
    main("pretrain")
