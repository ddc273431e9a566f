#!/usr/bin/env python3
"""Generators and arithmetic for bench/run.sh (standard library only).

  gen.py project DIR --shots N --cut-every K [--refs R --ref-mib M] [--frame-jobs J --video-jobs J]
      a ttv project on the offline preview backend, with R deterministic high-entropy BMP
      references of about M MiB each
  gen.py ninja DIR --shots N --cut-every K --refs-from DIR
      the same graph as build.ninja (commands just `touch $out`), with per-node prompt files
      standing for the prompts in ttv.yaml and copies of the references
  gen.py edit-end DIR SHOT
      rewrites one shot's end prompt in DIR/ttv.yaml
  gen.py bound --shots N --cut-every K --latency-ms L --frame-jobs J --video-jobs J [--service FILE]
      the critical-path bound of a cold build (JSON)
  gen.py count-dirty FILE          dirty nodes in a `ttv --json plan` output
  gen.py count-generated FILE      generated nodes in a `ttv --json build` output
  gen.py stamp OUT.json < `ttv -v build` output: when each node finished
  gen.py ids --shots N --at I      the id of shot I (0-based)
  gen.py report RESULTS_DIR OUT.md the summary table from the measurements
"""

import argparse
import heapq
import json
import math
import os
import random
import re
import shutil
import struct
import sys
import time


def shot_ids(shots):
    width = max(3, len(str(shots - 1)))
    return [f"s{i:0{width}d}" for i in range(shots)]


def is_cut(i, cut_every):
    return i > 0 and i % cut_every == 0


