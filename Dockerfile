# goproxy-router edge image: builds the wheel, runs as a non-root user.
#   docker build -t goproxy-router .
#   docker run -p 8080:8080 goproxy-router
FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY router ./router
COPY plugins ./plugins
RUN pip wheel --no-cache-dir --wheel-dir /wheels .

FROM python:3.11-slim
RUN useradd --system --uid 10001 --create-home --home-dir /var/lib/goproxy-router goproxy
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir /wheels/*.whl && rm -rf /wheels
COPY routes.yaml /etc/goproxy-router/routes.yaml
# The shipped routes.yaml keeps its cache in ./cache next to itself; give it a volume.
RUN mkdir -p /var/cache/goproxy-router && chown goproxy /var/cache/goproxy-router \
    && ln -s /var/cache/goproxy-router /etc/goproxy-router/cache
VOLUME /var/cache/goproxy-router
WORKDIR /var/lib/goproxy-router
USER goproxy
EXPOSE 8080
HEALTHCHECK --interval=15s --timeout=3s --start-period=5s --retries=3 \
  CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8080/healthz', timeout=2)"]
ENTRYPOINT ["goproxy-router"]
CMD ["serve", "--config", "/etc/goproxy-router/routes.yaml"]
