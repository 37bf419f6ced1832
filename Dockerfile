# corsproxy: a CORS reverse proxy in front of one upstream API.
#   docker build -t corsproxy .
#   docker run -p 8080:8080 -e UPSTREAM_URL=http://api:9000 corsproxy
#   docker run -p 8080:8080 -v "$PWD/config.yaml:/etc/corsproxy/config.yaml:ro" corsproxy
# Proxy on 8080, admin (/healthz /readyz /metrics /config /decisions) on 9901.
FROM python:3.11-slim

# Listen on all interfaces inside the container, so a mounted config without
# listen.host / admin.host is still reachable (the defaults outside are 127.0.0.1).
ENV CORSPROXY_HOST=0.0.0.0 \
    CORSPROXY_ADMIN_HOST=0.0.0.0 \
    CORSPROXY_CONFIG=/etc/corsproxy/config.yaml \
    PYTHONUNBUFFERED=1

# A fixed numeric uid, so Kubernetes' runAsNonRoot can verify it without a name lookup.
RUN useradd --system --uid 10001 --user-group --no-create-home --home-dir /nonexistent \
        --shell /usr/sbin/nologin corsproxy

# Only what the package needs (.dockerignore keeps the rest out of the context);
# the source is removed once installed, in the same layer as the install.
COPY pyproject.toml README.md /usr/src/corsproxy/
COPY corsproxy /usr/src/corsproxy/corsproxy
RUN pip install --no-cache-dir --disable-pip-version-check --root-user-action=ignore /usr/src/corsproxy \
    && rm -rf /usr/src/corsproxy

# The example config reads UPSTREAM_URL; mount a file or a ConfigMap over it.
COPY config.example.yaml /etc/corsproxy/config.yaml

USER 10001:10001
EXPOSE 8080/tcp 9901/tcp

# slim has no curl: ask the admin listener with the stdlib.
HEALTHCHECK --interval=30s --timeout=3s --start-period=10s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:9901/healthz', timeout=2)"]

# Exec form: corsproxy is PID 1 and gets SIGTERM (graceful drain) and SIGHUP (reload) directly.
ENTRYPOINT ["corsproxy"]
CMD ["serve", "-c", "/etc/corsproxy/config.yaml"]
