# The image of `ipam serve` (the default command) and `ipam dhcp`, run as an
# unprivileged user. A node listens on IPAM_PORT (8080). Point it at an etcd cluster
# with IPAM_ETCD_ENDPOINTS (without it, the node embeds a single-member etcd under
# IPAM_DATA_DIR, which needs the etcd-server package installed below).
FROM python:3.11-slim-bookworm

RUN apt-get update \
    && apt-get install -y --no-install-recommends etcd-server \
    && rm -rf /var/lib/apt/lists/*

WORKDIR /app
COPY pyproject.toml ./
COPY allocator ./allocator
COPY gateway ./gateway
COPY netagent ./netagent
COPY devcluster ./devcluster
COPY bench ./bench
RUN pip install --no-cache-dir .

# A numeric uid, so that an orchestrator (Kubernetes' runAsNonRoot) can tell it is not
# root; the data directory is the only place it writes.
RUN groupadd --system --gid 10001 ipam \
    && useradd --system --uid 10001 --gid 10001 --home-dir /var/lib/ipam \
        --no-create-home --shell /usr/sbin/nologin ipam \
    && install -d -o 10001 -g 10001 -m 0700 /var/lib/ipam
USER 10001:10001

ENV IPAM_HOST=0.0.0.0 \
    IPAM_PORT=8080 \
    IPAM_DATA_DIR=/var/lib/ipam
EXPOSE 8080
STOPSIGNAL SIGTERM
# Ready on the port the node listens on: IPAM_PORT as the container runs it, else the
# default of `ipam serve`; over HTTPS when IPAM_TLS_CERT_FILE is set (give the TLS files
# as variables, not flags, for the check to see them). The certificate is not verified:
# it names the service, not 127.0.0.1, and the check asks only whether the node is
# ready. Without a proxy (an HTTP_PROXY given to the node is not for this), and in
# Python: the image has no curl. A node waits for etcd while it starts, hence the start
# period.
HEALTHCHECK --interval=5s --timeout=3s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import os, ssl, urllib.request as r; c = ssl.create_default_context(); c.check_hostname = False; c.verify_mode = ssl.CERT_NONE; scheme = 'https' if os.environ.get('IPAM_TLS_CERT_FILE') else 'http'; r.build_opener(r.ProxyHandler({}), r.HTTPSHandler(context=c)).open('%s://127.0.0.1:%s/readyz' % (scheme, os.environ.get('IPAM_PORT') or '8080'), timeout=2)"]
ENTRYPOINT ["ipam"]
CMD ["serve"]
