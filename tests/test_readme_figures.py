"""The README's "## Measured" table against the results files it names (issue 32): each figure of a row
that has a file in analysis/results/ is computed here from that file and must appear in the row as
written, so an edited figure (or a re-measured file) fails. Every analysis/ and scripts/ path the
README names exists, and each script answers --help (each in its own process, with a timeout)."""
import csv
import json
import re
import subprocess
import sys

import pytest

from conftest import REPO

README = REPO / "README.md"
RESULTS = REPO / "analysis" / "results"


def measured_rows() -> dict[str, str]:
    """{what: result} of the "## Measured" table, cells as written."""
    section = README.read_text().split("\n## Measured\n", 1)[1].split("\n## ", 1)[0]
    rows = {}
    for line in section.splitlines():
        if line.startswith("| `"):
            what, result = line.strip().strip("|").split(" | ", 1)
            rows[what.strip()] = result.strip()
    return rows


def row(key: str) -> str:
    """The row whose first cell names `key`, both cells (the command holds figures too)."""
    hits = [f"{w} | {r}" for w, r in measured_rows().items() if key in w]
    assert len(hits) == 1, f"{len(hits)} rows of the Measured table name {key!r}"
    return hits[0]


def sci(x: float) -> str:
    """1.4446e-06 -> '1.4e-6', as the README writes exponents."""
    m, e = f"{x:.1e}".split("e")
    return f"{m}e{int(e)}"


def span(values, fmt="{:.1f}") -> str:
    """'lo-hi' of the values as formatted (one value when they round alike)."""
    lo, hi = fmt.format(min(values)), fmt.format(max(values))
    return lo if lo == hi else f"{lo}-{hi}"


def metrics(path):
    return list(csv.DictReader(path.open()))


def check_in(text: str, *figures: str) -> None:
    missing = [f for f in figures if f not in text]
    assert not missing, f"{missing} not in the README's row: {text}"


# one checker per row with a results file: the figures the file gives, as the row must write them

def gdu_identity(text):
    d = json.loads((RESULTS / "gdu_identity" / "gdu.json").read_text())
    sym = max(max(m["rel_error"]) for m in d["estimators"]["symmetric"].values())
    one = max(max(m["rel_error"]) for m in d["estimators"]["one_sided"].values())
    check_in(text, f"<= {sci(sym)}", f"t = 1..{d['K']}", f"one-sided {sci(one)}", f"beta = {sci(d['beta']).replace('.0e', 'e')}")


def cifar10_cpu(text):
    m = metrics(RESULTS / "cifar10_cpu" / "sym" / "metrics.csv")
    check_in(text, f"{float(m[3]['test_acc']):.2f} % test accuracy after 4 epochs",
             f"{float(m[-1]['test_acc']):.2f} % after {len(m)}")


def cifar10_cpu_uni(text):
    m = metrics(RESULTS / "cifar10_cpu_uni" / "metrics.csv")
    bi = metrics(RESULTS / "cifar10_cpu" / "sym" / "metrics.csv")
    angles = [float(m[-1][k]) for k in m[-1] if k.startswith("angle_")]
    check_in(text, f"{float(m[-1]['test_acc']):.2f} % test accuracy after {len(m)} epochs",
             f"bidirectional symmetric EP: {float(bi[-1]['test_acc']):.2f} %",
             "angles " + " and ".join(f"{a:.1f}" for a in angles) + " degrees")


def unidirectional(text):
    table = {}
    for line in (RESULTS / "unidirectional" / "unidirectional_mnist.md").read_text().splitlines()[2:]:
        net, variant, accs, angles = [c.strip() for c in line.strip().strip("|").split("|")]
        table[net, variant] = (accs.split(" / ")[-1], angles.split(" / ")[-1] if angles != "-" else None)
    check_in(text, f"MLP 784-256-256-10 {table['mlp', 'sym_kp_vf'][0]} vs {table['mlp', 'bidirectional'][0]} %",
             f"ConvNet {table['conv', 'sym_kp_vf'][0]} vs {table['conv', 'bidirectional'][0]} %",
             f"angle(w_f, w_b) {table['mlp', 'sym_kp_vf'][1]} and {table['conv', 'sym_kp_vf'][1]} degrees",
             f"symVF: {table['mlp', 'sym_vf'][1]} and {table['conv', 'sym_vf'][1]}")


