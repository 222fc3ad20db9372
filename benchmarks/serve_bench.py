"""Throughput of ``patchdet serve`` (N cameras, one shared batched detector) against N ``patchdet detect`` processes.

    nice -n 10 python -m benchmarks.serve_bench --cameras 2,4,8 --seconds 30 \
        --out benchmarks/results/serve.json

``--rounds 5`` measures each camera count five times, serve and separate back to back with the order
alternating, and records the median ratio (the figure to quote on a machine whose speed drifts).

Cameras: N-1 local video files (read as fast as the detector goes, looping) and one HTTP MJPEG stream
served on 127.0.0.1 by ``benchmarks.mjpeg_server`` (live, 24 fps). Both modes run for the same wall time;
total frames/s = sum over cameras of frames / seconds, model loading excluded in both.

    python -m benchmarks.serve_bench --reconnect-trials 3 --out benchmarks/results/serve_reconnect.json

kills and restarts the MJPEG server three times while ``serve`` runs 2 file cameras beside it, and records
the stream's reconnects and the file cameras' frame rate before, during and after each outage.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import yaml

CLIP = "/work/shared/data/scenes/videos/ahmetozlu_street_cam.mp4"
PATCHDET = str(Path(sys.executable).with_name("patchdet"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_mjpeg(port: int, clip: str) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-m", "benchmarks.mjpeg_server", clip, "--port", str(port)])
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return proc
        except OSError:
            time.sleep(0.1)
    raise RuntimeError("mjpeg server did not start")


def sources(n: int, clip: str, port: int) -> list[str]:
    return [clip] * (n - 1) + [f"http://127.0.0.1:{port}/stream.mjpg"]


def run_serve(n: int, clip: str, port: int, seconds: float, work: Path, metrics_port: int = 0) -> dict:
    site = {"metrics": {"port": metrics_port}, "output_dir": str(work / "serve_out"),
            "cameras": [{"name": f"cam{i}", "source": s, "loop": True} for i, s in enumerate(sources(n, clip, port))]}
    config = work / f"site_{n}.yaml"
    config.write_text(yaml.safe_dump(site))
    summary = work / f"serve_{n}.json"
    cmd = [PATCHDET, "-q", "serve", "--config", str(config), "--duration", str(seconds), "--summary", str(summary)]
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    data = json.loads(summary.read_text())
    per_camera = {name: c["frames"] / data["seconds"] for name, c in data["cameras"].items()}
    return {"command": " ".join(cmd), "site": site, "seconds": data["seconds"], "frames": data["frames"],
            "total_fps": round(sum(per_camera.values()), 2), "per_camera_fps": {k: round(v, 2) for k, v in
                                                                                 per_camera.items()},
            "backend_calls": next(iter(data["models"].values()))["backend_calls"]}


def run_separate(n: int, clip: str, port: int, seconds: float, work: Path) -> dict:
    procs = []
    for i, source in enumerate(sources(n, clip, port)):
        summary = work / f"detect_{n}_{i}.json"
        cmd = [PATCHDET, "-q", "detect", "--source", source, "--summary", str(summary), "--log-every", "0"]
        procs.append((subprocess.Popen(cmd, stdout=subprocess.DEVNULL), summary, cmd))
    time.sleep(seconds)
    for proc, _, _ in procs:
        # SIGTERM, not SIGINT: a shell starts background jobs with SIGINT ignored, children inherit that, and
        # patchdet leaves an ignored signal ignored; SIGTERM ends a run the way Ctrl-C does.
        proc.send_signal(signal.SIGTERM)
    per_process = []
    for proc, summary, _ in procs:
        try:
            proc.wait(180)  # it finishes the frames in flight and writes its summary
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        if not summary.is_file():  # killed before it wrote a summary: no measurement, not zero frames
            per_process.append(None)
            continue
        data = json.loads(summary.read_text())
        per_process.append(data["frames"] / data["seconds"])
    return {"command": " ".join(procs[0][2]) + f"  (x{n}, SIGTERM after {seconds:g} s)",
            "total_fps": None if None in per_process else round(sum(per_process), 2),
            "per_process_fps": [None if v is None else round(v, 2) for v in per_process]}


def throughput(args, work: Path) -> dict:
    """Serve and separate processes back to back, ``rounds`` times, the order alternating each round.

    One pair is one measurement of the ratio; alternating the order keeps a drifting machine load from
    favouring whichever mode runs first, and the median ratio over the rounds is the figure to quote.
    """
    results = {}
    port = free_port()
    server = start_mjpeg(port, args.clip)
    try:
        for n in args.cameras:
            rounds = []
            for r in range(args.rounds):
                modes = ["serve", "separate"] if r % 2 == 0 else ["separate", "serve"]
                pair = {}
                for mode in modes:
                    run = run_serve if mode == "serve" else run_separate
                    pair[mode] = run(n, args.clip, port, args.seconds, work)
                serve_fps, separate_fps = pair["serve"]["total_fps"], pair["separate"]["total_fps"]
                pair["first"] = modes[0]
                pair["serve_over_separate"] = round(serve_fps / separate_fps, 3) if separate_fps else None
                rounds.append(pair)
                print(f"{n} cameras, round {r + 1}: serve {serve_fps} fps, {n} detect processes {separate_fps} fps",
                      flush=True)
            ratios = sorted(p["serve_over_separate"] for p in rounds if p["serve_over_separate"] is not None)
            results[n] = rounds[0] if args.rounds == 1 else {
                "rounds": rounds, "median_serve_over_separate": ratios[len(ratios) // 2] if ratios else None,
                "serve_faster_in_rounds": sum(v > 1 for v in ratios)}
    finally:
        server.terminate()
    return results


def scrape(port: int) -> dict[str, float]:
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    values = {}
    for line in text.splitlines():
        if line.startswith(("patchdet_frames_total", "patchdet_reconnects_total", "patchdet_camera_up")):
            key, value = line.rsplit(" ", 1)
            values[key] = float(value)
    return values


def reconnect_trials(args, work: Path) -> dict:
    port, metrics_port = free_port(), free_port()
    server = start_mjpeg(port, args.clip)
    site = {"metrics": {"port": metrics_port, "camera_down_s": 5}, "output_dir": str(work / "reconnect_out"),
            "cameras": [{"name": "file0", "source": args.clip, "loop": True},
                        {"name": "file1", "source": args.clip, "loop": True},
                        {"name": "stream", "source": f"http://127.0.0.1:{port}/stream.mjpg"}]}
    config = work / "site_reconnect.yaml"
    config.write_text(yaml.safe_dump(site))
    cmd = [PATCHDET, "serve", "--config", str(config)]
    service = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=open(work / "reconnect.log", "w"))
    trials = []

    def rates(window: float) -> tuple[dict, dict]:
        a = scrape(metrics_port)
        time.sleep(window)
        b = scrape(metrics_port)
        fps = {k.split('"')[1]: round((b[k] - a.get(k, 0)) / window, 2) for k in b if k.startswith("patchdet_frames")}
        return fps, b

    try:
        time.sleep(20)  # model load and warm-up
        for trial in range(args.reconnect_trials):
            before, _ = rates(10)
            server.send_signal(signal.SIGKILL)
            server.wait()
            during, _ = rates(10)
            server = start_mjpeg(port, args.clip)
            time.sleep(15)  # the grabber's back-off (0.5 s doubling) finds it again
            after, metrics = rates(10)
            health = json.loads(urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/healthz").read())
            reconnects = metrics.get('patchdet_reconnects_total{camera="stream"}', 0)
            trials.append({"trial": trial + 1, "fps_before": before, "fps_stream_down": during, "fps_after": after,
                           "stream_reconnects_total": reconnects, "stream_state": health["cameras"]["stream"]})
            print(json.dumps(trials[-1]), flush=True)
    finally:
        service.send_signal(signal.SIGTERM)
        service.wait(60)
        server.terminate()
    return {"command": " ".join(cmd), "site": site, "trials": trials}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cameras", default="2,4,8", type=lambda s: [int(v) for v in s.split(",")])
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--rounds", type=int, default=1, help="serve/separate pairs, order alternating")
    parser.add_argument("--clip", default=CLIP)
    parser.add_argument("--reconnect-trials", type=int, default=0)
    parser.add_argument("--work", default="out/serve_bench")
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    work = Path(args.work)
    if work.exists():  # no stale summaries from an earlier run
        shutil.rmtree(work)
    work.mkdir(parents=True)
    result = {"machine": {"cpus": os.cpu_count(), "load_avg_at_start": os.getloadavg()}, "clip": args.clip}
    if args.reconnect_trials:
        result["reconnect"] = reconnect_trials(args, work)
    else:
        result["seconds"] = args.seconds
        result["throughput"] = throughput(args, work)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
