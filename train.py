"""Train the breast-ultrasound classifier. Run `python train.py --help`."""

from busi_classifier.cli import train_main

if __name__ == "__main__":
    raise SystemExit(train_main())
