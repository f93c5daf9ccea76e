"""`guardrsft`: the stages as subcommands, plus sample-data and classify.

Heavy imports (torch, transformers) stay inside commands so `--help` is instant.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import List, Optional

import typer

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="Reasoning safety classifiers (GuardReasoner R-SFT). Run the whole pipeline with "
                       "`dvc repro`; these commands run one stage each, with the same code.")

PARAMS = typer.Option("params.yaml", "--params", help="Parameter file (validated; unknown keys are errors).")


def _params(path: str):
    from .config import load_params

    return load_params(path)


def _guarded(fn):
    from .errors import user_errors

    try:
        return fn()
    except user_errors() as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(2)


@app.command("sample-data")
def sample_data(out: Path = typer.Argument(Path("training_data.json"), help="Where to write the demo file.")):
    """Write the notebook's 3-sample demo file (the input format of `prepare`)."""
    from .data import DEMO
    from .io import write_json

    write_json(out, DEMO)
    typer.echo(f"wrote {out} ({len(DEMO['samples'])} samples, {len(DEMO['reasoning_traces'])} traces)")


@app.command()
def prepare(input: str = "data/raw/training_data.json", out_dir: str = "data/prepared",
            metrics: str = "metrics/data.json", params: str = PARAMS):
    """Validate, normalize, de-duplicate and split the data."""
    from . import pipeline

    _guarded(lambda: pipeline.prepare(_params(params), input, out_dir, metrics))


@app.command()
def traces(prepared: str = "data/prepared", out_dir: str = "data/traces",
           metrics: str = "metrics/traces.json", params: str = PARAMS,
           estimate: bool = typer.Option(False, "--estimate",
                                         help="Print requests, tokens and dollars the teacher would spend; send nothing.")):
    """Keep given reasoning traces and fill the missing ones with the teacher."""
    from . import pipeline

    res = _guarded(lambda: pipeline.generate_traces(_params(params), prepared, out_dir, metrics, estimate=estimate))
    if estimate:
        typer.echo(json.dumps(res, indent=2))


@app.command()
def train(traces: str = "data/traces/train.jsonl", adapter: str = "models/adapter",
          metrics: str = "metrics/train.json", plot: str = "metrics/plots/train_loss.csv", params: str = PARAMS):
    """Train the LoRA adapter with reasoning SFT (resumes from the last checkpoint)."""
    from . import pipeline

    _guarded(lambda: pipeline.train_rsft(_params(params), traces, adapter, metrics, plot))


@app.command()
def evaluate(test: str = "data/prepared/test.jsonl", adapter: str = "models/adapter",
             metrics: str = "metrics/eval_detail.json", predictions: str = "data/predictions/test.jsonl",
             plots: str = "metrics/plots/eval", params: str = PARAMS,
             headline: str = typer.Option("metrics/eval.json", help="The headline figures (DVC's metrics file).")):
    """Compare the zero-shot base model and the adapter on the test split."""
    from . import pipeline

    _guarded(lambda: pipeline.evaluate(_params(params), test, adapter, metrics, predictions, plots, headline))


@app.command()
def export(adapter: str = "models/adapter", out: str = "models/merged", eval_metrics: str = "metrics/eval_detail.json",
           gguf_dir: str = typer.Option("models/gguf", help="Where the GGUF files, Modelfile and card go."),
           metrics: str = typer.Option("metrics/export.json", help="Sizes and round-trip results (JSON)."),
           hsdpo_adapter: str = typer.Option("models/adapter_hsdpo", help="Shipped instead of ADAPTER when "
                                             "export.adapter is hsdpo, or auto with hsdpo.enabled."),
           hsdpo_eval: str = typer.Option("metrics/eval_hsdpo_detail.json", help="The HS-DPO adapter's evaluation."),
           params: str = PARAMS):
    """Merge the adapter, write GGUF files + an Ollama Modelfile, check them, write the model card."""
    from . import pipeline

    _guarded(lambda: pipeline.export(_params(params), adapter, out, eval_metrics, gguf_dir=gguf_dir, metrics_out=metrics,
                                     train_metrics_path="metrics/train.json", data_metrics_path="metrics/data.json",
                                     hsdpo_adapter=hsdpo_adapter, hsdpo_eval_path=hsdpo_eval))


MODEL = typer.Option("models/merged", "--model", "-m",
                     help="A merged model folder (what export writes to models/merged), a .gguf file "
                          "(models/gguf/*.gguf), or a base model together with --adapter.")
ADAPTER = typer.Option(None, "--adapter", help="A LoRA adapter folder on top of --model (not with a .gguf).")
POLICY = typer.Option(None, "--policy", "-p", help="Check only this policy (repeatable). Default: every policy "
                                                   "in params.yaml.")


