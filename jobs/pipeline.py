"""Ray job: every configured stage of a pipeline config, in order (or those named by --stage).

    ray job submit --working-dir . -- python jobs/pipeline.py --config jobs/configs/tiny-local.yaml

Every stage's settings are validated before the first stage starts; a re-run resumes
training and prediction where they stopped.
"""

import sys
from pathlib import Path

# The w2w of the submitted working directory, the same code Ray's workers import.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from w2w.jobs import main

if __name__ == "__main__":
    main()
