"""deploy/nginx.conf and deploy/nginx-cluster.conf, as shipped, in front of the uvproxyd
processes under test (Python 3 standard library only): scripts/nginx-test and
scripts/browser-test run them.

    from nginxfront import HOST, NGINX, self_signed, site_config
    cert, key = self_signed(tmp)               # for HOST and 127.0.0.1, made with openssl
    conf = site_config(tmp, port, uvproxyd_port, cert, key)   # or cluster_config(tmp, port, [a, b, c])
    spawn(nginx_command(tmp, conf), ...)       # then wait for `port`
    spki_sha256(cert)                          # for Chromium's --ignore-certificate-errors-spki-list

Only the files' listen port, uvproxyd's addresses and the certificate paths change; anything
else they say runs as written. `missing()` names what is not installed.
"""
import base64
import hashlib
import os
import shutil
import subprocess

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SHIPPED = os.path.join(ROOT, "deploy", "nginx.conf")
CLUSTER = os.path.join(ROOT, "deploy", "nginx-cluster.conf")
HOST = "play.example.org"
NGINX = shutil.which("nginx") or "/usr/sbin/nginx"


def missing():
    """What of nginx and openssl is not installed (scripts/install-deps --tests installs both)."""
    return [name for name, path in (("nginx", NGINX), ("openssl", shutil.which("openssl")))
            if not path or not os.path.exists(path)]


def self_signed(tmp):
    """A self-signed certificate for HOST and 127.0.0.1 (EC P-256, two days): (cert, key) paths."""
    cert, key = os.path.join(tmp, "cert.pem"), os.path.join(tmp, "key.pem")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
                    "-nodes", "-days", "2", "-subj", f"/CN={HOST}", "-addext",
                    f"subjectAltName=DNS:{HOST},IP:127.0.0.1", "-keyout", key, "-out", cert],
                   check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return cert, key


def site_config(tmp, port, uvproxyd_port, cert, key):
    """nginx.conf in `tmp` with deploy/nginx.conf listening on 127.0.0.1:`port` in front of
    uvproxyd on `uvproxyd_port` (`configure`)."""
    return configure(tmp, SHIPPED, [("listen 443 ssl http2;", f"listen 127.0.0.1:{port} ssl http2;"),
                                    ("server 127.0.0.1:8181;", f"server 127.0.0.1:{uvproxyd_port};"),
                                    (f"/etc/letsencrypt/live/{HOST}/fullchain.pem", cert),
                                    (f"/etc/letsencrypt/live/{HOST}/privkey.pem", key)])


def cluster_config(tmp, port, node_ports):
    """nginx.conf in `tmp` with deploy/nginx-cluster.conf listening on 127.0.0.1:`port` in front
    of the nodes a, b, c on `node_ports` (`configure`)."""
    return configure(tmp, CLUSTER, [("listen 8080;", f"listen 127.0.0.1:{port};")]
                     + [(f"127.0.0.1:{8181 + i};", f"127.0.0.1:{p};") for i, p in enumerate(node_ports)])


def configure(tmp, shipped, replacements):
    """nginx.conf in `tmp`: what Debian's /etc/nginx/nginx.conf gives a conf.d file (an `http`
    block), in the foreground, with the file `shipped` changed by `replacements` only. Raises
    ValueError if the file lacks one of them."""
    with open(shipped) as f:
        site = f.read()
    for old, new in replacements:
        if old not in site:
            raise ValueError(f"{os.path.relpath(shipped, ROOT)} has no `{old}` (the tests change only that)")
        site = site.replace(old, new)
    with open(os.path.join(tmp, "site.conf"), "w") as f:
        f.write(site)
    conf = os.path.join(tmp, "nginx.conf")
    with open(conf, "w") as f:
        f.write(f"""daemon off;
master_process off;
pid {tmp}/nginx.pid;
error_log {tmp}/nginx-error.log;
events {{}}
http {{
    access_log off;
    client_body_temp_path {tmp}/body;
    proxy_temp_path {tmp}/proxy;
    include {tmp}/site.conf;
}}
""")
    return conf


def nginx_command(tmp, conf):
    return [NGINX, "-p", tmp, "-c", conf]


def told(tmp):
    """What nginx said about a failed start: its stderr (`nginx-stderr.log`, which the caller
    points it to: a config error comes before the error log opens) and its error log."""
    out = b""
    for name in ("nginx-stderr.log", "nginx-error.log"):
        path = os.path.join(tmp, name)
        if os.path.exists(path):
            with open(path, "rb") as f:
                out += f.read()
    return out.decode(errors="replace")[-500:]


def spki_sha256(cert):
    """The base64 SHA-256 of the certificate's public key (Chromium's
    --ignore-certificate-errors-spki-list trusts exactly that key)."""
    der = subprocess.run(["openssl", "x509", "-in", cert, "-pubkey", "-noout"], check=True, capture_output=True).stdout
    der = subprocess.run(["openssl", "pkey", "-pubin", "-outform", "der"], input=der, check=True,
                         capture_output=True).stdout
    return base64.b64encode(hashlib.sha256(der).digest()).decode()
