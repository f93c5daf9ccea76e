"""The pipeline's stages as functions (build_data, prepare, generate_traces, train_rsft, evaluate, export and
the HS-DPO branch: mine_hard_samples, train_hsdpo, evaluate_hsdpo): stage scripts and the CLI both
call these. check_params is stages/check_params.py alone (guardrsft.graph)."""
from __future__ import annotations

import sys
from pathlib import Path

from . import plots
from .config import Params, ParamsError
from .data import counts, load_notebook_file, split
from .io import read_jsonl, write_json, write_jsonl, write_metrics
from .tracking import log_flat_metrics, log_history, log_parent_artifacts, log_summary, stage_run


def build_data(p: Params, default_path: str, out_path: str, metrics_out: str) -> dict:
    """The training set from params `data.sources` (guardrsft.sources); none: default_path as is."""
    from .sources import build

    with stage_run(p, "build_data") as ml:
        report = build(p, default_path, out_path, metrics_out)
        log_flat_metrics(ml, {k: v for k, v in report.items() if k != "sources"}, prefix="build_data.")
    print(f"[build_data] {report['items']} items from {len(p.data.sources) or 'the default'} source(s) -> {out_path}",
          file=sys.stderr)
    return report


def prepare(p: Params, input_path: str, out_dir: str, metrics_out: str) -> dict:
    with stage_run(p, "prepare") as ml:
        metrics = _prepare(p, input_path, out_dir, metrics_out)
        log_flat_metrics(ml, metrics, prefix="data.")
        log_summary({k: metrics[k] for k in ("input_samples", "duplicates_dropped")}, prefix="data.")
    return metrics


PSEUDO = "pseudo:"  # guardrsft.sources.PSEUDO (not imported: prepare does not run the builder)


def _prepare(p: Params, input_path: str, out_dir: str, metrics_out: str) -> dict:
    samples, report = load_notebook_file(input_path, list(p.policies))
    # pseudo-labelled items (data.pseudo_label) train only: a model chose their labels
    pseudo = [s for s in samples if s["source"].startswith(PSEUDO)]
    parts = split([s for s in samples if not s["source"].startswith(PSEUDO)], p.prepare.val_fraction,
                  p.prepare.test_fraction, p.seed)
    parts["train"] += pseudo
    out = Path(out_dir)
    for name, rows in parts.items():
        write_jsonl(out / f"{name}.jsonl", [{k: v for k, v in r.items() if k != "index"} for r in rows])
    metrics = {**{k: v for k, v in report.items() if k != "duplicate_indices"},
               **{name: counts(rows, list(p.policies)) for name, rows in parts.items()}}
    if report["duplicates_dropped"]:
        print(f"[prepare] dropped {report['duplicates_dropped']} duplicate samples (indices "
              f"{report['duplicate_indices'][:20]}) with the same content and labels as an earlier one",
              file=sys.stderr)
    write_json(metrics_out, metrics)
    print(f"[prepare] {len(samples)} samples -> train {len(parts['train'])} / val {len(parts['val'])} / "
          f"test {len(parts['test'])}", file=sys.stderr)
    return metrics


def generate_traces(p: Params, prepared_dir: str, out_dir: str, metrics_out: str, estimate: bool = False) -> dict:
    if estimate:
        return _generate_traces(p, prepared_dir, out_dir, metrics_out, estimate=True)
    with stage_run(p, "generate_traces") as ml:
        metrics = _generate_traces(p, prepared_dir, out_dir, metrics_out)
        log_flat_metrics(ml, metrics, prefix="traces.")
        log_summary({"train_traces": metrics["train"]["traces"], "rejected": metrics["train"]["rejected"],
                     **({"teacher": {"cost_usd": metrics["teacher"]["cost_usd"]}} if "teacher" in metrics else {})},
                    prefix="traces.")
    return metrics