def _check_model(model: str) -> None:
    if model == "models/merged" and not Path(model).exists():
        raise FileNotFoundError("models/merged not found: run `dvc repro` (export writes models/merged) "
                                "or pass --model DIR or --model FILE.gguf")
    if model.endswith(".gguf") and not Path(model).is_file():
        raise FileNotFoundError(f"{model}: GGUF file not found (export writes models/gguf/*.gguf)")


def _open(model: str, adapter: Optional[str], p, batch_size: Optional[int] = None, cache_path: Optional[str] = None):
    from .classify_file import open_guard

    _check_model(model)
    return open_guard(model, p, adapter=adapter, batch_size=batch_size, cache_path=cache_path)


@app.command()
def classify(
    text: str = typer.Argument(..., help="The content to check (quote it)."),
    policy: Optional[List[str]] = POLICY,
    model: str = MODEL,
    adapter: Optional[str] = ADAPTER,
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object (no streaming)."),
    stream: bool = typer.Option(True, "--stream/--no-stream",
                                help="Print the reasoning as it is generated, one policy after another. "
                                     "--no-stream answers all policies in one batch (faster) and prints at the end."),
    params: str = PARAMS,
):
    """Classify one text: per policy the model reasons, then gives a verdict.

    Examples:
      guardrsft classify "How do I pick a lock?"
      guardrsft classify "Pick a lock?" -m models/gguf/guardrsft-Q8_0.gguf
      guardrsft classify "How do I pick a lock?" --json

    Exit code: 0 every policy got a verdict, 1 an answer had none, 2 usage error."""
    from .classify_file import Stream

    def write(s: str) -> None:
        sys.stdout.write(s)
        sys.stdout.flush()

    def run():
        guard = _open(model, adapter, _params(params))
        p = guard.p  # the model's own prompt and policies when its folder describes itself (guardrsft.spec)
        item = {"content": text}
        if as_json or not stream:
            return guard.classify([item], policies=policy or None)[0]
        if p.prompt.mode == "joint":  # one answer covers every policy: stream it once
            write(f"== {', '.join(policy or p.policies)}\n")
            s = Stream(write)
            r = guard.classify([item], policies=policy or None, stream=s)[0]
            s.finish(next(iter(r["raw"].values())))
            for q, v in r["verdicts"].items():
                write(f"-> {q}: {v or 'PARSE ERROR'}\n")
            return r
        res = None
        for q in policy or list(p.policies):
            write(f"== {q}\n")
            s = Stream(write)
            r = guard.classify([item], policies=[q], stream=s)[0]
            s.finish(r["raw"][q])
            write(f"-> {q}: {r['verdicts'][q] or 'PARSE ERROR'}\n\n")
            res = r if res is None else _merge(res, r)
        return res

    res = _guarded(run)
    if as_json:
        typer.echo(json.dumps({k: res[k] for k in ("verdict", "flagged", "verdicts", "reasoning", "is_parse_error")},
                              ensure_ascii=False, indent=2))
    else:
        if not stream:
            for q, v in res["verdicts"].items():
                typer.echo(f"== {q}: {v or 'PARSE ERROR'}")
                typer.echo(res["reasoning"][q])
        typer.echo(f"verdict: {res['verdict'] or 'PARSE ERROR'}"
                   + (f" (flagged: {', '.join(res['flagged'])})" if res["flagged"] else ""))
    raise typer.Exit(1 if res["is_parse_error"] else 0)


def _merge(a: dict, b: dict) -> dict:
    """Two single-policy results of the same item -> one result (as if classified together)."""
    from .guard import build_result

    return build_result(a, {**a["raw"], **b["raw"]})


@app.command("classify-file")
def classify_file(
    input: Path = typer.Argument(..., help="JSONL, one object per line: {\"content\": \"...\"}, optionally "
                                           "\"response\" (an AI answer to judge) and \"id\" (copied to the output)."),
    out: Path = typer.Option(..., "--out", "-o", help="Output JSONL: one line per input line, same order."),
    policy: Optional[List[str]] = POLICY,
    model: str = MODEL,
    adapter: Optional[str] = ADAPTER,
    chunk: int = typer.Option(8, "--chunk", min=1, help="Lines classified (and saved) together."),
    max_chars: int = typer.Option(8000, "--max-chars", min=1,
                                  help="Longer content is flagged `oversized` instead of classified."),
    params: str = PARAMS,
):
    """Classify every line of a JSONL file: resumable, no line dropped.

    Each output line: line, id, status, verdict, flagged, verdicts, reasoning.
    status is one of:
      ok           every policy got a verdict
      parse_error  some policy's answer had no verdict
      empty, malformed, oversized   not classified; "error" says why

    After an interruption rerun the same command: done lines are kept, as long as the model,
    adapter, policies, prompt, --max-chars and engine are the same (else they are redone).

    Examples:
      guardrsft classify-file in.jsonl --out verdicts.jsonl
      guardrsft classify-file in.jsonl -o out.jsonl -m models/gguf/guardrsft-Q8_0.gguf

    Exit code: 0 every line ok, 1 some line not ok, 2 usage error."""
    from .classify_file import classify_file as run_file
    from .classify_file import setup_key

    def run():
        p = _params(params)
        if not input.is_file():
            raise FileNotFoundError(f"{input}: input file not found")
        _check_model(model)
        return run_file(lambda: _open(model, adapter, p), str(input), str(out), policy or None,
                        chunk=chunk, max_chars=max_chars, setup=setup_key(model, adapter, p, policy or None, max_chars))

    s = _guarded(run)
    summary = ", ".join(f"{n} {k}" for k, n in sorted(s["counts"].items()))
    bad = s["not_ok_lines"]
    typer.echo(f"classify-file: {s['lines']} lines -> {s['out']} ({summary or 'nothing to do'})"
               + (f"; not ok: lines {', '.join(map(str, bad[:20]))}{' ...' if len(bad) > 20 else ''}" if bad else "")
               + (f"; {s['reused']} lines reused from the last run" if s["reused"] else "")
               + (f"; {s['redone']} redone (another setup)" if s["redone"] else ""),
               err=True)
    raise typer.Exit(0 if s["all_ok"] else 1)