def mlp2_spiking(text):
    run = RESULTS / "spiking_deep" / "mlp2" / "run"
    s, m = json.loads((run / "summary.json").read_text()), metrics(run / "metrics.csv")
    alone = [float(r["seconds"]) for r in m[3:]]  # epochs 1-3 shared the machine (the row says "alone")
    check_in(text, f"**{s['final_test_acc']:.2f} %** after {s['epochs_done']} epochs",
             f"best {s['best_test_acc']:.2f} %", f"{span(alone, '{:.0f}')} s per epoch alone",
             f"free / nudged phases {float(m[-1]['steps_free']):.0f} / {float(m[-1]['steps_nudged']):.0f} of")


def before_after(text):
    d = RESULTS / "restructure" / "2026-12-07"
    rows = {r["net"]: r for r in json.loads((d / "bench_before_after.json").read_text())["rows"]}
    assert all(r["states_bitwise_equal"] for r in rows.values())
    same = (d / "same_numbers.txt").read_text().splitlines()
    assert same and all("bitwise identical" in line for line in same)
    check_in(text, f"paper ConvNet (batch 16) {rows['paper ConvNet']['after_over_before']:.3f}x",
             f"MNIST MLP (batch 128) {rows['MNIST MLP']['after_over_before']:.3f}x", f"all {len(same)} hashed runs")


def bench_twin(text):
    d = json.loads((RESULTS / "spiking_deep" / "mlp2" / "bench_twin.json").read_text())
    ms = d["ms_per_train_image"]
    check_in(text, f"spiking {ms['spiking']:.2f} ms vs rate twin {ms['rate']:.2f} ms per training image: "
                   f"{d['ratio_spiking_over_rate']:.2f}x",
             f"at {d['test_acc']['spiking']:.2f} vs {d['test_acc']['rate']:.2f} %",
             f"--rate-T1 {d['rate_T1']} --rate-T2 {d['rate_T2']}")


def nir_check(text):
    d = json.loads((RESULTS / "spiking_deep" / "mlp2" / "nir_check.json").read_text())
    sub, zero = d["subtractive"], d["norse_reset_to_zero"]
    fewer = [100 * (1 - v["mean_count_norse"] / v["mean_count_twin"]) for v in zero["layers"].values()]
    check_in(text, f"twin's prediction on {sub['same_prediction_as_twin']:.0f} % of images",
             f"{span([v['mean_abs_count_diff'] for v in sub['layers'].values()])} spikes mean difference",
             f"reset-to-zero IF: {zero['same_prediction_as_twin']:.1f} %", f"{span(fewer, '{:.0f}')} % fewer spikes",
             f"{d['images']} test images")


def bench_traces(text):
    d = json.loads((RESULTS / "bench_traces_cpu.json").read_text())
    check_in(text, f"{100 * d['epoch_overhead']:.2f} % added to training time",
             f"{d['args']['sample']:,} synapses/layer")


def bench_relax(text):
    d = json.loads((RESULTS / "bench_relax_cpu.json").read_text())["nets"]
    check_in(text, f"ConvNet {span(d['conv']['ratio_same_layout'].values(), '{:.2f}')}x per step",
             f"MLP {d['mlp']['ratio']:.1f}x", f"batch {d['conv']['batch']}, MLP batch {d['mlp']['batch']}")


def speedup_table(name):
    """{batch: {activity %: event speed-up, "crossover": line}} of a bench_spiking text file."""
    table, batch = {}, None
    for line in (RESULTS / "bench_spiking" / name).read_text().splitlines():
        if line.startswith("batch "):
            batch = int(line.split()[1])
            table[batch] = {}
        m = re.match(r"\s+([0-9.]+)% \|.*\|\s+([0-9.]+)x", line)
        if m:
            table[batch][float(m.group(1))] = float(m.group(2))
        if "crossover" in line:
            table[batch]["crossover"] = line.split(":", 1)[1].strip()
    return table


