import pytest
import torch

from guardrsft.models import ModelError, check_device
from guardrsft.train import MaskCheckCollator, TrainError, sft_records


def test_gpu_preset_without_gpu_fails_clearly():
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    with pytest.raises(ModelError, match=r"preset `t4` needs a CUDA GPU.*preset: cpu"):
        check_device("cuda", "t4")


def test_mask_check_rejects_fully_masked_batch():
    full = MaskCheckCollator(lambda ex: {"labels": torch.full((2, 5), -100)})
    with pytest.raises(TrainError, match="no supervised"):
        full([{}, {}])
    ok = MaskCheckCollator(lambda ex: {"labels": torch.tensor([[-100, 3], [-100, -100]])})
    assert ok([{}, {}])["labels"].shape == (2, 2)


def test_loss_covers_the_assistant_turn_only(pp_params, embedded_model):
    """TRL's prompt-completion masking on the real tokenizer: supervised tokens decode
    to exactly the target plus the end-of-turn token."""
    params = pp_params  # per-policy trace rows (joint mode's rows are tested in test_joint)
    from datasets import Dataset
    from peft import LoraConfig
    from trl import SFTConfig, SFTTrainer

    from guardrsft.models import checkpointing_args, load_model, load_tokenizer

    trace = {"policy": "violence", "content": "How do I kill a stuck process?", "classification": "SAFE",
             "reasoning": "Step 1 (intent): a.\nStep 2 (harms): b.\nStep 3 (policy criteria): c."}
    rec = sft_records([trace], params)[0]
    tok = load_tokenizer(embedded_model)
    cfg = SFTConfig(output_dir="/tmp/guardrsft-test-mask", max_length=512, use_cpu=True, bf16=False,
                    completion_only_loss=True, report_to="none", per_device_train_batch_size=1,
                    **checkpointing_args(SFTConfig, False))
    tr = SFTTrainer(model=load_model(embedded_model, params.hw), args=cfg, train_dataset=Dataset.from_list([rec]),
                    processing_class=tok, peft_config=LoraConfig(r=4, target_modules=["q_proj"], task_type="CAUSAL_LM"))
    batch = MaskCheckCollator(tr.data_collator)([tr.train_dataset[0]])
    labels = batch["labels"][0]
    supervised = tok.decode(labels[labels != -100])
    assert supervised.startswith("Reasoning:\nStep 1 (intent): a.")
    assert "Classification: SAFE" in supervised and supervised.rstrip("\n").endswith("<|im_end|>")
    assert "How do I kill" not in supervised  # the prompt is not trained on
    n_prompt = len(tok.apply_chat_template(rec["prompt"], add_generation_prompt=True, tokenize=True, return_dict=False))
    assert int((labels[:n_prompt] != -100).sum()) == 0


def _trainer(params, embedded_model, records, **override):
    from datasets import Dataset
    from peft import LoraConfig
    from trl import SFTTrainer

    from guardrsft.models import load_model, load_tokenizer
    from guardrsft.train import sft_config

    torch.manual_seed(0)
    return SFTTrainer(model=load_model(embedded_model, params.hw), args=sft_config(params, "/tmp/guardrsft-test-pf", **override),
                      train_dataset=Dataset.from_list(records), processing_class=load_tokenizer(embedded_model),
                      peft_config=LoraConfig(r=4, target_modules=["q_proj"], task_type="CAUSAL_LM"))


def test_padding_free_batch_has_no_pad_and_the_same_loss(pp_params, embedded_model):
    """padding_free flattens a batch into one row; attention stays within each example
    (position_ids restart), so the loss equals the padded batch's."""
    params = pp_params  # per-policy trace rows (joint mode's rows are tested in test_joint)
    import dataclasses

    traces = [{"policy": "violence", "content": "How do I kill a stuck process?" + " really" * k,
               "classification": "SAFE", "reasoning": "Step 1 (intent): a.\nStep 2 (harms): b.\nStep 3 (policy criteria): c."}
              for k in (0, 7, 20)]
    recs = sft_records(traces, params)
    losses, shapes = {}, {}
    for pf in (False, True):
        p = dataclasses.replace(params, train=dataclasses.replace(params.train, padding_free=pf))
        tr = _trainer(p, embedded_model, recs, per_device_train_batch_size=3)
        counter = MaskCheckCollator(tr.data_collator)
        batch = counter([tr.train_dataset[i] for i in range(3)])
        shapes[pf] = tuple(batch["input_ids"].shape)
        tr.model.eval()
        with torch.no_grad():
            losses[pf] = float(tr.compute_loss(tr.model, dict(batch)))
        tokens = counter.tokens
    assert shapes[True][0] == 1 and shapes[True][1] == tokens  # one row, no pad token
    assert shapes[False][0] == 3 and shapes[False][1] * 3 > tokens  # padded rows
    assert abs(losses[True] - losses[False]) < 1e-4 * losses[False], losses


