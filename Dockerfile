# AWS Lambda container image for the breast-ultrasound classifier (serving world only:
# LiteRT + Pillow + NumPy, no TensorFlow).
#   docker build -t busi-classifier .                       # model from artifacts/model
#   docker build --build-arg MODEL_DIR=path/to/model -t busi-classifier .
#   docker build --build-arg EXTRA_VARIANTS="float32" ...   # also carry other variants (or "all")
#   docker buildx build --platform linux/arm64 -t busi-classifier:arm64 .   # Graviton (docs/deploy.md)
#   docker run --rm -p 9000:8080 busi-classifier
#   python test.py some.png
# ai-edge-litert wheels need glibc >= 2.27: python:3.12 (Amazon Linux 2023) or newer.
# tests/test_emulator.py lays out this file's task root (COPY, RUN, ENV) and runs it under
# the real Lambda Runtime Interface Emulator; keep to the instructions it knows.

# Stage 1: the model files the function serves. model.json's default_variant (the one
# served unless MODEL_VARIANT says otherwise), the variants in EXTRA_VARIANTS and the input
# check's input_check.npz (checked against model.json's sha256: the build fails where it is
# missing, as the function would refuse to start); the other variants never reach a layer
# of the final image (each variant is 23-90 MB at 224 px).
FROM public.ecr.aws/lambda/python:3.12 AS model
ARG MODEL_DIR=artifacts/model
ARG EXTRA_VARIANTS=""
COPY docker/select_model.py /tmp/select_model.py
COPY ${MODEL_DIR}/ /tmp/model-all/
RUN python3 /tmp/select_model.py /tmp/model-all /tmp/model ${EXTRA_VARIANTS}

# Stage 2: the function.
FROM public.ecr.aws/lambda/python:3.12

COPY requirements.txt ${LAMBDA_TASK_ROOT}/
RUN pip install --no-cache-dir -r ${LAMBDA_TASK_ROOT}/requirements.txt --target ${LAMBDA_TASK_ROOT}

COPY --from=model /tmp/model/ ${LAMBDA_TASK_ROOT}/model/
ENV MODEL_PATH=${LAMBDA_TASK_ROOT}/model

# The serving world as a whole: busi_classifier/serving imports nothing else of the package
# (tests/test_layout.py enforces it), so the training world never enters the image.
COPY busi_classifier/__init__.py ${LAMBDA_TASK_ROOT}/busi_classifier/
COPY busi_classifier/serving/ ${LAMBDA_TASK_ROOT}/busi_classifier/serving/
COPY lambda_function.py ${LAMBDA_TASK_ROOT}/

CMD ["lambda_function.lambda_handler"]