def bench_spiking(text):
    """From bench_spiking.txt: the event back end's speed-up per batch at 1-5 % activity."""
    table = speedup_table("bench_spiking.txt")
    speedups = {b: [v for a, v in t.items() if a != "crossover" and a <= 5.0] for b, t in table.items()}
    crossover = float(table[32]["crossover"].split()[0])
    check_in(text, f"crossover {crossover:.0f} % (batch 32)", f"event back end {span(speedups[8])}x (batch 8) and {span(speedups[32])}x (batch 32)",
             f"{span(speedups[1])}x at batch 1")


def bench_conv(text):
    t = speedup_table("bench_conv_cpu.txt")
    for b in (1, 8, 32):
        check_in(text, " / ".join(f"{t[b][a]:.2f}" for a in (1.0, 5.0, 20.0)) + f"x (batch {b})")
    check_in(text, f"({t[32][0.2]:.1f}x at 0.2 %, batch 32)",
             f"below {t[8]['crossover'].split()[0]}-{t[32]['crossover'].split()[0]} % activity")


def bits_table(name):
    """{(weights, rounding): pp from float32} of a bits_sweep.md table."""
    lines = (RESULTS / name / "bits_sweep.md").read_text().splitlines()
    head = [c.strip() for c in next(ln for ln in lines if ln.startswith("| weights")).strip("|").split("|")]
    out = {}
    for ln in lines:
        cells = [c.strip() for c in ln.strip().strip("|").split("|")]
        if ln.startswith("| ") and cells[0].endswith("-bit"):
            for col, c in zip(head, cells):
                m = re.search(r"\((-?[0-9.]+)\)", c)
                if m:
                    out[cells[0], col] = float(m.group(1))
    return out


def bits_sweep(text):
    rate, spiking = bits_table("bits_rate"), bits_table("bits_spiking")

    def rng(values):
        return f"{max(values):.2f}..{min(values):.2f}"

    eight = [t[k] for t in (rate, spiking) for k in t if k[0] == "8-bit" and k[1] in ("stochastic", "residual")]
    check_in(text, f"8-bit {rng(eight)} pp",
             f"4-bit stochastic {rng([t['4-bit', 'stochastic'] for t in (rate, spiking)])} pp",
             f"binary residual {rng([t['1-bit', 'residual'] for t in (rate, spiking)])} pp")


def loihi2(text):
    s = json.loads((RESULTS / "spiking_loihi2" / "summary.json").read_text())
    m = metrics(RESULTS / "spiking_loihi2" / "metrics.csv")
    assert "energy_estimate_inference_J" in m[-1], "the file predates today's energy columns: re-measure"
    check_in(text, f"{s['final_test_acc']:.2f} % after {s['epochs_done']} epochs",
             f"{sci(float(m[-1]['energy_estimate_inference_J']))} J per inference",
             f"{sci(float(m[-1]['energy_estimate_learning_J']))} J per training sample",
             f"{span([float(r['seconds']) for r in m], '{:.0f}')} s per epoch")


def mnist_run(name, spikes=False):
    """A row of analysis/results/mnist_rows/NAME: test accuracy per epoch (the last in bold), seconds per
    epoch, and for spiking runs the spikes per inference."""
    def check(text):
        m = metrics(RESULTS / "mnist_rows" / name / "metrics.csv")
        accs = [f"{float(r['test_acc']):.2f}" for r in m]
        check_in(text, " / ".join(accs[:-1]) + f" / **{accs[-1]} %**",
                 f"{span([float(r['seconds']) for r in m])} s per epoch")
        if spikes:
            check_in(text, f"{span([float(r['spikes_per_inference']) for r in m], '{:,.0f}')} spikes")
    return check


def mnist_twin(text):
    line = (RESULTS / "mnist_rows" / "twin.txt").read_text()
    rate, spk = (f"{float(v):.2f}" for v in re.findall(r"([\d.]+)%", line)[:2])
    check_in(text, f"{rate} % (rate) -> {spk} % (spiking)")


