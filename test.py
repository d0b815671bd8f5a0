"""Client: send an image to the breast-ultrasound classifier and print its answer.

Not a pytest file (pytest only collects tests/). Usage: python test.py IMAGE [--endpoint
URL | --stack NAME | --function NAME] [--region REGION] [--api-key KEY] [--timeout SECONDS]
[--explain] [--overlay-out PATH] [--segment] [--segment-out PATH]; see --help.
"""

from busi_classifier.local.client import main

if __name__ == "__main__":
    raise SystemExit(main())
