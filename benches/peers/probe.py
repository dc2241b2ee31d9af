#!/usr/bin/env python3
"""Per-process costs of one tunnel during one bulk direction, per GB moved.

  python3 benches/peers/probe.py fluidity up [seconds]
  python3 benches/peers/probe.py shadowsocks down 5

Starts the tunnel the way run.py does, runs iperf3 through a socat CONNECT shim for
seconds + 3 s, and counts each tunnel process with `perf stat -p` over `seconds` in the steady
part of the run: CPU (task-clock, ms), context switches, page faults and system calls by kind.
run.py's CPU figure covers whole runs of all processes together; this one tells which process
pays, and for what. Needs Debian's linux-perf, and the tools run.py installs.
"""

import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import run  # noqa: E402

EVENTS = ",".join([
    "task-clock", "context-switches", "page-faults",
    "syscalls:sys_enter_recvfrom", "syscalls:sys_enter_sendto", "syscalls:sys_enter_writev",
    "syscalls:sys_enter_epoll_wait", "syscalls:sys_enter_futex", "raw_syscalls:sys_enter",
])


def main():
    if len(sys.argv) < 3 or sys.argv[1] not in run.TUNNELS or sys.argv[2] not in ("up", "down"):
        raise SystemExit(__doc__)
    name, direction = sys.argv[1], sys.argv[2]
    seconds = int(sys.argv[3]) if len(sys.argv) > 3 else 5
    with tempfile.TemporaryDirectory(prefix="fluidity-probe-") as tmp:
        procs = run.Processes(Path(tmp))
        helpers = []
        try:
            proxy_port = run.TUNNELS[name](procs, Path(tmp))
            iperf_port, shim_port = run.free_port(), run.free_port()
            helpers.append(subprocess.Popen(
                [run.find("iperf3"), "-s", "-1", "-B", "127.0.0.1", "-p", str(iperf_port)],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
            helpers.append(subprocess.Popen(
                [run.find("socat"), f"TCP-LISTEN:{shim_port},bind=127.0.0.1,reuseaddr,fork",
                 f"PROXY:127.0.0.1:127.0.0.1:{iperf_port},proxyport={proxy_port}"],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
            run.wait_for_listener(shim_port, "socat")
            run.wait_for_listener(iperf_port, "iperf3")
            command = [run.find("iperf3"), "-c", "127.0.0.1", "-p", str(shim_port),
                       "-t", str(seconds + 3), "-J"]
            if direction == "down":
                command.append("-R")
            client = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
            time.sleep(1.5)  # past the TCP ramp-up
            counters = [(process_name, subprocess.Popen(
                ["perf", "stat", "-x,", "-e", EVENTS, "-p", str(process.pid),
                 "--", "sleep", str(seconds)], stderr=subprocess.PIPE, text=True))
                for process_name, process in procs.counted]
            counts = {}
            for process_name, perf in counters:
                _, err = perf.communicate()
                counts[process_name] = {
                    line.split(",")[2].split(":")[-1].replace("sys_enter_", ""):
                        float(line.split(",")[0])
                    for line in err.splitlines() if line[:1].isdigit()}
            out, _ = client.communicate()
            received = json.loads(out)["end"]["sum_received"]
            rate = received["bits_per_second"]
            gigabytes = rate / 8e9 * seconds  # moved while perf counted, at the run's average
            print(f"{name} {direction}: {rate / 1e9:.2f} Gbit/s; per GB moved:")
            for process_name, values in counts.items():
                fields = " ".join(f"{key}={value / gigabytes:,.0f}"
                                  for key, value in values.items())
                print(f"  {process_name:16s} {fields}")
        finally:
            for helper in helpers:
                helper.terminate()
                helper.wait()
            procs.stop()


if __name__ == "__main__":
    main()