def precision(text):
    rows = json.loads((RESULTS / "precision" / "precision.json").read_text())["rows"]
    worst = max(v["rel_error"] for v in rows["float32"].values())
    check_in(text, f"conv 1: {100 * rows['float32']['conv0']['rel_error']:.2f} % off",
             f"({100 * rows['float32, naive']['conv0']['rel_error']:.2f} % with the naive difference")
    assert worst < 0.01 and "every layer within 1 %" in text


def gpu_check(text):
    it = {r["method"]: r for r in json.loads((RESULTS / "gpu" / "bench_gpu.json").read_text())["iterations"]}
    ours, paper = it["triton bf16_incremental"], it["paper code, PyTorch default (TF32 convolutions)"]
    check_in(text, f"{ours['s_per_iteration']:.3f} s (triton + bf16_incremental) vs "
                   f"{paper['s_per_iteration']:.3f} s for the paper code's method: "
                   f"{paper['s_per_iteration'] / ours['s_per_iteration']:.1f}x")


def schedules(text):
    st = json.loads((RESULTS / "schedules" / "estimates" / "schedules.json").read_text())["stages"][-1]
    rel = json.loads((RESULTS / "schedules" / "estimates_free_rtol" / "schedules.json").read_text())["stages"][-1]
    paper = {r["candidate"]: r for r in st["rows"]}["T1 250 / T2 25 (paper)"]
    rel = {r["candidate"]: r for r in rel["rows"]}["relative 0.05 (T1 400 / T2 200)"]
    check_in(text, st["stage"].split(" (")[1].rstrip(")"), f"cosine {paper['min_cosine']:.3f}",
             f"{rel['min_cosine']:.3f}", f"{rel['steps_free']} free / {rel['steps_nudged']:.0f} nudged")


def cifar10_twin(text):
    d = json.loads((RESULTS / "cifar10_twin" / "twin.json").read_text())
    v = d["spiking"]
    default, routed = v["default (T1 200, window 50)"], v["pool_alpha 0.02"]
    check_in(text, f"{d['rate']['test_acc']:.2f} % (rate, T1 {d['rate']['T1']})",
             f"{d['rate_fixed_point']['test_acc']:.2f} % (its fixed point)",
             f"{default['test_acc']:.2f} % spiking ({default['vs_rate']['same_prediction_pct']:.1f} % same predictions)",
             f"{routed['test_acc']:.2f} % ({routed['vs_rate']['same_prediction_pct']:.1f} %)",
             f"{default['spikes_per_inference'] / 1e3:.0f}k spikes and {sci(default['synops_per_inference'])} SynOps",
             f"{d['data']['test_images']:,} test images")


CHECKED = {
    "spikeep train mnist_mlp`": mnist_run("mnist_mlp"),
    "spikeep train mnist_mlp_bptt`": mnist_run("mnist_mlp_bptt"),
    "spikeep train mnist_mlp_spiking` (the MLP": mnist_run("mnist_mlp_spiking", spikes=True),
    "spikeep evaluate RUN --neurons spiking": mnist_twin,
    "analysis/schedules.py": schedules,
    "spikeep gdu gdu_conv`": gdu_identity,
    "spikeep train cifar10_cpu_sym_ce`": cifar10_cpu,
    "spikeep train cifar10_cpu_uni_sym_kp_vf`": cifar10_cpu_uni,
    "analysis/unidirectional_mnist.py": unidirectional,
    "spikeep train mnist_mlp2_spiking`": mlp2_spiking,
    "analysis/bench_twin.py": bench_twin,
    "analysis/bench_before_after.py": before_after,
    "analysis/nir_check.py": nir_check,
    "analysis/bench_traces.py": bench_traces,
    "analysis/bench_relax.py": bench_relax,
    "analysis/bench_spiking.py` (784": bench_spiking,
    "analysis/bench_spiking.py --conv": bench_conv,
    "analysis/bits_sweep.py": bits_sweep,
    "plasticity.profile": loihi2,
    "analysis/precision.py": precision,
    "scripts/gpu_check.sh": gpu_check,
    "analysis/cifar10_twin.py": cifar10_twin,
}

# rows not (yet) checked against a file, and why; a new row must be added to one of the two
UNTRACED = {
}


