# The real squid (Debian's) as ssrf_proxy; the deploy mounts its config at /etc/squid/squid.conf.
ARG BASE
FROM ${BASE}
# Perl comes only through libdbi-perl, for the database auth helper this proxy never runs: purged,
# it halves the layer (~100 -> ~47 MB) that every new VM pulls.
RUN apt-get update -q \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y -q squid \
 && dpkg --purge --force-depends libdbi-perl perl libperl5.40 perl-modules-5.40 \
 && rm -rf /var/lib/apt/lists/* /var/cache/apt/*.bin /var/log/*.log
COPY squid.conf /etc/squid/squid.conf
COPY standin.py /usr/local/bin/standin
RUN chmod 0755 /usr/local/bin/standin && squid -k parse -f /etc/squid/squid.conf
ENV STANDIN_ROLE=squid STANDIN_VERSION=local PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1
EXPOSE 3128
STOPSIGNAL SIGTERM
ENTRYPOINT ["/usr/local/bin/standin", "exec", "--"]
CMD ["squid", "-N", "-d", "1", "-f", "/etc/squid/squid.conf"]
