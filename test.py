"""Client: send an image to the breast-ultrasound classifier and print its answer.

Not a pytest file (pytest only collects tests/). Usage: python test.py IMAGE [--endpoint
URL | --function NAME] [--region REGION] [--timeout SECONDS]; see --help.
"""

from busi_classifier.local.client import main

if __name__ == "__main__":
    raise SystemExit(main())