def test_every_measured_row_is_checked_or_says_why_not():
    for what in measured_rows():
        checked = [k for k in CHECKED if k in what]
        untraced = [k for k in UNTRACED if k in what]
        assert len(checked) + len(untraced) == 1, f"{what}: checked by {checked}, untraced as {untraced}"


@pytest.mark.parametrize("key", sorted(CHECKED))
def test_measured_figure_matches_its_results_file(key):
    CHECKED[key](row(key))


def test_an_edited_figure_fails():
    """The checks can fail: a figure one digit off in any checked row is caught."""
    for key, check in CHECKED.items():
        text = row(key)
        edited = [re.sub(r"\d(?=[^\d]*$)", lambda d: str((int(d.group()) + 1) % 10), f) for f in
                  re.findall(r"\d+\.\d+", text)]
        assert edited, key
        for figure, new in zip(re.findall(r"\d+\.\d+", text), edited):
            try:
                check(text.replace(figure, new))
            except AssertionError:
                break
        else:
            pytest.fail(f"{key}: no figure of the row is checked against its file")


def test_every_path_the_readme_names_exists():
    text = README.read_text()
    paths = set(re.findall(r"\b((?:analysis|scripts)/[\w./-]+\.(?:py|sh))\b", text))
    assert paths, "no analysis/ or scripts/ paths found"
    missing = sorted(p for p in paths if not (REPO / p).is_file())
    assert not missing, missing
    results = set(re.findall(r"\banalysis/results/[\w./-]+", text))
    gone = sorted(p for p in results if not (REPO / p.rstrip("./")).exists())
    assert not gone, gone


def _scripts():
    text = README.read_text()
    return sorted(set(re.findall(r"\b((?:analysis|scripts)/[\w./-]+\.(?:py|sh))\b", text)))


@pytest.mark.slow
@pytest.mark.parametrize("script", _scripts())
def test_every_script_the_readme_names_answers_help(script):
    """Each in its own process: argparse's --help (Python) or the script's usage (shell)."""
    if script.endswith(".sh"):  # never run a shell script that would take --help as an argument and go on
        assert "--help)" in (REPO / script).read_text(), f"{script} does not handle --help"
        cmd = ["bash", script, "--help"]
    else:
        cmd = [sys.executable, script, "--help"]
    r = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "usage" in r.stdout.lower(), r.stdout[:500]


@pytest.mark.parametrize("folder", ["conv64", "conv64_e14"])
def test_the_wide_spiking_convnet_rows_are_their_run_folders_and_twin_files(folder):
    """README's rows of mnist_conv64_spiking (issue 30, item 1), one per run: accuracy per epoch, the verdict
    against the 99.0 % asked, spikes, SynOps, activity and energy are those of
    analysis/results/spiking_deep/<folder>/ (run/ and twin.json)."""
    d = RESULTS / "spiking_deep" / folder
    m = metrics(d / "run" / "metrics.csv")
    s = json.loads((d / "run" / "summary.json").read_text())
    v = json.loads((d / "twin.json").read_text())["spiking"]["default"]
    assert s["finished"] and s["epochs_done"] == len(m) == s["epochs"], f"{folder}: an unfinished run"
    text = README.read_text()
    line = next(x for x in text.splitlines()
                if "mnist_conv64_spiking.toml" in x and x.startswith("|") and f", {len(m)} epochs)" in x)
    accs = " / ".join(f"{float(r['test_acc']):.2f}" for r in m)
    verdict = "**short of** the 99.0 %" if s["final_test_acc"] < 99.0 else "the 99.0 % asked, reached"
    check_in(line, f"{s['final_test_acc']:.2f} %", verdict, f"({accs} %, train {s['final_train_acc']:.2f} %)",
             f"{v['spikes_per_inference']:,.0f} spikes", f"{v['synops_per_inference']:.2e}".replace("e+0", "e"),
             "activity " + " / ".join(f"{x['activity']:.3f}" for x in v["layers"]),
             f"{v['energy']['per_inference_J']['total'] * 1e3:.2f} mJ at Loihi prices")
    if s["final_test_acc"] < 99.0:
        assert "reached" not in line, line