def _generate_traces(p: Params, prepared_dir: str, out_dir: str, metrics_out: str, estimate: bool = False) -> dict:
    from .traces import build_traces

    splits = {}
    for name in ("train", "val"):
        src = Path(prepared_dir) / f"{name}.jsonl"
        if not src.exists():
            raise FileNotFoundError(f"{src}: missing; run the prepare stage first (`dvc repro prepare`)")
        splits[name] = read_jsonl(src)
    teacher = results = by_pair = importer = None
    if p.traces.teacher == "import":
        from .importer import Importer

        if not p.traces.import_source:
            raise ParamsError(f"{p.source}: traces.teacher is `import` but `traces.import_source` is not set; "
                              "give a local file/folder or a `datasets` id")
        importer = Importer(p.traces.import_source)
    if p.traces.teacher in ("openai", "batch"):
        from .teacher import BatchTeacher, Teacher, log, summarize, teacher_policies

        teacher = (BatchTeacher if p.traces.teacher == "batch" else Teacher)(
            p.traces.openai, teacher_policies(p.policies, p.policy_info))
        items = [it for rows in splits.values() for it in teacher.items(rows)]
        est = teacher.estimate(items)
        log(f"{est['items']} items, {est['cached']} cached; to request: {est['requests']} "
            f"(~{est['prompt_tokens']} prompt + ~{est['completion_tokens']} completion tokens, ~${est['usd']})")
        if estimate:
            return est
        results = teacher.run(items)
        by_pair = {(it.id, it.policy): results[it.key] for it in items}
    elif estimate:
        return {"items": 0, "requests": 0, "usd": 0.0, "note": "the template teacher is offline and free"}

    metrics, rejected = {}, []
    for name, rows in splits.items():
        traces, m = build_traces(rows, p.policies, results=by_pair, importer=importer)
        rejected += [t for t in traces if t["origin"] == "rejected"]
        write_jsonl(Path(out_dir) / f"{name}.jsonl", [t for t in traces if t["origin"] != "rejected"])
        metrics[name] = m
    write_jsonl(Path(out_dir) / "rejected.jsonl", rejected)
    if teacher is not None:
        metrics["teacher"] = summarize(teacher.stats, results)
    if importer is not None:
        metrics["import"] = {"source": p.traces.import_source, "per_policy_traces": len(importer.per_policy),
                             "request_traces": len(importer.request), "unparsed_rows": importer.skipped_rows}
    write_json(metrics_out, metrics)
    t = metrics["train"]
    print(f"[generate_traces] train: {t['traces']} traces ({t['given']} given, {t['imported']} imported, "
          f"{t['generated']} from the `{'template' if importer else p.traces.teacher}` teacher, {t['rejected']} "
          "rejected)", file=sys.stderr)
    return metrics


def train_rsft(p: Params, traces_path: str, adapter_out: str, metrics_out: str, plot_out: str) -> dict:
    from .train import train

    with stage_run(p, "train_rsft") as ml:
        res = train(p, traces_path, adapter_out, metrics_out, plot_out)
        # the PNG beside the CSV, for offline users (dvc plots HTML needs a CDN)
        png = plots.loss_curve(plot_out, Path(plot_out).with_suffix(".png"))
        if ml is not None:
            log_history(ml, res["history"])  # the loss curve on the stage's run and on the parent
            log_flat_metrics(ml, res["metrics"], prefix="train.")
            log_summary({k: res["metrics"][k] for k in ("final_loss", "steps", "train_seconds")}, prefix="train.")
            ml.log_artifact(metrics_out)
            log_parent_artifacts(png, "plots")
            if p.mlflow.log_adapter:
                log_parent_artifacts(adapter_out, "adapter")
    m = res["metrics"]
    print(f"[train_rsft] {m['steps']} steps, final loss {m['final_loss']}, {m['samples_per_second']} samples/s, "
          f"{m['train_seconds']} s -> {adapter_out}", file=sys.stderr)
    return m


