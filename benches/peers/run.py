#!/usr/bin/env python3
"""Fluidity against the tunnels people would pick instead, on one machine, in one run.

Each tunnel is set up as "HTTP proxy entry -> tunnel -> exit -> origin" on loopback:

  fluidity     fluidity-agent (HTTP proxy) -> one mutual-TLS 1.3 tunnel -> fluidity-server
  shadowsocks  sslocal --protocol http -> aes-256-gcm -> ssserver        (shadowsocks-rust)
  stunnel      stunnel client -> mutual TLS 1.3 per connection -> stunnel server -> tinyproxy

and driven with the same workloads:

  download / upload   iperf3 through a socat CONNECT shim (one bulk stream, -R for download)
  1 KiB GETs          wrk -t2 -c64 with absolute-form requests through the proxy, nginx origin

For each it prints throughput, requests per second, p99 latency and CPU-seconds per GB of
payload (user + system time of every tunnel process: both ends, and tinyproxy), then
Fluidity's ratios to the best peer. Absolute numbers depend on the machine and what else it
runs; compare the ratios, which come from one run.

  python3 benches/peers/run.py                # installs what is missing, builds, runs
  python3 benches/peers/run.py --seconds 5 --only fluidity,shadowsocks
  FLUIDITY_BIN_DIR=target/profiling python3 benches/peers/run.py --skip-install

Installs (when missing): iperf3, wrk, socat, nginx-light, stunnel4, tinyproxy, openssl from
Debian; shadowsocks-rust with `cargo install` into benches/peers/.tools (a release build,
several minutes the first time). Builds Fluidity's release binaries. Everything listens on
127.0.0.1 only.
"""

import argparse
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
TOOLS = Path(__file__).resolve().parent / ".tools"
SHADOWSOCKS_VERSION = "1.25.0"
# (local-http alone does not compile in 1.25: it needs one of its TLS features.)
SHADOWSOCKS_FEATURES = "logging,local,server,multi-threaded,aead-cipher,local-http,local-http-rustls"
CIPHER = "aes-256-gcm"  # what TLS 1.3 negotiates here too (TLS_AES_256_GCM_SHA384)
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def log(message):
    print(f"== {message}", file=sys.stderr, flush=True)


