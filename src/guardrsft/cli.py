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
             metrics: str = "metrics/eval.json", predictions: str = "data/predictions/test.jsonl",
             plots: str = "metrics/plots/eval", params: str = PARAMS):
    """Compare the zero-shot base model and the adapter on the test split."""
    from . import pipeline

    _guarded(lambda: pipeline.evaluate(_params(params), test, adapter, metrics, predictions, plots))


@app.command()
def export(adapter: str = "models/adapter", out: str = "models/merged", eval_metrics: str = "metrics/eval.json",
           params: str = PARAMS):
    """Merge the adapter into the base model and write a model card."""
    from . import pipeline

    _guarded(lambda: pipeline.export(_params(params), adapter, out, eval_metrics))


@app.command()
def classify(
    text: str = typer.Argument(..., help="The content to check."),
    policy: Optional[List[str]] = typer.Option(None, "--policy", "-p", help="Check only this policy (repeatable)."),
    model: str = typer.Option("models/merged", "--model", "-m",
                              help="A merged model folder (from export), or a base model with --adapter."),
    adapter: Optional[str] = typer.Option(None, "--adapter", help="A LoRA adapter folder on top of --model."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object instead of text."),
    params: str = PARAMS,
):
    """Classify one text against the policies and print the reasoning and verdicts.

    Exit code 0 when every policy's answer parsed, 1 otherwise."""
    from .guard import load_guard

    def run():
        p = _params(params)
        if model == "models/merged" and not Path(model).exists():
            raise FileNotFoundError("models/merged not found: run `dvc repro` (export writes models/merged) "
                                    "or pass --model DIR")
        guard = load_guard(model, adapter=adapter, params=p)
        return guard.classify([{"content": text}], policies=policy or None)[0]

    res = _guarded(run)
    if as_json:
        typer.echo(json.dumps({k: res[k] for k in ("verdict", "flagged", "verdicts", "reasoning", "is_parse_error")},
                              ensure_ascii=False, indent=2))
    else:
        for q, v in res["verdicts"].items():
            typer.echo(f"== {q}: {v or 'PARSE ERROR'}")
            typer.echo(res["reasoning"][q])
        typer.echo(f"verdict: {res['verdict'] or 'PARSE ERROR'}"
                   + (f" (flagged: {', '.join(res['flagged'])})" if res["flagged"] else ""))
    raise typer.Exit(1 if res["is_parse_error"] else 0)


if __name__ == "__main__":
    app()
    sys.exit(0)
