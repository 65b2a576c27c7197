# Filled in by the deployment issue (#9): multi-stage `server` and `sandbox` targets.
# Until then this builds the CLI on a slim Python base so the layout of the design card holds.
FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md ./
COPY runtime runtime
COPY sandbox sandbox
COPY training training
COPY benchmarks benchmarks
RUN pip install --no-cache-dir .
USER nobody
ENTRYPOINT ["mathcoder"]