def evaluate(p: Params, test_path: str, adapter: str, metrics_out: str, predictions_out: str, plots_dir: str,
             headline_out: str | None = None, val_path: str | None = None) -> dict:
    """metrics_out: every figure (metrics/eval_detail.json); headline_out: the few DVC shows
    (metrics/eval.json, evaluate.headline); val_path: the validation split evaluate.thresholds
    auto tunes on. The last line printed says who beat whom."""
    from .evaluate import benchmark_summary, evaluate as run_eval, headline, verdict

    if p.evaluate.thresholds == "auto" and not val_path:
        raise ParamsError(f"{p.source}: evaluate.thresholds is auto, which tunes on the validation split: pass its "
                          "path (stages/evaluate.py ... data/prepared/val.jsonl, as dvc.yaml does)")
    with stage_run(p, "evaluate") as ml:
        m = run_eval(p, test_path, adapter, metrics_out, predictions_out, plots_dir, val_path=val_path)
        if headline_out:
            write_json(headline_out, headline(m))
        plots.render_eval(plots_dir)  # confusion.png, per_policy_f1.png beside the CSVs
        if ml is not None:
            log_flat_metrics(ml, {k: v for k, v in m.items() if k not in ("finetuned", "baseline")}, prefix="eval.")
            log_flat_metrics(ml, m["baseline"], prefix="eval.baseline.")
            ml.log_metric("eval.delta_vs_baseline", m["delta_vs_notebook_baseline"])
            ml.log_artifact(metrics_out)
            ml.log_artifacts(plots_dir, artifact_path="plots")
            # error analysis: what evaluate wrote (the predictions file and <its folder>/benchmarks),
            # never the rest of that folder (`--predictions /tmp/p.jsonl` once uploaded all of /tmp)
            ml.log_artifact(predictions_out, artifact_path="predictions")
            ml.log_artifacts(str(Path(predictions_out).parent / "benchmarks"), artifact_path="predictions/benchmarks")
            # the parent: headline numbers vs the notebook's 57% and vs the measured zero-shot base
            head = {k: v for k, v in m.items() if not isinstance(v, dict) and k != "delta_vs_notebook_baseline"}
            log_summary({**head, "delta_vs_baseline": m["delta_vs_notebook_baseline"],
                         "delta_vs_measured_baseline": m["delta_vs_measured_baseline"],
                         "baseline": {k: m["baseline"][k] for k in head if k in m["baseline"]}}, prefix="eval.")
            log_summary(benchmark_summary(m), prefix="eval.")  # per evaluate.benchmarks entry
            log_parent_artifacts(metrics_out)
            for f in sorted(Path(plots_dir).glob("*.png")):
                log_parent_artifacts(f, "plots")
    b, ci, bci = m["baseline"], m.get("ci95") or {}, m.get("baseline_ci95") or {}

    def fig(x, c):  # a figure with its 95% interval
        return "n/a" if x is None else f"{x:.3f}" + (f" [{c['lo']:.3f}, {c['hi']:.3f}]" if c else "")

    print(f"[evaluate] test split, {m.get('finetuned', {}).get('samples', '?')} items (adapter vs zero-shot base, 95% CI): exact match "
          f"{fig(m['exact_match'], ci.get('exact_match'))} vs {fig(b['exact_match'], bci.get('exact_match'))}; "
          f"binary accuracy {fig(m['binary_accuracy'], ci.get('binary_accuracy'))} vs "
          f"{fig(b['binary_accuracy'], bci.get('binary_accuracy'))}; harmful F1 {fig(m['harmful_f1'], None)} vs "
          f"{fig(b['harmful_f1'], None)}; parse failures {m['parse_failure_rate']:.1%} vs "
          f"{b['parse_failure_rate']:.1%}", file=sys.stderr)
    print(f"[evaluate] {verdict(m, p.baseline.exact_match)}", file=sys.stderr)
    return m


def export(p: Params, adapter: str, out_dir: str, eval_metrics: str | None = None, **kw) -> Path:
    """kw: gguf_dir, metrics_out, train_metrics_path, data_metrics_path (see export.export)."""
    from .export import export as run_export

    with stage_run(p, "export") as ml:
        path = run_export(p, adapter, out_dir, eval_metrics, **kw)
        if ml is not None:  # the model card only: merged weights stay in DVC
            size = sum(f.stat().st_size for f in Path(path).rglob("*") if f.is_file())
            ml.log_metric("export.size_mb", round(size / 2**20, 1))
            if (Path(path) / "README.md").exists():
                ml.log_artifact(str(Path(path) / "README.md"))
    print(f"[export] merged model -> {path}", file=sys.stderr)
    return path


# ---------------------------------------------------------------- hard-sample DPO (docs/HSDPO.md)
def mine_hard_samples(p: Params, traces_path: str, adapter: str, out_dir: str, metrics_out: str,
                      *eval_paths: str) -> dict:
    from . import hsdpo

    if not p.hsdpo_enabled:  # DVC has no conditional stages: say so in every output, load nothing
        return hsdpo.disabled(p, metrics_out, str(Path(out_dir) / "pairs.jsonl"), str(Path(out_dir) / "items.jsonl"))
    with stage_run(p, "mine_hard_samples") as ml:
        m = hsdpo.mine(p, traces_path, out_dir, metrics_out, adapter=adapter, eval_paths=eval_paths)
        log_flat_metrics(ml, m, prefix="hard_samples.")
        log_summary({k: m[k] for k in ("pairs", "hard", "all_wrong", "sample_accuracy")}, prefix="hard_samples.")
    print(f"[mine_hard_samples] {m['item_policies']} (item, policy) x {m['k']} samples: {m['hard']} hard, "
          f"{m['all_correct']} all correct, {m['all_wrong']} all wrong -> {m['pairs']} pairs in {out_dir}",
          file=sys.stderr)
    return m


