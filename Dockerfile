# The gateway image: `ipam serve` on port 8080. Point it at an etcd cluster with
# IPAM_ETCD_ENDPOINTS (without it, the node embeds a single-member etcd, which
# needs the etcd-server package installed below).
FROM python:3.11-slim-bookworm

RUN apt-get update \
    && apt-get install -y --no-install-recommends etcd-server \
    && rm -rf /var/lib/apt/lists/*

WORKDIR /app
COPY pyproject.toml ./
COPY allocator ./allocator
COPY gateway ./gateway
COPY bench ./bench
RUN pip install --no-cache-dir .

ENV IPAM_HOST=0.0.0.0 \
    IPAM_PORT=8080 \
    IPAM_DATA_DIR=/var/lib/ipam
EXPOSE 8080
STOPSIGNAL SIGTERM
HEALTHCHECK --interval=5s --timeout=2s CMD python -c "import urllib.request,sys; urllib.request.urlopen('http://127.0.0.1:8080/readyz', timeout=2)" || exit 1
ENTRYPOINT ["ipam"]
CMD ["serve"]