def write_bmp(path, side, seed):
    """A 24-bit BMP of side x side random pixels: incompressible, so its size is its bytes."""
    row = side * 3
    pad = (4 - row % 4) % 4
    data_size = (row + pad) * side
    header = b"BM" + struct.pack("<IHHI", 54 + data_size, 0, 0, 54)
    info = struct.pack("<IiiHHIIiiII", 40, side, side, 1, 24, 0, data_size, 2835, 2835, 0, 0)
    rng = random.Random(seed)
    with open(path, "wb") as f:
        f.write(header + info)
        # One random block per call keeps memory flat; padding bytes are part of each row.
        rows_per_chunk = max(1, (4 << 20) // (row + pad))
        left = side
        while left:
            n = min(rows_per_chunk, left)
            f.write(rng.randbytes(n * (row + pad)))
            left -= n


def cmd_project(a):
    os.makedirs(os.path.join(a.dir, "references"), exist_ok=True)
    side = max(8, int(math.sqrt(a.ref_mib * (1 << 20) / 3)))
    for r in range(a.refs):
        write_bmp(os.path.join(a.dir, "references", f"ref{r:02d}.bmp"), side, 1000 + r)
    lines = [
        "version: 1",
        "name: bench",
        "keyframes:",
        "  backend: preview",
        '  aspect_ratio: "16:9"',
        "  references: references",
        "  chain: true",
        f"  jobs: {a.frame_jobs}",
        "video:",
        "  backend: preview",
        "  mode: single",
        "  keyframe_position: first",
        "  duration_seconds: 1",
        '  aspect_ratio: "16:9"',
        "  generate_audio: false",
        f"  jobs: {a.video_jobs}",
        "final:",
        "  output: final.mp4",
        "shots:",
    ]
    for i, sid in enumerate(shot_ids(a.shots)):
        lines.append(f"  - id: {sid}")
        if is_cut(i, a.cut_every):
            lines.append("    transition: cut")
        if i == 0 or is_cut(i, a.cut_every):
            lines.append(f'    start: "Scene {i // a.cut_every}: wide shot of place {i}"')
        lines.append(f'    end: "Shot {i}: the hero reaches mark {i}"')
        lines.append(f'    motion: "Shot {i}: slow dolly in"')
    with open(os.path.join(a.dir, "ttv.yaml"), "w") as f:
        f.write("\n".join(lines) + "\n")


def cmd_ninja(a):
    os.makedirs(os.path.join(a.dir, "prompts"), exist_ok=True)
    refs_dir = os.path.join(a.dir, "references")
    os.makedirs(refs_dir, exist_ok=True)
    refs = []
    for name in sorted(os.listdir(a.refs_from)):
        # Copies, not links: touching the ttv project's references must not touch these.
        shutil.copyfile(os.path.join(a.refs_from, name), os.path.join(refs_dir, name))
        refs.append(f"references/{name}")
    out = ["rule gen", "  command = touch $out", ""]

    def prompt(name):
        path = f"prompts/{name}.txt"
        with open(os.path.join(a.dir, path), "w") as f:
            f.write(name + "\n")
        return path

    prev_end = None
    segments = []
    for i, sid in enumerate(shot_ids(a.shots)):
        if i == 0 or is_cut(i, a.cut_every):
            start = f"frames/{sid}-start.png"
            out.append(f"build {start}: gen {' '.join(refs)} {prompt(sid + '-start')}")
        else:
            start = prev_end
        end = f"frames/{sid}-end.png"
        out.append(f"build {end}: gen {start} {' '.join(refs)} {prompt(sid + '-end')}")
        seg = f"segments/{sid}.mp4"
        out.append(f"build {seg}: gen {start} {prompt(sid + '-motion')}")
        segments.append(seg)
        prev_end = end
    out.append(f"build final.mp4: gen {' '.join(segments)}")
    # ttv's default targets: every segment and the final video (not the unused last end frames).
    out.append("default final.mp4")
    with open(os.path.join(a.dir, "build.ninja"), "w") as f:
        f.write("\n".join(out) + "\n")


def cmd_edit_end(a):
    path = os.path.join(a.dir, "ttv.yaml")
    with open(path) as f:
        lines = f.read().split("\n")
    at = lines.index(f"  - id: {a.shot}")
    for j in range(at + 1, len(lines)):
        if lines[j].startswith("    end: "):
            lines[j] = lines[j][:-1] + ', now at night"'
            break
    else:
        sys.exit(f"no end prompt for {a.shot}")
    with open(path, "w") as f:
        f.write("\n".join(lines))


def graph(shots, cut_every):
    """The nodes a default build needs: (id, kind, deps), in topological order."""
    nodes = []
    prev_end = None
    for i, sid in enumerate(shot_ids(shots)):
        if i == 0 or is_cut(i, cut_every):
            start = f"frame/{sid}/start"
            nodes.append((start, "frame", []))
        else:
            start = prev_end
        prev_end = f"frame/{sid}/end"
        nodes.append((prev_end, "frame", [start]))
        nodes.append((f"segment/{sid}", "video", [start]))
    nodes.append(("final", "final", [n for n, k, _ in nodes if k == "video"]))
    # The last end frame of each scene feeds nothing: a default build leaves it out.
    needed = {"final"}
    for n, _, deps in reversed(nodes):
        if n in needed:
            needed.update(deps)
    return [x for x in nodes if x[0] in needed]


def simulate(nodes, duration, limits):
    """List scheduling, longest remaining path first, with a concurrency limit per kind.
    Returns {node: finish time in seconds}."""
    deps = {n: d for n, _, d in nodes}
    kind = {n: k for n, k, _ in nodes}
    users = {n: [] for n, _, _ in nodes}
    for n, _, d in nodes:
        for x in d:
            users[x].append(n)
    tail = {}
    for n, _, _ in reversed(nodes):
        tail[n] = duration[n] + max((tail[u] for u in users[n]), default=0.0)
    missing = {n: len(d) for n, d in deps.items()}
    finish = {}
    ready = [(-tail[n], i, n) for i, (n, _, d) in enumerate(nodes) if not d]
    heapq.heapify(ready)
    running = []  # (finish, n)
    busy = {k: 0 for k in limits}
    now = 0.0
    index = {n: i for i, (n, _, _) in enumerate(nodes)}
    while ready or running:
        held = []
        while ready:
            item = heapq.heappop(ready)
            n = item[2]
            k = kind[n]
            if busy.get(k, 0) < limits.get(k, math.inf):
                busy[k] = busy.get(k, 0) + 1
                heapq.heappush(running, (now + duration[n], n))
            else:
                held.append(item)
        for item in held:
            heapq.heappush(ready, item)
        if not running:
            break
        now, n = heapq.heappop(running)
        finish[n] = now
        busy[kind[n]] -= 1
        for u in users[n]:
            missing[u] -= 1
            if missing[u] == 0:
                heapq.heappush(ready, (-tail[u], index[u], u))
    return finish


def first_segment(finish):
    return min(t for n, t in finish.items() if n.startswith("segment/"))


def cmd_bound(a):
    nodes = graph(a.shots, a.cut_every)
    lat = a.latency_ms / 1000.0
    limits = {"frame": a.frame_jobs, "video": a.video_jobs}
    nominal = {n: (0.0 if k == "final" else lat) for n, k, _ in nodes}
    frames = sum(1 for _, k, _ in nodes if k == "frame")
    videos = sum(1 for _, k, _ in nodes if k == "video")
    depth = {}
    for n, k, d in nodes:
        depth[n] = nominal[n] + max((depth[x] for x in d), default=0.0)
    simple = max(
        max(depth.values()),
        math.ceil(frames / a.frame_jobs) * lat,
        # No segment can start before the first frame exists.
        lat + math.ceil(videos / a.video_jobs) * lat,
    )
    out = {
        "frames": frames,
        "segments": videos,
        "critical_path_s": max(depth.values()),
        "simple_bound_s": simple,
        "schedule_s": max(simulate(nodes, nominal, limits).values()),
    }
    if a.service:
        # A serial build (-j 1) finishes one node after the other: the gap between two
        # finishes is the later node's own time (preview drawing or ffmpeg, plus ttv's
        # per-node work), which a real backend's latency would add to as well.
        with open(a.service) as f:
            finished = sorted(json.load(f).items(), key=lambda kv: kv[1])
        own = {}
        prev = 0.0
        for n, t in finished:
            own[n] = t - prev
            prev = t
        missing = [n for n, _, _ in nodes if n not in own]
        if missing:
            sys.exit(f"the serial build did not generate {missing[:3]}")
        finish = simulate(nodes, {n: nominal[n] + own[n] for n, _, _ in nodes}, limits)
        out["schedule_with_work_s"] = max(finish.values())
        out["first_segment_s"] = first_segment(finish)
        out["own_ms"] = {
            k: round(1000 * sum(own[n] for n, kk, _ in nodes if kk == k)
                     / max(1, sum(1 for _, kk, _ in nodes if kk == k)))
            for k in ("frame", "video", "final")
        }
    if a.timeline:
        with open(a.timeline) as f:
            out["measured_first_segment_s"] = first_segment(json.load(f))
    print(json.dumps(out))


def cmd_stamp(a):
    """Reads `ttv -v build` output on stdin; writes {node: seconds since start} as each
    `generated NODE` line arrives."""
    t0 = time.monotonic()
    done = {}
    for line in sys.stdin:
        m = re.match(r"\s*generated (\S+)", line)
        if m:
            done[m.group(1)] = time.monotonic() - t0
    with open(a.out, "w") as f:
        json.dump(done, f)


def cmd_count(a, status):
    with open(a.file) as f:
        data = json.load(f)
    ids = [n["id"] for n in data["nodes"] if n["status"] == status]
    print(json.dumps({"count": len(ids), "ids": ids}))


def hyperfine(path, i=0):
    """(median, stddev) in seconds of command i of a hyperfine --export-json file."""
    with open(path) as f:
        r = json.load(f)["results"][i]
    return r["median"], r["stddev"] or 0.0


def fmt_s(s):
    return f"{s * 1000:.1f} ms" if s < 1 else f"{s:.2f} s"


def cmd_report(a):
    r = a.results
    with open(os.path.join(r, "env.json")) as f:
        env = json.load(f)
    m = {}
    with open(os.path.join(r, "metrics.env")) as f:
        for line in f:
            k, _, v = line.rstrip("\n").partition("=")
            m[k] = v
    with open(os.path.join(r, "notes.txt")) as f:
        notes = [line.strip() for line in f if line.strip()]
    num = {k: float(v) for k, v in m.items() if re.fullmatch(r"-?[0-9.]+", v)}
    rows = []

    def row(metric, ttv, base, ratio, target, ok):
        rows.append((metric, ttv, base, f"{ratio:.2f}×", target, "pass" if ok else "FAIL"))

    def t(name, i=0):
        return hyperfine(os.path.join(r, name), i)

    def pm(x):
        return f"{fmt_s(x[0])} ± {fmt_s(x[1])}"

    noop, ninja = t("a-noop.json", 0), t("a-noop.json", 1)
    ratio = noop[0] / ninja[0]
    row("a. no-op `ttv build` vs `ninja`", pm(noop), pm(ninja), ratio, "≤ 1×", ratio <= 1)

    touched, hashed, decoded = t("b-touched.json"), t("b-hash.json", 0), t("b-hash.json", 1)
    base = noop[0] + hashed[0]
    gen = int(num["b_generated"])
    ratio = touched[0] / base
    row("b. build after touching every reference (same bytes)",
        f"{pm(touched)}, {gen} generated",
        f"no-op + one blake3 pass: {fmt_s(noop[0])} + {fmt_s(hashed[0])}",
        ratio, "≤ 1×, 0 generated", ratio <= 1 and gen == 0)

    plan, dry = t("c-plan.json", 0), t("c-plan.json", 1)
    want = int(num["c_expected"])
    dirty, edges = int(num["c_dirty"]), int(num["c_ninja_edges"])
    matches = m["c_plan_matches_build"] == "True"
    ratio = plan[0] / dry[0]
    row("c. `ttv plan` after a mid-chain edit vs `ninja -n`",
        f"{pm(plan)}; {dirty} dirty{'' if matches else ' (≠ what the build made)'}",
        f"{pm(dry)}; {edges} edges", ratio, f"≤ 2×; {want} nodes",
        ratio <= 2 and dirty == want == edges and matches)

    for tag, label in (("d", "d. cold build, 20 shots, cut every 5"),
                       ("d2", "d2. cold build, 20 shots, cut every 2")):
        if not os.path.exists(os.path.join(r, f"{tag}-bound.json")):
            continue
        with open(os.path.join(r, f"{tag}-bound.json")) as f:
            bound = json.load(f)
        cold, zero = t(f"{tag}-cold.json"), t(f"{tag}-cold0.json")
        ratio = cold[0] / bound["schedule_s"]
        row(f"{label}, 1 s latency: vs critical-path bound", pm(cold),
            f"{fmt_s(bound['schedule_s'])} (preview work alone, latency 0: {fmt_s(zero[0])})",
            ratio, "≤ 1.05×", ratio <= 1.05)
        work = bound["schedule_with_work_s"]
        o = bound["own_ms"]
        ratio = cold[0] / work
        if "measured_first_segment_s" in bound:
            notes.append(
                f"{tag}: the first segment finished at {bound['measured_first_segment_s']:.2f} s "
                f"in a timestamped run (`-v`); in the bound's schedule with own work, at "
                f"{bound['first_segment_s']:.2f} s")
        row(f"{label}, 1 s latency: vs the same bound with each node's own preview work added",
            fmt_s(cold[0]),
            f"{fmt_s(work)} (own time per node, serial build: frame {o['frame']} ms, "
            f"segment {o['video']} ms, final {o['final']} ms)",
            ratio, "≤ 1.05×", ratio <= 1.05)

    if os.path.exists(os.path.join(r, "f-concurrency.json")):
        with open(os.path.join(r, "f-concurrency.json")) as f:
            c = json.load(f)
        auto, fixed = c["auto"], c["fixed"]
        ratio = auto["wall_s"] / c["bound_s"]
        row(f"f. cold build, {c['segments']} Veo segments of {c['latency_s']:g} s against the fake "
            f"Google running K = {c['k']} at once, `video.jobs: auto`: vs the bound at K",
            f"{fmt_s(auto['wall_s'])}; limit settled at {auto['limit']}, "
            f"{auto['throttled']} × 429",
            f"{fmt_s(c['bound_s'])} (tuned `jobs: {c['k']}`: {fmt_s(fixed['wall_s'])}; "
            f"the old default `jobs: 2`, its bound: {fmt_s(c['bound_jobs2_s'])})",
            ratio, "≤ 1.1×, settles at K ± 1", ratio <= 1.1 and abs(auto["limit"] - c["k"]) <= 1)
        notes.append(
            "f: the bound is ceil(segments / K) operations in a row, each seen done at the first "
            "poll after its latency (polls start at 0.05 s and grow by half); the fake refuses "
            "a submission over K with 429 RESOURCE_EXHAUSTED")

    if os.path.exists(os.path.join(r, "g-stitch.json")):
        stitch, concat = t("g-stitch.json", 0), t("g-stitch.json", 1)
        ratio = stitch[0] / concat[0]
        row(f"g. final stitch of {int(num.get('shots', 200))} segments "
            "(`ttv build final --force final`) vs one `ffmpeg -f concat -c copy`",
            pm(stitch), pm(concat), ratio, "≤ 1.5×", ratio <= 1.5)

    rss = num["e_rss_kib"] / 1024
    row(f"e. max RSS of a no-op `ttv build frames`, {int(num['e_shots'])} shots",
        f"{rss:.1f} MiB (no-op `build`, 200 shots: {num['e_rss200_kib'] / 1024:.1f} MiB)",
        f"ninja no-op: {num['e_ninja_rss_kib'] / 1024:.1f} MiB", rss / 64, "≤ 64 MiB",
        rss <= 64)

    head = ["metric", "ttv", "baseline", "ratio", "target", "result"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(x) + " |" for x in rows]
    table = "\n".join(lines)
    text = [
        f"# ttv benchmark, {env['date']}",
        "",
        f"- machine: {env['cpu']}, nproc {env['nproc']}, {env['mem']}; load average "
        f"{env['load_before']} before, {m['load_after']} after (other work shares the cores)",
        f"- ttv {env['rev']}; hyperfine {env['hyperfine']}; ninja {env['ninja']}; "
        f"mode {env['mode']} (`bench/run.sh{' --quick' if env['mode'] == 'quick' else ''}`)",
        f"- {int(num.get('shots', 200))}-shot project: {m['refs']}; its cold build (preview backend, latency 0) "
        f"took {fmt_s(num['cold_s'])}, ninja's first build of the same graph {fmt_s(num['ninja_cold_s'])}; "
        f"the {int(num['e_shots'])}-shot `build frames` took {fmt_s(num['e_cold_s'])}",
        "- times are medians ± standard deviation of hyperfine runs; every ratio is of two "
        "medians measured in this run",
        f"- c: the build that followed the plan generated exactly the nodes it listed: "
        f"{m['c_plan_matches_build']}; its final video (stitching {int(num.get('shots', 200))} "
        f"segments) took {fmt_s(num['c_final_s'])} after the last segment",
        f"- b: the blake3 pass with the image decode ttv also does on a re-read reference: "
        f"{pm(decoded)}",
    ]
    text += [f"- {n}" for n in notes]
    text += ["", table, ""]
    with open(a.out, "w") as f:
        f.write("\n".join(text))
    print(table)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("project")
    s.add_argument("dir")
    s.add_argument("--shots", type=int, required=True)
    s.add_argument("--cut-every", type=int, required=True)
    s.add_argument("--refs", type=int, default=10)
    s.add_argument("--ref-mib", type=float, default=10)
    s.add_argument("--frame-jobs", type=int, default=4)
    s.add_argument("--video-jobs", type=int, default=2)
    s = sub.add_parser("ninja")
    s.add_argument("dir")
    s.add_argument("--shots", type=int, required=True)
    s.add_argument("--cut-every", type=int, required=True)
    s.add_argument("--refs-from", required=True)
    s = sub.add_parser("edit-end")
    s.add_argument("dir")
    s.add_argument("shot")
    s = sub.add_parser("bound")
    s.add_argument("--shots", type=int, required=True)
    s.add_argument("--cut-every", type=int, required=True)
    s.add_argument("--latency-ms", type=float, required=True)
    s.add_argument("--frame-jobs", type=int, required=True)
    s.add_argument("--video-jobs", type=int, required=True)
    s.add_argument("--service", help="JSON of node -> finish time of a serial build (stamp)")
    s.add_argument("--timeline", help="JSON of node -> finish time of the measured build (stamp)")
    for name in ("count-dirty", "count-generated"):
        s = sub.add_parser(name)
        s.add_argument("file")
    s = sub.add_parser("stamp")
    s.add_argument("out")
    s = sub.add_parser("ids")
    s.add_argument("--shots", type=int, required=True)
    s.add_argument("--at", type=int, required=True)
    s = sub.add_parser("report")
    s.add_argument("results")
    s.add_argument("out")
    a = p.parse_args()
    if a.cmd == "project":
        cmd_project(a)
    elif a.cmd == "ninja":
        cmd_ninja(a)
    elif a.cmd == "edit-end":
        cmd_edit_end(a)
    elif a.cmd == "bound":
        cmd_bound(a)
    elif a.cmd == "count-dirty":
        cmd_count(a, "dirty")
    elif a.cmd == "count-generated":
        cmd_count(a, "generated")
    elif a.cmd == "stamp":
        cmd_stamp(a)
    elif a.cmd == "ids":
        print(shot_ids(a.shots)[a.at])
    else:
        cmd_report(a)


if __name__ == "__main__":
    main()
