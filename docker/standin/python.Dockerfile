# A local stand-in for the official python:3.11-slim image, for `scripts/test
# image` (no registry): Debian 12's Python 3.11 on a debootstrap'ed bookworm
# (BASE_IMAGE), with `python` and `pip` on PATH as the official image has
# them (a virtual environment, PEP 668).
ARG BASE_IMAGE=localhost/fetch-etl-base:bookworm
FROM ${BASE_IMAGE}
RUN apt-get update \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends python3 python3-venv ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && python3 -m venv /opt/python
# pip trusts the system's certificate store (tests/image mounts the host's
# over it while building: this machine reaches PyPI through a proxy whose
# certificate authority only the host's store holds).
ENV PATH=/opt/python/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin LANG=C.UTF-8 \
    PIP_CERT=/etc/ssl/certs/ca-certificates.crt
CMD ["python3"]
