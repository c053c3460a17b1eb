# syntax=docker/dockerfile:1
#
# The local SQS emulator of the demo and tests: moto, run and seeded by
# scripts/sqs_emulator.py (the same script and pinned requirements CI uses).
ARG PYTHON_IMAGE=python:3.11-slim
FROM ${PYTHON_IMAGE}
WORKDIR /app
COPY scripts/requirements.txt scripts/requirements.txt
RUN pip install --no-cache-dir -r scripts/requirements.txt
COPY scripts/sqs_emulator.py scripts/sqs_emulator.py
COPY data/login-queue-sample.json data/login-queue-sample.json
EXPOSE 4566
CMD ["python", "scripts/sqs_emulator.py", "serve", "--host", "0.0.0.0", "--port", "4566"]
