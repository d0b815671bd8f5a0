"""`python -m busi_classifier COMMAND`: train | audit | split | evaluate | predict | serve | invoke | synthesize."""

from busi_classifier.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