def run(command, **kwargs):
    return subprocess.run(command, check=True, **kwargs)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_port(port, what, timeout=30.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            time.sleep(0.05)
    raise SystemExit(f"{what} never listened on 127.0.0.1:{port}")


def wait_for_listener(port, what, timeout=30.0):
    """Waits until something listens on 127.0.0.1:port, without connecting to it."""
    needle = f"0100007F:{port:04X} 00000000:0000 0A"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if needle in Path("/proc/net/tcp").read_text():
            return
        time.sleep(0.02)
    raise SystemExit(f"{what} never listened on 127.0.0.1:{port}")


# ---------------------------------------------------------------------------- installation


def install(skip, names):
    debian = {
        "iperf3": "iperf3",
        "wrk": "wrk",
        "socat": "socat",
        "nginx": "nginx-light",
        "stunnel4": "stunnel4",
        "tinyproxy": "tinyproxy",
        "openssl": "openssl",
    }
    missing = [pkg for tool, pkg in debian.items() if not find(tool)]
    if missing:
        if skip:
            raise SystemExit(f"missing: {' '.join(missing)}")
        log(f"installing {' '.join(missing)}")
        sudo = [] if os.geteuid() == 0 else ["sudo"]
        env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
        run(sudo + ["apt-get", "update", "-qq"], env=env)
        run(sudo + ["apt-get", "install", "-y", "-qq"] + missing, env=env)
    if "shadowsocks" in names and not (TOOLS / "bin" / "ssserver").exists():
        if skip:
            raise SystemExit("missing: shadowsocks-rust (run without --skip-install)")
        log(f"cargo install shadowsocks-rust {SHADOWSOCKS_VERSION} (release build)")
        run(["cargo", "install", "--locked", "--quiet", "shadowsocks-rust",
             "--version", SHADOWSOCKS_VERSION, "--no-default-features",
             "--features", SHADOWSOCKS_FEATURES, "--root", str(TOOLS)])
    if "fluidity" in names and not skip:
        log("cargo build --release (fluidity-agent, fluidity-server)")
        run(["cargo", "build", "--release", "--quiet", "-p", "fluidity-agent",
             "-p", "fluidity-server"], cwd=ROOT)


def find(tool):
    for directory in ["/usr/sbin", "/usr/bin", "/sbin", "/bin"]:
        if Path(directory, tool).exists():
            return str(Path(directory, tool))
    return shutil.which(tool)


# ---------------------------------------------------------------------------- processes


class Processes:
    """Started processes: the tunnel's own (counted for CPU) and helpers (not counted)."""

    def __init__(self, work):
        self.work = work
        self.counted = []
        self.helpers = []

    def start(self, name, command, counted=True, env=None):
        log_file = open(self.work / f"{name}.log", "wb")
        process = subprocess.Popen(command, stdout=log_file, stderr=subprocess.STDOUT,
                                   env=dict(os.environ, **(env or {})), cwd=self.work)
        (self.counted if counted else self.helpers).append((name, process))
        return process

    def cpu_seconds(self):
        total = 0.0
        for _, process in self.counted:
            fields = Path(f"/proc/{process.pid}/stat").read_text().rsplit(")", 1)[1].split()
            # utime, stime, cutime, cstime (fields 14-17; the split dropped the first two)
            total += sum(int(x) for x in fields[11:15]) / CLOCK_TICKS
        return total

    def check_alive(self):
        for name, process in self.counted + self.helpers:
            if process.poll() is not None:
                log_text = (self.work / f"{name}.log").read_text(errors="replace")[-2000:]
                raise SystemExit(f"{name} exited ({process.returncode}):\n{log_text}")

    def stop(self):
        for _, process in self.counted + self.helpers:
            if process.poll() is None:
                process.terminate()
        for _, process in self.counted + self.helpers:
            try:
                process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                process.kill()
        self.counted, self.helpers = [], []


# ---------------------------------------------------------------------------- the tunnels


def start_fluidity(procs, work):
    server_port, proxy_port = free_port(), free_port()
    cache = work / "fluidity"
    cache.mkdir(exist_ok=True)
    # FLUIDITY_BIN_DIR: other builds of the binaries (e.g. target/profiling, for perf).
    target = Path(os.environ.get("FLUIDITY_BIN_DIR", ROOT / "target" / "release")).resolve()
    # The origins are on loopback, which the server refuses by default.
    env = {"FLUIDITY_EGRESS_DENY": "[]", "RUST_LOG": "warn"}
    procs.start("fluidity-server", [str(target / "fluidity-server"), "--dev",
                                    "--listen-port", str(server_port),
                                    "--cache-dir", str(cache), "--log-level", "warn"], env=env)
    wait_for_port(server_port, "fluidity-server")
    procs.start("fluidity-agent", [str(target / "fluidity-agent"), "--dev",
                                   "--server", f"127.0.0.1:{server_port}",
                                   "--local-proxy-port", str(proxy_port),
                                   "--cache-dir", str(cache), "--log-level", "warn"], env=env)
    wait_for_port(proxy_port, "fluidity-agent")
    return proxy_port


def start_shadowsocks(procs, work):
    server_port, proxy_port = free_port(), free_port()
    password = "fluidity-bench-password"
    procs.start("ssserver", [str(TOOLS / "bin" / "ssserver"), "-s", f"127.0.0.1:{server_port}",
                             "-m", CIPHER, "-k", password])
    wait_for_port(server_port, "ssserver")
    procs.start("sslocal", [str(TOOLS / "bin" / "sslocal"), "-b", f"127.0.0.1:{proxy_port}",
                            "--protocol", "http", "-s", f"127.0.0.1:{server_port}",
                            "-m", CIPHER, "-k", password])
    wait_for_port(proxy_port, "sslocal")
    return proxy_port


def start_stunnel(procs, work):
    certificates(work)
    tinyproxy_port, tls_port, proxy_port = free_port(), free_port(), free_port()
    (work / "tinyproxy.conf").write_text(
        f"Port {tinyproxy_port}\nListen 127.0.0.1\nTimeout 600\nMaxClients 1024\n"
        "Allow 127.0.0.1\nLogLevel Critical\nDisableViaHeader Yes\n")
    procs.start("tinyproxy", [find("tinyproxy"), "-d", "-c", str(work / "tinyproxy.conf")])
    wait_for_port(tinyproxy_port, "tinyproxy")
    # No Nagle delay on either socket, as a careful operator would set it.
    common = ("foreground = yes\npid =\nsslVersionMin = TLSv1.3\nverifyChain = yes\n"
              "socket = l:TCP_NODELAY=1\nsocket = r:TCP_NODELAY=1\n")
    (work / "stunnel-server.conf").write_text(
        common + f"[exit]\naccept = 127.0.0.1:{tls_port}\nconnect = 127.0.0.1:{tinyproxy_port}\n"
        f"cert = {work}/server.crt\nkey = {work}/server.key\nCAfile = {work}/ca.crt\n"
        "requireCert = yes\n")
    (work / "stunnel-client.conf").write_text(
        common + f"[entry]\nclient = yes\naccept = 127.0.0.1:{proxy_port}\n"
        f"connect = 127.0.0.1:{tls_port}\ncert = {work}/client.crt\nkey = {work}/client.key\n"
        f"CAfile = {work}/ca.crt\ncheckIP = 127.0.0.1\n")
    stunnel = find("stunnel4") or find("stunnel")
    procs.start("stunnel-server", [stunnel, str(work / "stunnel-server.conf")])
    wait_for_port(tls_port, "stunnel (server)")
    procs.start("stunnel-client", [stunnel, str(work / "stunnel-client.conf")])
    wait_for_port(proxy_port, "stunnel (client)")
    return proxy_port


def certificates(work):
    """A CA and two ECDSA P-256 leaves for 127.0.0.1, like Fluidity's."""
    if (work / "client.crt").exists():
        return
    openssl = ["openssl"]
    run(openssl + ["req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
                   "-nodes", "-keyout", "ca.key", "-out", "ca.crt", "-days", "2",
                   "-subj", "/CN=bench CA"], cwd=work, capture_output=True)
    for name in ["server", "client"]:
        run(openssl + ["req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
                       "-keyout", f"{name}.key", "-out", f"{name}.csr",
                       "-subj", f"/CN={name}"], cwd=work, capture_output=True)
        (work / f"{name}.ext").write_text(
            "subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth,clientAuth\n")
        run(openssl + ["x509", "-req", "-in", f"{name}.csr", "-CA", "ca.crt", "-CAkey", "ca.key",
                       "-CAcreateserial", "-days", "2", "-extfile", f"{name}.ext",
                       "-out", f"{name}.crt"], cwd=work, capture_output=True)


TUNNELS = {
    "fluidity": start_fluidity,
    "shadowsocks": start_shadowsocks,
    "stunnel": start_stunnel,
}

# ---------------------------------------------------------------------------- origins


def start_origins(procs, work):
    html = work / "html"
    html.mkdir(exist_ok=True)
    # nginx's workers run as an unprivileged user when started by root.
    os.chmod(work, 0o755)
    (html / "1k").write_bytes(b"x" * 1024)
    nginx_port = free_port()
    (work / "nginx.conf").write_text(f"""
daemon off;
worker_processes 1;
pid {work}/nginx.pid;
error_log {work}/nginx-error.log crit;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    keepalive_requests 1000000;
    client_body_temp_path {work}/nginx-body;
    proxy_temp_path {work}/nginx-proxy;
    fastcgi_temp_path {work}/nginx-fastcgi;
    uwsgi_temp_path {work}/nginx-uwsgi;
    scgi_temp_path {work}/nginx-scgi;
    server {{
        listen 127.0.0.1:{nginx_port};
        root {html};
    }}
}}
""")
    procs.start("nginx", [find("nginx"), "-c", str(work / "nginx.conf"), "-p", str(work)],
                counted=False)
    wait_for_port(nginx_port, "nginx")
    return nginx_port


# ---------------------------------------------------------------------------- workloads


def bulk(procs, work, proxy_port, seconds, download, attempts=3):
    """One bulk TCP stream through the proxy's CONNECT: (Gbit/s, CPU-seconds per GB)."""
    for attempt in range(1, attempts + 1):
        try:
            return bulk_once(procs, proxy_port, seconds, download)
        except RuntimeError as e:
            # iperf3 sometimes loses its control connection at the end of a test; the
            # tunnels are checked alive, so a retry measures the same thing again.
            log(f"iperf3 failed ({e}); attempt {attempt} of {attempts}")
    raise SystemExit("iperf3 kept failing")


def bulk_once(procs, proxy_port, seconds, download):
    iperf_port, shim_port = free_port(), free_port()
    # A one-off iperf3 server per test: no state carried between tests.
    server = subprocess.Popen([find("iperf3"), "-s", "-1", "-B", "127.0.0.1",
                               "-p", str(iperf_port)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    shim = subprocess.Popen(
        [find("socat"), f"TCP-LISTEN:{shim_port},bind=127.0.0.1,reuseaddr,fork",
         f"PROXY:127.0.0.1:127.0.0.1:{iperf_port},proxyport={proxy_port}"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        # Not wait_for_port: a probe would cross the proxy and reach iperf3 as a client.
        wait_for_listener(shim_port, "socat")
        wait_for_listener(iperf_port, "iperf3")
        command = [find("iperf3"), "-c", "127.0.0.1", "-p", str(shim_port), "-t", str(seconds),
                   "-J", "--connect-timeout", "5000"]
        if download:
            command.append("-R")
        cpu = procs.cpu_seconds()
        result = subprocess.run(command, capture_output=True, text=True, timeout=seconds + 60)
        cpu = procs.cpu_seconds() - cpu
        procs.check_alive()
        report = json.loads(result.stdout)
        if "error" in report:
            raise RuntimeError(report["error"])
        received = report["end"]["sum_received"]
        gigabytes = received["bytes"] / 1e9
        return received["bits_per_second"] / 1e9, cpu / gigabytes
    finally:
        for process in [shim, server]:
            process.terminate()
            process.wait()


def requests(procs, work, proxy_port, nginx_port, seconds):
    """1 KiB GETs through the proxy: (requests per second, p99 in ms)."""
    script = work / "absolute.lua"
    script.write_text(f'wrk.path = "http://127.0.0.1:{nginx_port}/1k"\n'
                      f'wrk.headers["Host"] = "127.0.0.1:{nginx_port}"\n')
    result = subprocess.run(
        [find("wrk"), "-t2", "-c64", f"-d{seconds}s", "--latency", "-s", str(script),
         f"http://127.0.0.1:{proxy_port}"],
        capture_output=True, text=True, timeout=seconds + 60)
    procs.check_alive()
    out = result.stdout
    rate = float(re.search(r"Requests/sec:\s*([\d.]+)", out).group(1))
    errors = re.search(r"Non-2xx or 3xx responses:\s*(\d+)", out)
    if errors:
        raise SystemExit(f"wrk saw {errors.group(1)} failed responses:\n{out}")
    p99 = re.search(r"99%\s+([\d.]+)(us|ms|s)", out)
    scale = {"us": 0.001, "ms": 1.0, "s": 1000.0}[p99.group(2)]
    return rate, float(p99.group(1)) * scale


# ---------------------------------------------------------------------------- main


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=int, default=10, help="length of each workload")
    parser.add_argument("--only", default=",".join(TUNNELS), help="tunnels to run")
    parser.add_argument("--skip-install", action="store_true", help="install and build nothing")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()
    names = [n for n in args.only.split(",") if n]
    unknown = set(names) - set(TUNNELS)
    if unknown:
        raise SystemExit(f"unknown tunnels: {', '.join(sorted(unknown))}")
    install(args.skip_install, names)
    results = {}
    with tempfile.TemporaryDirectory(prefix="fluidity-peers-") as tmp:
        work = Path(tmp)
        origins = Processes(work)
        try:
            nginx_port = start_origins(origins, work)
            for name in names:
                procs = Processes(work)
                try:
                    log(f"{name}: starting")
                    proxy_port = TUNNELS[name](procs, work)
                    # Warm up: the first tunnel connection, certificates, caches.
                    requests(procs, work, proxy_port, nginx_port, 1)
                    log(f"{name}: download")
                    down, down_cpu = bulk(procs, work, proxy_port, args.seconds, True)
                    log(f"{name}: upload")
                    up, up_cpu = bulk(procs, work, proxy_port, args.seconds, False)
                    log(f"{name}: 1 KiB GETs")
                    rate, p99 = requests(procs, work, proxy_port, nginx_port, args.seconds)
                    results[name] = {
                        "download_gbit_s": down, "download_cpu_s_per_gb": down_cpu,
                        "upload_gbit_s": up, "upload_cpu_s_per_gb": up_cpu,
                        "requests_per_s": rate, "p99_ms": p99,
                    }
                finally:
                    procs.stop()
        finally:
            origins.stop()
    print_table(results)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


def print_table(results):
    columns = [
        ("download_gbit_s", "download Gbit/s", "{:.2f}"),
        ("download_cpu_s_per_gb", "CPU-s/GB down", "{:.2f}"),
        ("upload_gbit_s", "upload Gbit/s", "{:.2f}"),
        ("upload_cpu_s_per_gb", "CPU-s/GB up", "{:.2f}"),
        ("requests_per_s", "1 KiB req/s", "{:.0f}"),
        ("p99_ms", "p99 ms", "{:.2f}"),
    ]
    print("| tunnel | " + " | ".join(title for _, title, _ in columns) + " |")
    print("|---" * (len(columns) + 1) + "|")
    for name, result in results.items():
        cells = [fmt.format(result[key]) for key, _, fmt in columns]
        print(f"| {name} | " + " | ".join(cells) + " |")
    peers = {n: r for n, r in results.items() if n != "fluidity"}
    if "fluidity" not in results or not peers:
        return
    ours = results["fluidity"]
    print()
    print("| Fluidity against the best peer | ratio | best peer |")
    print("|---|---|---|")
    for key, title, higher_is_better in [
        ("download_gbit_s", "download throughput", True),
        ("upload_gbit_s", "upload throughput", True),
        ("download_cpu_s_per_gb", "CPU-seconds per GB, download", False),
        ("upload_cpu_s_per_gb", "CPU-seconds per GB, upload", False),
        ("requests_per_s", "1 KiB requests per second", True),
        ("p99_ms", "p99 latency of 1 KiB requests", False),
    ]:
        pick = max if higher_is_better else min
        best = pick(peers, key=lambda n: peers[n][key])
        print(f"| {title} | {ours[key] / peers[best][key]:.2f}× | {best} |")


if __name__ == "__main__":
    main()
