# AWS Lambda container image for the breast-ultrasound classifier (serving world only:
# LiteRT + Pillow + NumPy, no TensorFlow).
#   docker build -t busi-classifier .                       # model from artifacts/model
#   docker build --build-arg MODEL_DIR=path/to/model -t busi-classifier .
#   docker run --rm -p 9000:8080 busi-classifier
#   python test.py some.png
# ai-edge-litert wheels need glibc >= 2.27: python:3.12 (Amazon Linux 2023) or newer.
FROM public.ecr.aws/lambda/python:3.12

COPY requirements.txt ${LAMBDA_TASK_ROOT}/
RUN pip install --no-cache-dir -r ${LAMBDA_TASK_ROOT}/requirements.txt --target ${LAMBDA_TASK_ROOT}

# The model: model.json (classes, input size, version, default variant) and the TFLite
# variants; the function serves model.json's default_variant unless MODEL_VARIANT says otherwise.
ARG MODEL_DIR=artifacts/model
COPY ${MODEL_DIR}/model.json ${MODEL_DIR}/model.tflite ${MODEL_DIR}/model_float16.tflite ${MODEL_DIR}/model_int8_dynamic.tflite ${MODEL_DIR}/model_int8_full.tflite ${LAMBDA_TASK_ROOT}/model/
ENV MODEL_PATH=${LAMBDA_TASK_ROOT}/model

# The serving world as a whole: busi_classifier/serving imports nothing else of the package
# (tests/test_layout.py enforces it), so the training world never enters the image.
COPY busi_classifier/__init__.py ${LAMBDA_TASK_ROOT}/busi_classifier/
COPY busi_classifier/serving/ ${LAMBDA_TASK_ROOT}/busi_classifier/serving/
COPY lambda_function.py ${LAMBDA_TASK_ROOT}/

CMD ["lambda_function.lambda_handler"]
