"""Train, validate or test the aligner policy: ``python train.py fit --config configs/aligner.yaml``."""

if __name__ == "__main__":
    # Imported here, not at the top: a spawned async collector process re-imports this file, and must not
    # pay for the CLI and Lightning.
    from aligner_lightning.cli import main

    main()
