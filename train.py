"""Train, validate or test the aligner policy: ``python train.py fit --config configs/aligner.yaml``."""

from aligner_lightning.cli import main

if __name__ == "__main__":
    main()