def train_hsdpo(p: Params, pairs_path: str, adapter_in: str, adapter_out: str, metrics_out: str,
                plot_out: str) -> dict:
    from . import hsdpo

    png = Path(plot_out).with_suffix(".png")
    if not p.hsdpo_enabled:
        m = hsdpo.disabled(p, metrics_out, plot_out, dirs=[adapter_out])
        hsdpo.loss_png(plot_out, png)
        return m
    with stage_run(p, "train_hsdpo") as ml:
        res = hsdpo.train_dpo(p, pairs_path, adapter_in, adapter_out, metrics_out, plot_out)
        hsdpo.loss_png(plot_out, png)
        if ml is not None:
            log_history(ml, [{**h, "hsdpo_loss": h["loss"]} for h in res["history"]],
                        keys=("hsdpo_loss", "rewards/margins", "rewards/accuracies"))
            log_flat_metrics(ml, res["metrics"], prefix="hsdpo.")
            log_summary({k: res["metrics"][k] for k in ("pairs", "steps") if k in res["metrics"]}, prefix="hsdpo.")
            ml.log_artifact(metrics_out)
            log_parent_artifacts(png, "plots")
            if p.mlflow.log_adapter:
                log_parent_artifacts(adapter_out, "adapter_hsdpo")
    m = res["metrics"]
    print(f"[train_hsdpo] {m['pairs']} pairs, {m['steps']} steps, loss {m.get('first_loss')} -> "
          f"{m.get('final_loss')} -> {adapter_out}", file=sys.stderr)
    return m


def evaluate_hsdpo(p: Params, test_path: str, adapter: str, rsft_metrics: str, rsft_predictions: str,
                   metrics_out: str, predictions_dir: str, plots_dir: str, headline_out: str | None = None) -> dict:
    """evaluate() on the HS-DPO adapter (its `finetuned` numbers), plus R-SFT's headline numbers
    from rsft_metrics (evaluate's detail file), `delta_vs_rsft` (HS-DPO minus R-SFT, same items and
    decoding) and its paired bootstrap interval from both models' predictions (rsft_predictions:
    evaluate's predictions file, its `benchmarks/` folder beside it). headline_out (the DVC
    metrics file): `hsdpo_vs_rsft`, the exact match delta; empty with hsdpo off."""
    import json

    from . import hsdpo
    from .evaluate import HEADLINE, evaluate as run_eval

    if not p.hsdpo_enabled:
        if headline_out:
            write_json(headline_out, {})
        return hsdpo.disabled(p, metrics_out, dirs=[predictions_dir, plots_dir])
    with stage_run(p, "evaluate_hsdpo") as ml:
        m = run_eval(p, test_path, adapter, metrics_out, str(Path(predictions_dir) / "test.jsonl"), plots_dir)
        rsft = json.loads(Path(rsft_metrics).read_text())
        delta = hsdpo.rsft_delta(m, rsft)
        m = {"enabled": True, **m, "rsft": {k: rsft.get(k) for k in HEADLINE}, "delta_vs_rsft": delta,
             "delta_vs_rsft_ci95": hsdpo.rsft_delta_ci(p, rsft_predictions, str(Path(predictions_dir) / "test.jsonl"),
                                                       delta)}
        write_metrics(metrics_out, m)  # speed and latency to metrics/timings/, as evaluate's
        if headline_out:
            write_json(headline_out, {"hsdpo_vs_rsft": delta["test"]["exact_match"]})
        plots.render_eval(plots_dir)
        if ml is not None:
            log_flat_metrics(ml, {k: v for k, v in m.items() if k not in ("finetuned", "baseline")}, prefix="eval_hsdpo.")
            ml.log_artifact(metrics_out)
            log_summary({**{k: m[k] for k in HEADLINE}, "delta_vs_rsft": m["delta_vs_rsft"]["test"]},
                        prefix="eval_hsdpo.")
    d = m["delta_vs_rsft"]["test"]
    print(f"[evaluate_hsdpo] exact match {m['exact_match']:.3f} (R-SFT {m['rsft']['exact_match']}, delta "
          f"{d['exact_match']}); harmful F1 {m['harmful_f1']:.3f} (delta {d['harmful_f1']})", file=sys.stderr)
    return m
