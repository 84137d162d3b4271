# The real nginx (Debian's); its site config is mounted at deploy time into /etc/nginx/conf.d.
ARG BASE
FROM ${BASE}
RUN apt-get update -q \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y -q nginx \
 && rm -rf /var/lib/apt/lists/* /var/cache/apt/*.bin /etc/nginx/sites-enabled /etc/nginx/sites-available \
 && mkdir -p /etc/nginx/conf.d
COPY nginx.conf /etc/nginx/nginx.conf
COPY standin.py /usr/local/bin/standin
RUN chmod 0755 /usr/local/bin/standin && nginx -t
ENV STANDIN_ROLE=nginx STANDIN_VERSION=local PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1
EXPOSE 80
STOPSIGNAL SIGQUIT
ENTRYPOINT ["/usr/local/bin/standin", "exec", "--"]
CMD ["nginx", "-g", "daemon off;"]