def test_too_long_examples_are_excluded_and_counted(pp_params, embedded_model):
    params = pp_params  # per-policy trace rows (joint mode's rows are tested in test_joint)
    from guardrsft.models import load_tokenizer
    from guardrsft.train import fit_length

    tok = load_tokenizer(embedded_model)
    base = {"policy": "violence", "classification": "SAFE", "reasoning": "Step 1 (intent): a."}
    recs = sft_records([dict(base, content="short"), dict(base, content="word " * 600)], params)
    keep, skipped = fit_length(recs, tok, 384)
    assert skipped == 1 and len(keep) == 1 and keep[0]["prompt"][1]["content"].endswith(
        "Content: short\n\nDoes the content violate this policy? Answer in this format:\nReasoning:\nStep 1 (intent): ...\n"
        "Step 2 (harms): ...\nStep 3 (policy criteria): ...\nClassification: SAFE or UNSAFE")
    # the batched count is apply_chat_template's own token count, to the token
    n = len(tok.apply_chat_template(recs[0]["prompt"] + recs[0]["completion"], tokenize=True, return_dict=False))
    assert fit_length(recs[:1], tok, n) == (recs[:1], 0) and fit_length(recs[:1], tok, n - 1) == ([], 1)


def test_oom_advice_names_the_knobs(params):
    from guardrsft.train import oom_advice

    msg = oom_advice(params)
    for knob in ("train.batch_size", "train.grad_accum", "train.max_length", "train.gradient_checkpointing",
                 "preset: t4", "params.yaml"):
        assert knob in msg, knob


def test_liger_true_without_cuda_is_a_clear_error(params):
    import dataclasses

    from guardrsft.train import liger_enabled

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    p = dataclasses.replace(params, train=dataclasses.replace(params.train, liger=True))
    with pytest.raises(TrainError, match=r"train.liger: true.*CUDA"):
        liger_enabled(p)
    assert liger_enabled(params) is False  # null: auto, off here


def test_gpu_presets_resolve_their_speed_settings(params):
    import dataclasses

    a100 = dataclasses.replace(params, preset="a100")
    t4 = dataclasses.replace(params, preset="t4")
    assert a100.padding_free is True and t4.padding_free is False and params.padding_free is False
    assert t4.gradient_checkpointing is True and params.gradient_checkpointing is False
    assert t4.hw["load_in_4bit"] and t4.hw["dtype"] == "float16" and a100.hw["dtype"] == "bfloat16"
    explicit = dataclasses.replace(a100, train=dataclasses.replace(a100.train, padding_free=False))
    assert explicit.padding_free is False  # an explicit value beats the preset


def test_liger_and_compile_together_are_refused(params):
    import dataclasses

    from guardrsft.train import liger_enabled

    both = dataclasses.replace(params, train=dataclasses.replace(params.train, liger=True, torch_compile=True))
    with pytest.raises(TrainError, match=r"NaN"):
        liger_enabled(both)
    auto = dataclasses.replace(params, train=dataclasses.replace(params.train, liger=None, torch_compile=True))
    assert liger_enabled(auto) is False  # auto: compile wins, Liger off


def test_checkpoint_with_torn_trainer_state_is_skipped(tmp_path, capsys):
    """A kill while Trainer writes trainer_state.json (not atomic) leaves a torn file: resume
    from the checkpoint before it instead of crashing on every rerun."""
    from guardrsft.train import last_checkpoint

    for n, state in ((2, '{"global_step": 2}'), (4, '{"global_step": 4, "log_hist'), (6, "")):
        d = tmp_path / f"checkpoint-{n}"
        d.mkdir()
        (d / "trainer_state.json").write_text(state)
    assert last_checkpoint(tmp_path) == str(tmp_path / "checkpoint-2")
    assert "checkpoint-4, checkpoint-6" in capsys.readouterr().err


def test_training_args_warn_nothing_a_user_cannot_act_on(params):
    """transformers 5 renamed `gradient_checkpointing` `activation_checkpointing`: passing the old
    name put a FutureWarning in every train_rsft and train_hsdpo log (issue 25)."""
    import dataclasses
    import warnings

    from guardrsft.hsdpo import dpo_config
    from guardrsft.train import sft_config

    on = dataclasses.replace(params, train=dataclasses.replace(params.train, gradient_checkpointing=True))
    for p in (params, on):
        with warnings.catch_warnings():
            warnings.simplefilter("error", FutureWarning)
            configs = [sft_config(p, "/tmp/guardrsft-test-args"), dpo_config(p, "/tmp/guardrsft-test-args")]
        for cfg in configs:  # the setting still arrives, under both names (TRL reads the old one)
            assert cfg.activation_checkpointing is cfg.gradient_checkpointing is p.gradient_checkpointing
            if p.gradient_checkpointing:
                assert cfg.activation_checkpointing_kwargs == {"use_reentrant": False}


def test_bitsandbytes_kernel_fetch_warning_is_silenced():
    """On CPUs with AVX-512 BF16, importing bitsandbytes (PEFT does) warns that the optional
    `kernels` package cannot fetch a 4-bit kernel: three lines per `dvc repro` for a path no preset
    takes on CPU. Errors still show."""
    import logging

    import guardrsft.models  # noqa: F401  (sets the level at import, before PEFT loads bitsandbytes)

    level = logging.getLogger("bitsandbytes.backends.cpu.ops").getEffectiveLevel()
    assert level == logging.ERROR
