"""`python -m busi_classifier COMMAND`: synthesize | train | evaluate | invoke | serve."""

from __future__ import annotations

import sys


def synthesize_main(argv) -> int:
    from busi_classifier.data.synthetic import main

    return main(argv) or 0


def invoke_main(argv) -> int:
    from busi_classifier.local.invoke import invoke_main as main

    return main(argv)


def evaluate_main(argv) -> int:
    from busi_classifier.evaluation.scoring import main

    return main(argv)


def serve_main(argv) -> int:
    from busi_classifier.local.server import serve_main as main

    return main(argv)


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    commands = {"synthesize": synthesize_main, "invoke": invoke_main, "evaluate": evaluate_main, "serve": serve_main}
    if not argv or argv[0] in ("-h", "--help") or (argv[0] not in commands and argv[0] != "train"):
        print("usage: python -m busi_classifier {synthesize,train,evaluate,invoke,serve} [options]\n"
              "  synthesize  write a synthetic dataset in the BUSI layout\n"
              "  train       same as train.py\n"
              "  evaluate    score an exported model.keras / .tflite on a split of split.csv\n"
              "  invoke      run the Lambda handler on a few images through every event shape\n"
              "  serve       a local HTTP endpoint (POST /predict, GET /health) for the Lambda handler")
        return 0 if argv and argv[0] in ("-h", "--help") else 2
    if argv[0] == "train":
        from .cli import train_main

        return train_main(argv[1:])
    return commands[argv[0]](argv[1:])


if __name__ == "__main__":
    raise SystemExit(main())