@app.command()
def serve(
    model: str = typer.Argument("models/merged", help="A merged model folder (export's models/merged), a .gguf "
                                                      "file, or a base model together with --adapter."),
    adapter: Optional[str] = ADAPTER,
    host: str = typer.Option("127.0.0.1", help="Address to bind; 0.0.0.0 exposes the server to the network "
                                               "(put it behind a proxy and set the API key, docs/SERVE.md)."),
    port: int = typer.Option(8000, min=0, max=65535),
    name: Optional[str] = typer.Option(None, help="The model id in answers and /v1/models (default: the model's "
                                                  "folder or file name)."),
    cache: Optional[str] = typer.Option(None, help="Answer cache (JSONL), kept across restarts; answers are "
                                                   "always cached in memory."),
    api_key_env: str = typer.Option("GUARDRSFT_API_KEY", help="When this environment variable is set, requests "
                                                              "need `Authorization: Bearer <its value>`."),
    max_items: int = typer.Option(64, min=1, help="Texts per request (413 above)."),
    max_chars: int = typer.Option(8000, min=1, help="Characters per text (413 above)."),
    max_body_bytes: int = typer.Option(4 << 20, min=1, help="Request body size (413 above)."),
    max_queue: int = typer.Option(1024, min=1, help="Texts waiting for the model (503 + Retry-After above)."),
    max_batch: Optional[int] = typer.Option(
        None, min=1, help="Texts answered by one batched classify call (default: 1 on the CPU, where a text's "
                          "answer could otherwise depend on its batch neighbours; 256 on a GPU)."),
    timeout: float = typer.Option(120.0, min=0.1, help="Seconds a request may wait and run (504 after)."),
    batch_size: Optional[int] = typer.Option(None, min=1, help="Generation batch (default: params' evaluate batch)."),
    params: str = PARAMS,
):
    """Serve the guard as an OpenAI-compatible moderation API (docs/SERVE.md).

    Routes: POST /v1/moderations (the `openai` client's moderations.create),
    POST /v1/classify (verdicts and reasoning per policy), GET /health, GET /v1/models.

    Examples:
      guardrsft serve models/merged
      GUARDRSFT_API_KEY=secret guardrsft serve models/merged --host 0.0.0.0 --port 8080"""
    import os

    from .serve import Limits, create_app, make_server, resolve_limits

    def run():
        from .models import ModelError

        if max_queue < max_items:  # a full-size request could never be queued
            raise ModelError(f"--max-queue ({max_queue}) must be at least --max-items ({max_items})")
        p = _params(params)
        guard = _open(model, adapter, p, batch_size=batch_size, cache_path=cache)
        limits = resolve_limits(guard, Limits(max_items=max_items, max_chars=max_chars, max_body_bytes=max_body_bytes,
                                              max_queue=max_queue, max_batch=max_batch, timeout_s=timeout))
        if guard.backend == "plain" and limits.max_batch > 1:
            typer.echo(f"serve: warning: --max-batch {limits.max_batch} on the CPU: a text's verdicts can depend on "
                       "the other texts in its batch (padding changes float sums on the CPU); the default, 1, "
                       "answers each text alone and avoids it (docs/SERVE.md)", err=True)
        token = os.environ.get(api_key_env) or None
        app_ = create_app(guard, name or Path(model.rstrip("/")).name, limits, token=token)
        typer.echo(f"serve: {model} ({guard.backend}, policies: {', '.join(guard.p.policies)}, max batch "
                   f"{limits.max_batch}) on http://{host}:{port}"
                   + (f"; API key from ${api_key_env}" if token else "; no API key"), err=True)
        make_server(app_, host, port, timeout).run()

    _guarded(run)


if __name__ == "__main__":
    app()
    sys.exit(0)
